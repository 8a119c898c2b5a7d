"""The store: where a sweep's checkpoints, records, completions, logs and analysis live on disk.

    <root>/mlflow.db, <root>/mlartifacts/            embedded MLflow (default tracking)
    <root>/base_models/<key>/                        cached tiny base models, reused across sweeps
    <root>/sweeps/<sweep_id>/config.yaml, plan.json  what was asked
      checkpoints/<run_id>/step_000012/              HF checkpoints (Ray Train's storage for the trial)
      records/<run_id>/step_000012.<variant>.parquet per-example records (the source of truth)
      completions/<run_id>/step_000012.<variant>.parquet   raw samples, graded
      tune/  logs/  analysis/
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SweepPaths:
    root: Path  # the store root
    sweep: Path  # this sweep's directory

    @property
    def checkpoints(self) -> Path:
        return self.sweep / "checkpoints"

    @property
    def records(self) -> Path:
        return self.sweep / "records"

    @property
    def logs(self) -> Path:
        return self.sweep / "logs"

    @property
    def analysis(self) -> Path:
        return self.sweep / "analysis"

    @property
    def sweep_id(self) -> str:
        return self.sweep.name

    def records_file(self, run_id: str, step: int, variant: str) -> Path:
        return self.records / run_id / f"step_{step:06d}.{variant}.parquet"

    def completions_file(self, run_id: str, step: int, variant: str) -> Path:
        return self.sweep / "completions" / run_id / f"step_{step:06d}.{variant}.parquet"

    def trial_checkpoints(self, run_id: str) -> list[Path]:
        """A trial's finished HF checkpoints, in step order."""
        base = self.checkpoints / run_id
        return sorted(p for p in base.glob("step_*") if (p / "config.json").is_file()) if base.is_dir() else []


def sweep_paths(root: str | Path, sweep_id: str) -> SweepPaths:
    root = Path(root).resolve()
    return SweepPaths(root, root / "sweeps" / sweep_id)


def open_sweep(sweep_dir: str | Path) -> SweepPaths:
    """An existing sweep directory (for re-evaluation and re-analysis)."""
    sweep = Path(sweep_dir).resolve()
    if not (sweep / "plan.json").is_file():
        raise FileNotFoundError(f"{sweep}: not a sweep directory (no plan.json)")
    return SweepPaths(sweep.parent.parent, sweep)


def base_model_dir(root: str | Path, settings: dict) -> Path:
    """Cache location of a base model, keyed by everything that determines its weights."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root).resolve() / "base_models" / key


def write_text_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
