"""What every fault test asserts afterwards: each planned record exactly once, each MLflow metric one value per
step on the sweep's one parent and its children (all FINISHED), and no process left behind."""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pandas as pd

RECORD_KEY = ["run_id", "step", "split", "example_id", "variant"]


def assert_records_exactly_once(sweep_dir: Path, n_train: int, n_test: int) -> pd.DataFrame:
    """Every checkpoint Ray Train registered has its records, each key once; returns the records."""
    from store.layout import open_sweep

    paths = open_sweep(str(sweep_dir))
    plan = json.loads((sweep_dir / "plan.json").read_text())
    frame = pd.concat(pd.read_parquet(f) for f in sorted((sweep_dir / "records").rglob("*.original.parquet")))
    duplicated = frame[frame.duplicated(RECORD_KEY, keep=False)]
    assert duplicated.empty, f"records written twice:\n{duplicated.head()}"
    for trial in plan:
        steps = sorted(int(Path(c).name.removeprefix("step_")) for c in paths.trial_checkpoints(trial["run_id"]))
        assert steps, f"{trial['run_id']}: no checkpoints"
        got = frame[frame.run_id == trial["run_id"]]
        assert sorted(got.step.unique()) == steps, f"{trial['run_id']}: records of steps {sorted(got.step.unique())}, checkpoints {steps}"
        per_split = got.groupby(["step", "split"]).size()
        assert (per_split.xs("train", level="split") == n_train).all() and (per_split.xs("test", level="split") == n_test).all()
    return frame


def assert_mlflow_exactly_once(uri: str, experiment: str, sweep_id: str, n_trials: int) -> dict:
    """One FINISHED parent for the sweep, its children FINISHED, one value per step of every metric.
    Returns {premem.run_id: {metric: {step: value}}}."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`premem.sweep` = '{sweep_id}'")
    assert len(parents) == 1, f"{len(parents)} parent runs for {sweep_id}"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == n_trials, f"{len(children)} child runs, planned {n_trials}"
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children), \
        [parent.info.status, *(c.info.status for c in children)]
    curves = {}
    for run in [parent, *children]:
        series = {}
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            steps = Counter(m.step for m in history)
            repeated = {s: n for s, n in steps.items() if n > 1}
            assert not repeated, f"{run.info.run_name} {key}: steps logged more than once {repeated}"
            series[key] = {m.step: m.value for m in history}
        curves[run.data.tags.get("premem.run_id", "parent")] = series
    return curves


def process_table() -> dict[int, str]:
    """pid -> command line of every process (the fault tests diff two of them)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                pass
    return {pid: cmd for pid, cmd in table.items() if cmd}


def assert_no_leftovers(before: dict[int, str], keep: tuple[str, ...] = (), wait_s: float = 30.0) -> None:
    """No process started since `before` is still running, except those of a Ray cluster the test started
    (a process whose command line, or an ancestor's, holds a `keep` string: the raylets carry their temp
    dirs, their workers descend from them); waits up to `wait_s` for processes on their way out."""
    deadline = time.time() + wait_s
    while True:
        table = process_table()
        new = {pid: cmd for pid, cmd in table.items()
               if pid not in before and pid != os.getpid() and not _zombie(pid) and _ours(pid, cmd)
               and not any(k in table.get(a, "") for a in _ancestry(pid) for k in keep)}
        if not new or time.time() > deadline:
            break
        time.sleep(1)
    assert not new, f"processes left behind: {new}"


def _ours(pid: int, cmd: str) -> bool:
    """Started by this test (a descendant), or an orphan of it: reparented to init, and Ray's or this
    project's by its command line (other work on the machine is not the sweep's)."""
    chain = _ancestry(pid)
    if os.getpid() in chain:
        return True
    return _parent(chain[-1]) == 1 and (cmd.startswith("ray::") or str(Path(__file__).parents[2]) in cmd
                                         or "ray/" in cmd or "vllm" in cmd.lower())


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _ancestry(pid: int) -> list[int]:
    chain = []
    while pid > 1 and len(chain) < 64:
        chain.append(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return chain


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def report(fault: str, seconds: float, reference_seconds: float) -> None:
    """With PREMEM_FAULT_REPORT set, append the faulted sweep's wall time beside the uninterrupted one's (the
    README's recovery table)."""
    if os.environ.get("PREMEM_FAULT_REPORT"):
        with open(os.environ["PREMEM_FAULT_REPORT"], "a") as f:
            f.write(json.dumps({"fault": fault, "seconds": round(seconds, 1),
                                "uninterrupted_seconds": round(reference_seconds, 1)}) + "\n")
