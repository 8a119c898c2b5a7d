"""Pieces of fault handling that need no cluster: which checkpoints count, redaction, the local-Ray reaper."""
from __future__ import annotations

import json
import subprocess
import sys

from orchestrator import reaper
from store.layout import sweep_paths
from orchestrator.tracking import redact


def test_trial_checkpoints_are_those_ray_train_registered(tmp_path):
    paths = sweep_paths(str(tmp_path), "s")
    run = tmp_path / "sweeps" / "s" / "checkpoints" / "r"
    for name in ("step_000008", "step_000016", "step_000024"):  # 24: written, its report never registered
        (run / name).mkdir(parents=True)
        (run / name / "config.json").write_text("{}")
    assert [p.rsplit("/", 1)[1] for p in paths.trial_checkpoints("r")] == ["step_000008", "step_000016",
                                                                            "step_000024"]
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": "step_000008"}, {"checkpoint_dir_name": "step_000016"}]}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert [p.rsplit("/", 1)[1] for p in paths.trial_checkpoints("r")] == ["step_000008", "step_000016"]


def test_missing_checkpoints_name_run_and_step(tmp_path):
    from orchestrator.finish import missing_checkpoints
    from orchestrator.plan import TrialSpec

    paths = sweep_paths(str(tmp_path), "s")
    run = tmp_path / "sweeps" / "s" / "checkpoints" / "r"
    for name in ("step_000008", "step_000016"):
        (run / name).mkdir(parents=True)
        (run / name / "config.json").write_text("{}")
    records = [str(tmp_path / "sweeps" / "s" / "records" / "r" / "step_000008.original.parquet")]
    assert missing_checkpoints(paths, [TrialSpec("r", 0, {}, {})], records) == (["run r step 16"], [])


def test_redact_hides_passwords_in_uris():
    assert redact("http://bob:s3cret@mlflow:5000") == "http://bob:***@mlflow:5000"
    assert redact("error at postgresql://u:p%40ss@db/x: refused") == "error at postgresql://u:***@db/x: refused"
    assert redact("http://mlflow:5000/api") == "http://mlflow:5000/api"


def test_reaper_kills_what_a_dead_drivers_ray_session_left(tmp_path, monkeypatch):
    session = tmp_path / "session_x"
    (session / "logs").mkdir(parents=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    hold = "import sys, time; f = open(sys.argv[1], 'w'); print('ready', flush=True); time.sleep(600)"
    leftover = subprocess.Popen([sys.executable, "-c", hold, str(session / "logs" / "agent.out")],
                                stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen([sys.executable, "-c", hold, str(other / "x.out")], stdout=subprocess.PIPE, text=True)
    driver = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert leftover.stdout.readline().strip() == "ready" and bystander.stdout.readline().strip() == "ready"
        driver.wait()
        monkeypatch.setattr(reaper, "GRACE_S", 0.1)
        killed = reaper.watch(driver.pid, str(session), poll_s=0.1)
        assert killed == [leftover.pid]
        assert leftover.wait(timeout=10) == -9
        assert bystander.poll() is None  # a process of no Ray session of ours is left alone
    finally:
        for proc in (leftover, bystander):
            proc.kill()
