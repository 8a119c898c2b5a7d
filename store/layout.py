"""The store: where a sweep's checkpoints, records, completions, logs and analysis live.

`store.root` is a local path, a shared-filesystem path or an object-store URI (s3://, gs://); this module
builds every location under it, and `store.io` does the I/O (whole objects only).

    <root>/mlflow.db, <root>/mlartifacts/            embedded MLflow (default tracking; local roots only)
    <root>/base_models/<key>/                        cached tiny base models, reused across sweeps
    <root>/sweeps/<sweep_id>/config.yaml, plan.json  what was asked
      checkpoints/<run_id>/step_000012/              HF checkpoints (Ray Train's storage for the trial)
      records/<run_id>/step_000012.<variant>.parquet per-example records (the source of truth)
      completions/<run_id>/step_000012.<variant>.parquet   raw samples, graded
      tune/  logs/  analysis/

Logs are written on the driver's disk first (Ray's own logs stay there); for a remote store that is a temp
directory, and `logs/errors/` is uploaded as failures happen.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from store import io


@dataclass(frozen=True)
class SweepPaths:
    root: str  # the store root (absolute path or URI)
    sweep: str  # this sweep's location

    @property
    def remote(self) -> bool:
        return io.is_uri(self.root)

    @property
    def checkpoints(self) -> str:
        return io.join(self.sweep, "checkpoints")

    @property
    def records(self) -> str:
        return io.join(self.sweep, "records")

    @property
    def completions(self) -> str:
        return io.join(self.sweep, "completions")

    @property
    def analysis(self) -> str:
        return io.join(self.sweep, "analysis")

    @property
    def logs(self) -> Path:
        """The driver's log directory on its own disk: in the sweep for a local store, else a temp dir."""
        if self.remote:
            return Path(tempfile.gettempdir()) / "premem" / self.sweep_id / "logs"
        return Path(self.sweep) / "logs"

    @property
    def sweep_id(self) -> str:
        return io.name(self.sweep)

    def file(self, *parts: str) -> str:
        """A file directly in the sweep (config.yaml, plan.json) or below it (analysis/x.json)."""
        return io.join(self.sweep, *parts)

    def records_file(self, run_id: str, step: int, variant: str) -> str:
        return io.join(self.records, run_id, f"step_{step:06d}.{variant}.parquet")

    def completions_file(self, run_id: str, step: int, variant: str) -> str:
        return io.join(self.completions, run_id, f"step_{step:06d}.{variant}.parquet")

    def error_file(self, run_id: str, step: int, variant: str) -> str:
        return io.join(self.sweep, "logs", "errors", f"{run_id}.step_{step:06d}.{variant}.txt")

    def record_files(self, variant: str) -> list[str]:
        return io.list_files(self.records, suffix=f".{variant}.parquet")

    def trial_checkpoints(self, run_id: str) -> list[str]:
        """A trial's finished HF checkpoints, in step order: those Ray Train registered (its snapshot lists a
        checkpoint only once all of it is persisted), else, for a store without one, those with config.json."""
        run_dir = io.join(self.checkpoints, run_id)
        snapshot = io.join(run_dir, "checkpoint_manager_snapshot.json")
        if io.is_file(snapshot):
            names = sorted({r["checkpoint_dir_name"] for r in json.loads(io.read_text(snapshot))["checkpoint_results"]})
            return [io.join(run_dir, n) for n in names if n.startswith("step_")]
        return [c for c in io.list_dirs(run_dir)
                if io.name(c).startswith("step_") and io.is_file(io.join(c, "config.json"))]

    def mlflow_artifacts(self) -> str:
        return io.join(self.root, "mlartifacts")


def sweep_paths(root: str, sweep_id: str) -> SweepPaths:
    root = io.normalize(root)
    return SweepPaths(root, io.join(root, "sweeps", sweep_id))


def open_sweep(sweep_dir: str) -> SweepPaths:
    """An existing sweep (for re-evaluation and re-analysis), by path or URI."""
    sweep = io.normalize(sweep_dir)
    if not io.is_file(io.join(sweep, "plan.json")):
        raise FileNotFoundError(f"{sweep}: not a sweep directory (no plan.json)")
    return SweepPaths(io.parent(io.parent(sweep)), sweep)


def base_model_dir(root: str, settings: dict) -> str:
    """Cache location of a base model, keyed by everything that determines its weights."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return io.join(io.normalize(root), "base_models", key)


def write_text_atomic(location: str | Path, text: str) -> str:
    return io.write_text(str(location), text)
