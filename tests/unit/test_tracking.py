"""The tracker writes each metric value once per (run, key, step), on a real MLflow tracking store (SQLite):
when the same step is logged again, after a restart, and after a write that reached the store before the
connection broke."""
from __future__ import annotations

import pytest

from orchestrator.tracking import Outbox, Tracker


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(f"sqlite:///{root}/mlflow.db", "dedup", str(root / "artifacts"))


def _history(tracker: Tracker, run: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run, key))


def test_a_step_logged_again_keeps_its_first_value(tracker):
    run = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.log_metrics(run, {"test_acc": 0.5}, step=3)
    tracker.log_metrics(run, {"test_acc": 0.6}, step=3)
    tracker.log_series(run, "train_loss", [[1, 2.0], [2, 1.5], [2, 1.4]])
    tracker.log_series(run, "train_loss", [[2, 1.3], [3, 1.0]])  # a resumed trial reports step 2 again
    assert _history(tracker, run, "test_acc") == [(3, 0.5)]
    assert _history(tracker, run, "train_loss") == [(1, 2.0), (2, 1.5), (3, 1.0)]
    restarted = Tracker(tracker.uri, "dedup")  # a resumed sweep's driver: it knows only what it reloads
    restarted.load_logged(run, ("test_acc", "train_loss"))
    restarted.log_metrics(run, {"test_acc": 0.7}, step=3)
    restarted.log_series(run, "train_loss", [[3, 0.9], [4, 0.8]])
    assert _history(tracker, run, "test_acc") == [(3, 0.5)]
    assert _history(tracker, run, "train_loss") == [(1, 2.0), (2, 1.5), (3, 1.0), (4, 0.8)]


def test_a_write_that_reached_the_store_before_the_connection_broke_is_not_repeated(tracker, monkeypatch):
    """The first log_batch commits, then raises as a connection broken before the answer came back would; the
    Outbox retries the write, and the value is in the run's history once."""
    run = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.log_metrics(run, {"train_acc": 0.25}, step=8)  # the run's earlier history, known to this tracker
    real, calls = tracker.client.log_batch, []

    def committed_then_broken(run_id, metrics=(), **kwargs):
        calls.append(sorted((m.key, m.step) for m in metrics))
        real(run_id, metrics=metrics, **kwargs)
        if len(calls) == 1:
            raise ConnectionError("Connection aborted: RemoteDisconnected('Remote end closed connection')")

    monkeypatch.setattr(tracker.client, "log_batch", committed_then_broken)
    lines = []
    outbox = Outbox(tracker, retry_max_s=1.0, log=lines.append)
    outbox.log_metrics(run, {"train_acc": 0.5, "test_acc": 0.4}, 16)
    assert outbox.close(timeout_s=60) == 0
    assert calls[0] == [("test_acc", 16), ("train_acc", 16)]
    assert "cannot write" in lines[0] and "is back" in lines[1], lines  # the write failed once and was retried
    assert _history(tracker, run, "train_acc") == [(8, 0.25), (16, 0.5)]
    assert _history(tracker, run, "test_acc") == [(16, 0.4)]
    assert run not in tracker.unsure


def test_a_new_sqlite_store_is_created_without_lines_on_the_terminal(tmp_path):
    """mlflow's INFO lines about creating a SQLite store's tables stay off a sweep's terminal."""
    import subprocess
    import sys

    code = ("import orchestrator.tracking; from mlflow import MlflowClient; "
            f"MlflowClient('sqlite:///{tmp_path}/mlflow.db').search_experiments()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mlflow.db").is_file()
    assert "Creating initial MLflow database tables" not in done.stdout + done.stderr, done.stderr
