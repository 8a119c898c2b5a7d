"""MLflow: a parent run per sweep, a nested child run per trial, per-step metrics, artifacts.

The only module that writes to MLflow. Metric names are the records' vocabulary.
"""
from __future__ import annotations

import math
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from analysis import storage
from analysis.sources import RUN_ID_TAG

SWEEP_TAG = "premem.sweep"
CHECKPOINT_METRICS = ("train_acc", "test_acc", "ref_nll_mean", "train_unparsed_frac", "test_unparsed_frac",
                      "train_grade_timeouts", "test_grade_timeouts")
PARENT_METRICS = ("premem_r2", "premem_slope", "premem_intercept", "premem_n_points", "premem_n_missing",
                  "nll_threshold")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Tracker:
    """Writes a sweep to MLflow. Every metric value is written once per (run, key, step): a step already
    logged (in this process, or found by `load_logged` after a restart) is not written again."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None):
        self.uri = uri
        self.client = MlflowClient(uri)
        self.logged: dict[tuple[str, str], set[int]] = {}  # (MLflow run id, metric key) -> steps written
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            # Artifacts go to the store (a file: URI or the object store's); a server decides its own location.
            location = None
            if artifact_root and not uri.startswith("http"):
                location = artifact_root if storage.is_uri(artifact_root) else Path(artifact_root).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id

    # ------------------------------------------------------------------------------------- runs
    def start_sweep(self, sweep_id: str, name: str, config_yaml: str, plan_json: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=sweep_id,
                                     tags={SWEEP_TAG: sweep_id, "sweep_name": name, "git_commit": git_commit()})
        self.log_artifacts(run.info.run_id, [config_yaml, plan_json])
        return run.info.run_id

    def start_trial(self, parent_id: str, run_id: str, label: str, params: dict[str, object]) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=label,
            tags={"mlflow.parentRunId": parent_id, RUN_ID_TAG: run_id})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
        return run.info.run_id

    def find_sweep(self, sweep_id: str) -> tuple[str, dict[str, str]]:
        """(parent run id, {records run_id: child run id}) of an earlier sweep, for re-evaluation."""
        parents = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_id}'")
        if not parents:
            raise LookupError(f"no MLflow run tagged {SWEEP_TAG}={sweep_id} in {self.uri}")
        parent = parents[0].info.run_id
        children = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10000)
        return parent, {c.data.tags[RUN_ID_TAG]: c.info.run_id for c in children if RUN_ID_TAG in c.data.tags}

    def end_run(self, mlflow_run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(mlflow_run_id, status=status)

    def reopen(self, mlflow_run_id: str) -> None:
        """Mark a run RUNNING again (a resumed sweep continues its runs instead of making new ones)."""
        self.client.update_run(mlflow_run_id, status="RUNNING")

    def load_logged(self, mlflow_run_id: str, keys: tuple[str, ...]) -> None:
        """Remember which steps of `keys` the run already has, so that a resumed sweep writes each once."""
        for key in keys:
            history = self.client.get_metric_history(mlflow_run_id, key)
            self.logged.setdefault((mlflow_run_id, key), set()).update(m.step for m in history)

    def has_step(self, mlflow_run_id: str, key: str, step: int) -> bool:
        return step in self.logged.get((mlflow_run_id, key), ())

    def _new_only(self, mlflow_run_id: str, metrics: list[Metric]) -> list[Metric]:
        fresh, seen = [], set()
        for m in metrics:
            if not self.has_step(mlflow_run_id, m.key, m.step) and (m.key, m.step) not in seen:
                fresh.append(m)
                seen.add((m.key, m.step))
        return fresh

    def _write_metrics(self, mlflow_run_id: str, metrics: list[Metric]) -> None:
        metrics = self._new_only(mlflow_run_id, metrics)
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(mlflow_run_id, metrics=metrics[start:start + 1000])
        for m in metrics:
            self.logged.setdefault((mlflow_run_id, m.key), set()).add(m.step)

    # ---------------------------------------------------------------------------------- metrics
    def log_metrics(self, mlflow_run_id: str, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        # NaN is a real outcome (e.g. R² when every point has the same premem); infinities are not logged.
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items()
                   if v is not None and not math.isinf(v)]
        self._write_metrics(mlflow_run_id, metrics)

    def log_checkpoint(self, mlflow_run_id: str, step: int, metrics: dict, train_loss: list, artifacts: list[str],
                       variant: str = "original") -> None:
        """One evaluated checkpoint: its files, the train losses since the last one, its accuracy metrics.

        In that order: the accuracy metrics come last, so a checkpoint whose `test_acc` is in MLflow has all
        of it there (what a resumed sweep checks)."""
        for location in artifacts:  # <sweep>/records/<run_id>/x.parquet -> artifact records/x.parquet
            self.log_artifacts(mlflow_run_id, [location], storage.name(storage.parent(storage.parent(location))))
        now = int(time.time() * 1000)
        self._write_metrics(mlflow_run_id, [Metric("train_loss", float(loss), now, int(s)) for s, loss in train_loss
                                            if math.isfinite(loss)])
        suffix = "" if variant == "original" else f"_{variant}"
        self.log_metrics(mlflow_run_id, {f"{k}{suffix}": metrics[k] for k in CHECKPOINT_METRICS if k in metrics},
                         step)

    def log_artifacts(self, mlflow_run_id: str, locations: list, artifact_path: str | None = None) -> None:
        """Files from local paths or store URIs (the latter copied through a temp dir under their own name)."""
        for location in map(str, locations):
            if not storage.is_uri(location):
                self.client.log_artifact(mlflow_run_id, location, artifact_path=artifact_path)
                continue
            with tempfile.TemporaryDirectory(prefix="premem-artifact-") as tmp:
                local = Path(tmp) / storage.name(location)
                local.write_bytes(storage.read_bytes(location))
                self.client.log_artifact(mlflow_run_id, str(local), artifact_path=artifact_path)

    def set_tags(self, mlflow_run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(mlflow_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_analysis(uri: str | None, mlflow_run_id: str, result: dict, outputs: list[Path]) -> None:
    """Log an analysis result's numbers as metrics and its files as artifacts on an existing run."""
    client = MlflowClient(uri)
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    names = {"r2": "premem_r2", "slope": "premem_slope", "intercept": "premem_intercept", "tau": "premem_tau",
             "oos_r2": "premem_oos_r2", "n_points": "premem_n_points"}
    now = int(time.time() * 1000)
    metrics = [Metric(names.get(k, k), float(v), now, 0) for k, v in numbers.items() if math.isfinite(float(v))]
    for name, fit in result.get("baselines", {}).items():
        metrics.append(Metric(f"baseline_{name}_r2", float(fit["r2"]), now, 0))
    client.log_batch(mlflow_run_id, metrics=metrics)
    for path in outputs:
        client.log_artifact(mlflow_run_id, str(path), artifact_path="analysis")
