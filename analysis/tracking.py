"""The analysis CLI's own MLflow helper: log a fit onto an existing run. (The orchestrator's tracker is the
upper layer's; analysis never imports it.)"""
from __future__ import annotations

import math
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric


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
