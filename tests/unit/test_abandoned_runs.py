"""Runs a driver left RUNNING when it died (no Ctrl-C handler ran: SIGKILL, a lost machine) are ended KILLED
by the next premem command on the experiment, once their heartbeat is older than tracking.abandoned_after_s."""
from __future__ import annotations

import time

from orchestrator.tracking import ABANDONED_TAG, HEARTBEAT_TAG, RUN_ID_TAG, SWEEP_TAG, Heartbeat, Outbox, Tracker


def _sweep(tracker: Tracker, tmp_path, name: str, beat_age_s: float, parent: str | None = None) -> tuple[str, str]:
    config = tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    run = tracker.start_sweep(name, "small", str(config), str(config), parent)
    tracker.client.set_tag(run, HEARTBEAT_TAG, f"{time.time() - beat_age_s:.0f}")
    trial = tracker.start_trial(run, f"{name}-t00", "lr=0.001", {"lr": 0.001})
    return run, trial


def test_dead_drivers_runs_end_killed_and_living_ones_stay(tmp_path, capsys):
    from orchestrator.tracking import end_abandoned_runs

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", str(tmp_path / "artifacts"))
    curation = tracker.start_curation("cur-1", "small-1", __file__)
    tracker.client.set_tag(curation, HEARTBEAT_TAG, f"{time.time() - 3600:.0f}")
    dead, dead_trial = _sweep(tracker, tmp_path, "dead", 3600, parent=curation)
    alive, alive_trial = _sweep(tracker, tmp_path, "alive", 5)
    done, done_trial = _sweep(tracker, tmp_path, "done", 3600)
    for run in (done_trial, done):
        tracker.end_run(run)
    legacy = tracker.client.create_run(tracker.experiment_id, run_name="no-heartbeat").info.run_id

    end_abandoned_runs(tracker, 600)
    line = capsys.readouterr().out
    assert "ended 2 run(s) left RUNNING by a driver that died" in line and "cur-1" in line and "dead" in line
    status = {r: tracker.client.get_run(r).info.status for r in
              (curation, dead, dead_trial, alive, alive_trial, done, done_trial, legacy)}
    assert [status[r] for r in (curation, dead, dead_trial)] == ["KILLED"] * 3  # nested runs with their parent
    assert [status[r] for r in (alive, alive_trial, legacy)] == ["RUNNING"] * 3
    assert [status[r] for r in (done, done_trial)] == ["FINISHED"] * 2
    assert "orchestrator.resume" in tracker.client.get_run(dead_trial).data.tags[ABANDONED_TAG]
    # resume reopens a run with a fresh heartbeat: the next command leaves it alone
    tracker.reopen(dead)
    assert tracker.end_abandoned(600) == []
    assert tracker.client.get_run(dead).info.status == "RUNNING"


def test_heartbeat_refreshes_the_tag(tmp_path):
    """A living driver's beat replaces its runs' hour-old heartbeat: the next command leaves them alone."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", str(tmp_path / "artifacts"))
    run, _ = _sweep(tracker, tmp_path, "s", 3600)

    def heartbeat() -> float:
        return float(tracker.client.get_run(run).data.tags[HEARTBEAT_TAG])

    stale = heartbeat()
    outbox = Outbox(tracker)
    beat = Heartbeat(outbox, [run], every_s=0.2)
    deadline = time.monotonic() + 30  # bounds only a heartbeat that never beats
    while heartbeat() == stale and time.monotonic() < deadline:
        time.sleep(0.1)
    beat.stop()
    assert outbox.close(timeout_s=30) == 0
    assert heartbeat() > stale + 3000  # the hour-old beat replaced by a fresh one
    assert tracker.end_abandoned(600) == []


def test_a_resumed_sweep_completes_the_runs_a_killed_driver_left_half_made(tmp_path):
    """MLflow makes a run, then logs its params or artifacts, in separate calls: a driver SIGKILLed between them
    left a trial run without params and a sweep run without its config. The driver that goes on keeps those runs
    (no second run per trial), logs what they lack, makes the runs never made, and leaves dropped trials alone."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", str(tmp_path / "artifacts"))
    config, plan = tmp_path / "config.yaml", tmp_path / "plan.json"
    config.write_text("a: 1\n")
    plan.write_text("[]\n")
    # the dead driver's state: a sweep run without artifacts, one full trial, one trial without params, one dropped
    parent = tracker.client.create_run(tracker.experiment_id, run_name="s-1",
                                       tags={SWEEP_TAG: "s-1"}).info.run_id
    full = tracker.start_trial(parent, "s-1-t00", "lr=0.1", {"lr": 0.1, "seed": 0})
    bare = tracker.client.create_run(tracker.experiment_id, run_name="lr=0.2",
                                     tags={"mlflow.parentRunId": parent, RUN_ID_TAG: "s-1-t01"}).info.run_id
    dropped = tracker.start_trial(parent, "s-1-t09", "lr=9", {"lr": 9, "seed": 0})
    trials = {"s-1-t00": ("lr=0.1", {"lr": 0.1, "seed": 0}), "s-1-t01": ("lr=0.2", {"lr": 0.2, "seed": 0}),
              "s-1-t02": ("lr=0.3", {"lr": 0.3, "seed": 0})}

    found, children = tracker.continue_sweep("s-1", "small", str(config), str(plan), trials)

    assert found == parent and children["s-1-t00"] == full and children["s-1-t01"] == bare
    assert set(children) == set(trials)
    params = {run_id: tracker.client.get_run(child).data.params for run_id, child in children.items()}
    assert params == {"s-1-t00": {"lr": "0.1", "seed": "0"}, "s-1-t01": {"lr": "0.2", "seed": "0"},
                      "s-1-t02": {"lr": "0.3", "seed": "0"}}
    assert {a.path for a in tracker.client.list_artifacts(parent)} == {"config.yaml", "plan.json"}
    assert tracker.client.get_run(dropped).data.params == {"lr": "9", "seed": "0"}
    assert len(tracker._children(parent)) == 4  # nothing made twice
    # and again: nothing to add, nothing made
    assert tracker.continue_sweep("s-1", "small", str(config), str(plan), trials) == (parent, children)
    assert len(tracker._children(parent)) == 4
    # a sweep whose driver died before making any run: made now
    other, made = tracker.continue_sweep("s-2", "small", str(config), str(plan), {"s-2-t00": ("x", {"lr": 1})})
    assert tracker.client.get_run(made["s-2-t00"]).data.params == {"lr": "1"}
    assert tracker.client.get_run(made["s-2-t00"]).data.tags["mlflow.parentRunId"] == other
