"""bench.gpu_smoke without a GPU: its stages' code on CPU (`--cpu-dry-run`: gloo, a tiny Llama, ZeRO-3 with
zero.Init and gradient checkpointing, the HF backend), the hard timeout that still leaves a JSON, and the refusals.
The sweep stage's CPU run takes minutes and is left to `python -m bench.gpu_smoke --cpu-dry-run --stages sweep`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_smoke

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def smoke(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_smoke", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


def test_dry_run_stages_pass_and_report_their_figures(tmp_path):
    done = smoke("--cpu-dry-run", "--stages", "installed,train,sample", "--out", str(tmp_path / "out"),
                 "--store", str(tmp_path / "store"))
    report = json.loads((tmp_path / "out" / "gpu_smoke.json").read_text())
    assert done.returncode == 0 and report["ok"], done.stdout + json.dumps(report, indent=1)[-4000:]
    stages = report["stages"]
    assert stages["installed"]["import_errors"] == {}
    train = stages["train"]
    assert train["process_group"] == {"backend": "gloo", "world_size": 1, "all_reduce": 1.0}
    assert train["deepspeed_config"]["zero_optimization"]["stage"] == 3 and train["zero3_partitioned"]
    assert train["train_settings"]["zero_init"] and train["train_settings"]["gradient_checkpointing"]
    assert train["next_loss"] == train["next_loss_after_reload"] and train["rng_restored_same_dropout"]
    assert train["tokens_per_s"] > 0 and 0 < train["mfu"] < 1
    sample = stages["sample"]
    assert sample["checkpoint"].endswith("trained")  # the train stage's gathered HF directory
    assert all(sample[k] for k in ("greedy_equal_reload", "greedy_equal_fresh", "seeded_equal_reload",
                                   "seeded_equal_fresh"))
    assert sample["seeded_distinct_samples"] > 1  # seeded sampling samples: equal across loads, not constant
    assert 0 <= sample["ref_nll_max_abs_diff_bf16_vs_fp32"] < gpu_smoke.NLL_BF16_TOLERANCE
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gpu_smoke.json", "installed.log", "sample.log", "train.log"]


def test_a_stage_past_its_timeout_is_killed_and_still_reported(tmp_path):
    (tmp_path / "out").mkdir()
    result = gpu_smoke.run_stage("train", tmp_path / "out", tmp_path, True, [], timeout_s=2)
    assert result["timed_out"] and not result["ok"] and result["wall_s"] < 10


def test_without_a_gpu_it_refuses_in_one_line_after_writing_its_json(tmp_path):
    site = tmp_path / "site"  # stands for the unpacked bundle on PYTHONPATH: byte-compiled before the stages
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    env = {**os.environ, "PYTHONPATH": f"{site}:{REPO}"}
    done = smoke("--stages", "installed", "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store"),
                 env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "needs a GPU" in done.stderr
    report = json.loads((tmp_path / "out" / "gpu_smoke.json").read_text())
    assert report["ok"] is False and report["stages"]["installed"]["gpus"] == []
    assert report["precompile"]["folders"] == [str(site)] and report["precompile"]["exit_code"] == 0
    assert list((site / "pkg" / "__pycache__").glob("__init__.*.pyc"))


def test_bad_arguments_exit_2():
    assert smoke("--stages", "train,bogus").returncode == 2
    assert smoke("--bogus").returncode == 2


def test_the_sweep_shares_one_gpu_by_fractions():
    overrides = gpu_smoke.sweep_overrides(1, False, Path("/tmp/s"), [])
    assert {"train=gpu", "sampler=hf", "train.gpus_per_worker=0.5", "sampler.gpus_per_actor=0.5",
            "cluster.num_gpus=1"} <= set(overrides)
    assert not any(o.startswith("sampler.gpu_memory_utilization") for o in overrides)  # a vLLM field only
    from orchestrator.config import compose_config, validate

    validate(compose_config(overrides))
