"""Per-example views: curation picks (lowest premem) and robustness under prompt perturbations."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.premem import PremState, example_premem, premem_at
from analysis.records import ORIGINAL, RecordsError

DEFAULT_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def curation_picks(state: PremState, tau: float, count: int | None = None, fraction: float | None = None,
                   step: int | None = None, run_id: str | None = None) -> pd.DataFrame:
    """Train examples with the lowest premem (mean over runs at each run's last checkpoint, or `step`)."""
    at = premem_at(state, tau, step=step, run_id=run_id)
    per_example = (
        at.groupby("example_id", observed=True)
        .agg(premem_train_acc=("premem", "mean"), train_acc=("acc", "mean"), ref_nll=("ref_nll", "mean"),
             n_runs=("run_id", "nunique"))
        .reset_index()
        .sort_values(["premem_train_acc", "train_acc", "example_id"], kind="stable")
    )
    if count is None:
        count = int(np.ceil((fraction if fraction is not None else 0.1) * len(per_example)))
    return per_example.head(count).reset_index(drop=True)


def write_jsonl(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write one JSON object per row, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for row in frame.to_dict(orient="records"):
            f.write(json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}) + "\n")
    os.replace(tmp, path)
    return path


def robustness(state: PremState, tau: float, bins: tuple[float, ...] = DEFAULT_BINS) -> pd.DataFrame:
    """Accuracy under each prompt variant, binned by the example's premem at the same checkpoint.

    Low-premem examples whose accuracy drops most under perturbation are the fragile ones.
    """
    rec = state.records
    others = [(code, name) for code, name in enumerate(rec.variants) if name != ORIGINAL]
    if not others:
        raise RecordsError(f"{rec.sources[0]}: column 'variant': no rows other than '{ORIGINAL}' to compare")
    step_min = int(rec.step.min())
    span = int(rec.step.max()) - step_min + 1
    n_examples = len(rec.examples)

    def key(rows: np.ndarray) -> np.ndarray:
        return (rec.run[rows].astype(np.int64) * n_examples + rec.example[rows]) * span + (rec.step[rows] - step_min)

    orig_key = key(state.rows)  # sorted ascending by construction of PremState
    orig_premem = example_premem(state, tau)
    orig_acc = rec.n_correct[state.rows] / rec.n_samples[state.rows]
    frames = []
    for code, name in others:
        rows = np.flatnonzero((rec.variant == code) & rec.is_train)
        pos = np.searchsorted(orig_key, key(rows))
        pos = np.minimum(pos, len(orig_key) - 1)
        matched = orig_key[pos] == key(rows)
        if not matched.any():
            continue
        premem = orig_premem[pos[matched]]
        bin_index = np.clip(np.digitize(premem, bins[1:-1], right=False), 0, len(bins) - 2)
        frame = pd.DataFrame({
            "variant": str(name),
            "bin": bin_index,
            "premem": premem,
            "original_acc": orig_acc[pos[matched]],
            "perturbed_acc": rec.n_correct[rows[matched]] / rec.n_samples[rows[matched]],
        })
        frames.append(frame)
    if not frames:
        raise RecordsError(f"{rec.sources[0]}: no perturbed train rows match an original (run, step, example)")
    joined = pd.concat(frames, ignore_index=True)
    table = joined.groupby(["variant", "bin"]).agg(
        n=("premem", "size"), premem_mean=("premem", "mean"),
        original_acc=("original_acc", "mean"), perturbed_acc=("perturbed_acc", "mean")).reset_index()
    table["premem_bin"] = [f"[{bins[b]:.1f}, {bins[b + 1]:.1f}{']' if b == len(bins) - 2 else ')'}" for b in table["bin"]]
    table["acc_drop"] = table["original_acc"] - table["perturbed_acc"]
    return table[["variant", "premem_bin", "n", "premem_mean", "original_acc", "perturbed_acc", "acc_drop"]]
