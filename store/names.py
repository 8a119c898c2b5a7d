"""Names more than one stage spells: written by one, read by another (records, checkpoints, configs)."""

# records variant of the plain evaluation (robustness and re-evaluation passes name their own)
ORIGINAL = "original"

# Each reported checkpoint is an HF directory (what the sampler loads) with DeepSpeed's engine state, the data
# position and the RNGs under this subdirectory (what a restarted trial resumes from; the sampler skips it).
ENGINE_DIR = "engine"

# curation strategies: `curation.strategies` in the config, `strategy` in curation.json, analysis.curate's ranking
CURATION_STRATEGIES = ("premem", "ifd", "longest", "low_train_acc", "high_ref_nll", "iid")


def robustness_set(variant: str, records_set: str) -> str:
    """The perturbed records' set: the robustness variant's name, of this records set where it is not the first."""
    return variant if records_set == ORIGINAL else f"{variant}-{records_set}"
