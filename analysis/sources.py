"""Where records and run parameters come from: files, directories, or MLflow runs (read-only)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from store.records import RecordsError

RUN_ID_TAG = "premem.run_id"  # the records' run_id, set on each trial's MLflow run


def _child_runs(client, parent_run_id: str | None, experiment: str | None) -> list:
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        return client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise RecordsError(f"--mlflow-experiment: no MLflow experiment named {experiment!r}")
    return client.search_runs([exp.experiment_id], max_results=5000)


def records_from_mlflow(tracking_uri: str, parent_run_id: str | None = None, experiment: str | None = None,
                        dst: str | None = None) -> tuple[list[Path], pd.DataFrame]:
    """Download each run's `records/` artifacts; returns (downloaded dirs, run params keyed by run_id)."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri)
    dst_root = Path(dst or tempfile.mkdtemp(prefix="premem-records-"))
    dirs, params = [], []
    for run in _child_runs(client, parent_run_id, experiment):
        names = [a.path for a in client.list_artifacts(run.info.run_id)]
        if "records" not in names:
            continue
        local = download_artifacts(run_id=run.info.run_id, artifact_path="records",
                                   dst_path=str(dst_root / run.info.run_id), tracking_uri=tracking_uri)
        dirs.append(Path(local))
        params.append({"run_id": run.data.tags.get(RUN_ID_TAG, run.info.run_name), **run.data.params})
    if not dirs:
        raise RecordsError(f"{tracking_uri}: no runs with a 'records' artifact "
                           f"({'parent run ' + parent_run_id if parent_run_id else 'experiment ' + str(experiment)})")
    return dirs, _numeric_params(pd.DataFrame(params))


def _numeric_params(frame: pd.DataFrame) -> pd.DataFrame:
    for col in frame.columns:
        if col != "run_id":
            converted = pd.to_numeric(frame[col], errors="coerce")
            if converted.notna().all():
                frame[col] = converted
    return frame


def read_runs_table(path: str | Path) -> pd.DataFrame:
    """A table of run parameters with a `run_id` column (Parquet, CSV or JSONL)."""
    path = Path(path)
    if not path.is_file():
        raise RecordsError(f"{path}: no such runs table")
    if path.suffix == ".csv":
        frame = pd.read_csv(path)
    elif path.suffix in (".jsonl", ".json"):
        frame = pd.read_json(path, lines=path.suffix == ".jsonl")
    else:
        frame = pd.read_parquet(path)
    if "run_id" not in frame.columns:
        raise RecordsError(f"{path}: runs table has no 'run_id' column")
    return frame
