"""Evaluations addressed by their settings: each distinct set of the sampler settings that change samples (and
the grader version) is a records set of the sweep, listed in <sweep>/evaluations.json: `original` (the sweep's
first), then `eval-<8 hex of the settings>`. docs/rerun.md."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from omegaconf import DictConfig, OmegaConf

from orchestrator.plan import TrialSpec
from store import io
from store.layout import SweepPaths, write_text_atomic
from store.names import ORIGINAL


def config_hash(tree: dict) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:8]


# Sampler settings that change the samples, and so the records, but not the weights: what addresses an
# evaluation, not a sweep or a trial. A command that changes only these continues the sweep that trained its
# trials and evaluates the stored checkpoints into a records set of its own (EvaluationSet); nothing trains again.
EVAL_FIELDS = ("sampler.k", "sampler.temperature", "sampler.top_p", "sampler.max_new_tokens", "sampler.seed",
               "sampler.answer_prefix", "sampler.train_subset", "sampler.backend", "sampler.dtype",
               "sampler.grade_timeout_s", "sampler.variant")
GRADER_VERSION = 1  # bump when a grader's verdicts change: a new records set, re-graded from stored completions
SETS_FILE = "evaluations.json"  # records set -> the settings that produced it; the sweep's first is `original`


def eval_settings(sampler: dict) -> dict:
    """What produced a records set: the sampler fields that change samples, and the grader version."""
    return {"grader_version": GRADER_VERSION,
            **{field: sampler.get(field.split(".", 1)[1]) for field in EVAL_FIELDS if field != "sampler.variant"}}


def eval_variant(sampler: dict) -> str:
    """The records set these evaluation settings get after the sweep's first: `eval-` and 8 hex of them."""
    return _set_name(eval_settings(sampler))


def _set_name(settings: dict) -> str:
    return f"eval-{config_hash(settings)}"


def _sampling_only(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "grader_version"}


@dataclass(frozen=True)
class EvaluationSet:
    """The records set a command evaluates into: `original` (the sweep's first settings) or `eval-<hash>`."""

    name: str
    settings: dict
    new: bool  # not stored yet: every stored checkpoint is evaluated into it
    changed: tuple[tuple[str, object, object], ...] = ()  # against the sweep's original set: (field, was, now)
    regrade_from: str | None = None  # a stored set sampled the same way, graded by another grader version

    def line(self) -> str:
        if not self.new:
            return f"records set {self.name}"
        changes = ", ".join(f"{f} {a!r} -> {b!r}" for f, a, b in self.changed) or "none"
        how = (f"re-graded from the completions of {self.regrade_from} (no sampling)" if self.regrade_from
               else "stored checkpoints evaluated again, nothing trained")
        return f"records set {self.name}: new evaluation settings ({changes}); {how}"


def stored_sets(paths: SweepPaths) -> dict[str, dict]:
    """The sweep's records sets and their settings; a sweep from before the file: its config's as `original`."""
    if io.is_file(paths.file(SETS_FILE)):
        return json.loads(io.read_text(paths.file(SETS_FILE)))
    if io.is_file(paths.file("config.yaml")):
        stored = OmegaConf.create(io.read_text(paths.file("config.yaml")))
        return {ORIGINAL: eval_settings(OmegaConf.to_container(stored.sampler, resolve=True))}
    return {}


def evaluation_set(paths: SweepPaths, cfg: DictConfig) -> EvaluationSet:
    """The records set this command's evaluation settings address in the sweep (new if none matches)."""
    settings = eval_settings(OmegaConf.to_container(cfg.sampler, resolve=True))
    sets = stored_sets(paths)
    if not sets:
        return EvaluationSet(ORIGINAL, settings, new=True)
    for name, stored in sets.items():
        if stored == settings:
            return EvaluationSet(name, settings, new=False)
    original = sets.get(ORIGINAL, {})
    changed = tuple((k, original.get(k), v) for k, v in settings.items() if original.get(k) != v)
    regrade_from = next((name for name, stored in sets.items()
                         if _sampling_only(stored) == _sampling_only(settings)), None)
    return EvaluationSet(_set_name(settings), settings, True, changed, regrade_from)


def register_set(paths: SweepPaths, chosen: EvaluationSet) -> None:
    """Write the set into the sweep's evaluations.json (with the sweep's original, for a sweep from before it)."""
    sets = stored_sets(paths)
    if sets.get(chosen.name) != chosen.settings:
        write_text_atomic(paths.file(SETS_FILE), json.dumps({**sets, chosen.name: chosen.settings}, indent=1))


def regrade_sources(paths: SweepPaths, name: str) -> list[str]:
    """The stored sets sampled as records set `name` is but graded by another grader version: its checkpoints'
    completions there are re-graded, not sampled again."""
    sets = stored_sets(paths)
    if name not in sets:
        return []
    return [other for other, settings in sets.items()
            if other != name and _sampling_only(settings) == _sampling_only(sets[name])]


def with_set(cfg: DictConfig, specs: list[TrialSpec], name: str) -> list[TrialSpec]:
    """The config and specs set to evaluate into records set `name` (cfg in place; specs copied)."""
    cfg.sampler.variant = name
    return [replace(s, config=replace(s.config, sampler=replace(s.config.sampler, variant=name))) for s in specs]
