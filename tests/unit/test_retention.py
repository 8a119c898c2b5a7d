"""store.keep: which checkpoints keep their weights once evaluated, engine state dropped with the trial, the
bytes written and kept measured from the store; the evaluation budget's train subset; sweeps apart by id."""
import json

import pytest

from orchestrator.jobs import evicted_line
from orchestrator.retention import Retention, evicted, kind_of, record_written, store_bytes
from store.layout import sweep_paths
from workers.sample import train_subset
from workers.tasks import Example

WEIGHTS, ENGINE, OTHER = 4000, 12000, 100


def make_checkpoint(paths, run_id: str, step: int) -> str:
    """A checkpoint as a trial persists it: HF weights, config and tokenizer, DeepSpeed's engine state."""
    ckpt = paths.file("checkpoints", run_id, f"step_{step:06d}")
    from pathlib import Path

    d = Path(ckpt)
    (d / "engine" / "state").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w" * WEIGHTS)
    (d / "config.json").write_bytes(b"c" * OTHER)
    (d / "engine" / "state" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"e" * ENGINE)
    (d / "trainer_state.json").write_text(json.dumps({"step": step, "epoch": 1.0}))
    record_written(paths, run_id, step, ckpt)
    return ckpt


@pytest.fixture
def sweep(tmp_path):
    paths = sweep_paths(str(tmp_path / "store"), "s-1")
    (tmp_path / "store" / "sweeps" / "s-1").mkdir(parents=True)
    (tmp_path / "store" / "sweeps" / "s-1" / "plan.json").write_text("[]")
    ckpts = {step: make_checkpoint(paths, "r", step) for step in (10, 20, 30)}
    (tmp_path / "store" / "sweeps" / "s-1" / "records" / "r").mkdir(parents=True)
    (tmp_path / "store" / "sweeps" / "s-1" / "records" / "r" / "step_000010.original.parquet").write_bytes(b"r" * 50)
    return paths, ckpts


def test_kinds_of_files():
    assert [kind_of(p) for p in ("model.safetensors", "model-00001-of-00004.safetensors", "pytorch_model.bin",
                                 "engine/state/mp_rank_00_model_states.pt", "r/step_000010/engine/rng_rank0.pt",
                                 "config.json", "tokenizer.json", "r/step_000010.original.parquet")] == [
        "weights", "weights", "weights", "engine", "engine", "other", "other", "records"]


def test_final_keeps_the_last_checkpoints_weights_and_drops_engine_state_when_the_trial_ends(sweep):
    paths, ckpts = sweep
    retention = Retention("final", paths, {"r": 30})
    for step, acc in ((20, 0.5), (10, 0.9), (30, 0.1)):  # evaluations come back in any order
        retention.evaluated("r", step, acc)
    assert [evicted(ckpts[s]) for s in (10, 20, 30)] == [True, True, False]
    import os

    assert not os.path.exists(f"{ckpts[10]}/model.safetensors") and os.path.exists(f"{ckpts[10]}/config.json")
    assert os.path.exists(f"{ckpts[30]}/model.safetensors") and os.path.isdir(f"{ckpts[10]}/engine")
    retention.trial_finished("r")
    assert not any(os.path.exists(f"{c}/engine") for c in ckpts.values())
    measured = store_bytes(paths)
    assert measured["store_written_weights_bytes"] == 3 * WEIGHTS and measured["store_kept_weights_bytes"] == WEIGHTS
    assert measured["store_written_engine_bytes"] == 3 * ENGINE and measured["store_kept_engine_bytes"] == 0
    assert measured["store_written_records_bytes"] == measured["store_kept_records_bytes"] == 50
    line = evicted_line(paths, [type("Spec", (), {"run_id": "r"})()])
    assert line.startswith("evicted: 2 checkpoint(s) have no weights any more (store.keep=final)")
    assert "r/step_000010" in line and "r/step_000020" in line and "step_000030" not in line


def test_final_and_best_keeps_the_best_so_far_and_the_last(sweep):
    paths, ckpts = sweep
    retention = Retention("final_and_best", paths, {"r": 30})
    for step, acc in ((10, 0.4), (20, 0.6), (30, 0.5)):
        retention.evaluated("r", step, acc)
    assert [evicted(ckpts[s]) for s in (10, 20, 30)] == [True, False, False]


def test_all_keeps_everything(sweep):
    paths, ckpts = sweep
    retention = Retention("all", paths, {"r": 30})
    for step in (10, 20, 30):
        retention.evaluated("r", step, 0.5)
    retention.trial_finished("r")
    measured = store_bytes(paths)
    assert not any(evicted(c) for c in ckpts.values())
    assert measured["store_kept_weights_bytes"] == 3 * WEIGHTS and measured["store_kept_engine_bytes"] == 3 * ENGINE


def test_the_train_subset_is_the_same_questions_for_every_run():
    """Seeded by example id, not by position: the same questions for every run of a sweep, and where runs train
    on different data (a quarter of it), a question the full run evaluates is evaluated by the quarter run too."""
    full = [Example(f"train-{i}", "q", "s", "1") for i in range(200)]
    quarter = full[::4]
    picked = {e.example_id for e in train_subset(full, 40, seed=0)}
    assert len(picked) == 40
    assert {e.example_id for e in train_subset(list(reversed(full)), 40, seed=0)} == picked  # order-free
    assert picked & {e.example_id for e in quarter} <= {e.example_id for e in train_subset(quarter, 40, seed=0)}
    assert {e.example_id for e in train_subset(full, 40, seed=1)} != picked  # the seed decides
    assert train_subset(full, 0, seed=0) == full and train_subset(quarter, 500, seed=0) == quarter


def test_sweeps_started_in_the_same_second_get_their_own_ids():
    from orchestrator.sweep import new_sweep_id

    ids = {new_sweep_id("small") for _ in range(20)}
    assert len(ids) >= 19 and all(i.startswith("small-") for i in ids)
