"""Rerun is resume, the pure parts: what changes a sweep's address and what does not, trials keeping their
run_ids across reruns, the per-trial statuses `--plan` prints, and the lease's decision (fake clock) and file."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from orchestrator import evaluations, rerun, sweep
from orchestrator.lease import Holder, Lease, LeaseHeld, decide
from store.layout import sweep_paths

SMALL = ["sweep=small"]


def addressed(overrides: list[str], root) -> tuple[str, list]:
    cfg, planned_id, specs = sweep.plan([*overrides, f"store.root={root}"])
    sweep_id, specs, _ = rerun.address(cfg, planned_id, specs)
    return sweep_id, specs


@pytest.mark.parametrize("runtime", [
    ["cluster.num_cpus=2"], ["cluster.address=auto"], ["tracking.uri=http://elsewhere:5000"],
    ["tracking.experiment=other"], ["store.keep=final"], ["store.local_dir=/tmp/stage"],
    ["sweep.max_concurrent_trials=2"], ["train.cpus_per_worker=2"], ["+train.resources_per_worker.trainer=1"],
    ["sampler.num_actors=2"], ["sampler.batch_tokens=4096"], ["train.max_failures=5"], ["sweep.lease_stale_s=5"],
    ["sweep.color_by=train.lr"], ["task.nll_threshold=0.2"],
    # how it is evaluated: another records set of the same sweep and trials
    ["sampler.k=3"], ["sampler.max_new_tokens=64"], ["sampler.temperature=0.5"], ["sampler.answer_prefix=First"]])
def test_where_and_how_a_sweep_runs_does_not_change_its_address(runtime, tmp_path):
    first, specs = addressed(SMALL, tmp_path)
    again, respecs = addressed([*SMALL, *runtime], tmp_path)
    assert again == first and [rerun.trial_key(s) for s in respecs] == [rerun.trial_key(s) for s in specs]


@pytest.mark.parametrize("what", [["train.epochs=3"], ["task.n_train=64"], ["model.base_stage.epochs=1"],
                                  ["seed=1"], ["train.num_workers=2",
                                  "train.global_batch_size=32"], ["task=skills"]])
def test_what_a_sweep_computes_changes_its_address(what, tmp_path):
    assert addressed([*SMALL, *what], tmp_path)[0] != addressed(SMALL, tmp_path)[0]


def test_the_swept_values_are_not_the_sweeps_address_and_both_spellings_agree(tmp_path):
    """The grid's values address the trials, not the sweep: a grown grid is the same sweep, in either spelling."""
    grid, _ = addressed([*SMALL, "sweep.grid.train.lr=[1e-3,3e-3]"], tmp_path)
    grown, _ = addressed([*SMALL, "sweep.grid.train.lr=[1e-3,3e-3,1e-2]"], tmp_path)
    hydra, _ = addressed(["-m", *SMALL, "train.lr=1e-3,3e-3,1e-2"], tmp_path)
    assert grid == grown == hydra and grid.startswith("small-") and len(grid) == len("small-") + 8


def store_plan(root, sweep_id: str, specs) -> None:
    paths = sweep_paths(str(root), sweep_id)
    os.makedirs(paths.sweep, exist_ok=True)
    (root / "sweeps" / sweep_id / "plan.json").write_text(json.dumps([asdict(s) for s in specs]))


def test_stored_trials_keep_their_run_ids_and_new_points_get_the_next_number(tmp_path):
    sweep_id, first = addressed([*SMALL, "sweep.grid.train.lr=[1e-3,3e-3]"], tmp_path)
    store_plan(tmp_path, sweep_id, first)
    # grown by one point, declared first: the stored trials keep their names, the new one is t02
    _, grown = addressed([*SMALL, "sweep.grid.train.lr=[1e-2,1e-3,3e-3]"], tmp_path)
    assert [s.run_id for s in grown] == [f"{sweep_id}-t02-lr0.01", f"{sweep_id}-t00-lr0.001", f"{sweep_id}-t01-lr0.003"]
    assert [s.index for s in grown] == [2, 0, 1]
    # a runtime change is still the same trial
    _, moved = addressed([*SMALL, "sweep.grid.train.lr=[1e-3]", "cluster.num_cpus=2"], tmp_path)
    assert [s.run_id for s in moved] == [first[0].run_id]


def test_a_fresh_sweep_keeps_the_planned_dated_id(tmp_path):
    cfg, planned_id, specs = sweep.plan([*SMALL, f"store.root={tmp_path}"])
    sweep_id, same, stored = rerun.address(cfg, planned_id, specs, fresh=True)
    assert sweep_id == planned_id and same == specs and stored == []


@pytest.mark.parametrize("args, expected", [
    ((True, 0, 4, 0), ("run", "new point")),
    ((False, 0, 4, 0), ("run", "0 of 4 checkpoints stored")),
    ((False, 2, 4, 1), ("continue", "2 of 4 checkpoints stored, 1 to evaluate")),
    ((False, 4, 4, 2), ("continue", "trained (4 of 4 checkpoints stored), 2 to evaluate")),
    ((False, 4, 4, 0), ("skip", "done (4 of 4 checkpoints stored and evaluated)"))])
def test_trial_status(args, expected):
    assert rerun.trial_status(*args) == expected


def test_plan_says_per_trial_what_a_rerun_does(tmp_path, capsys):
    sweep_id, specs = addressed([*SMALL, "sweep.grid.train.lr=[1e-3,3e-3]", "train.epochs=2"], tmp_path)
    store_plan(tmp_path, sweep_id, specs)
    sweep_dir = tmp_path / "sweeps" / sweep_id
    for run_id, steps in ((specs[0].run_id, (16, 32)), (specs[1].run_id, (16,))):
        for step in steps:  # HF checkpoints as a store without Ray Train's snapshot lists them
            (sweep_dir / "checkpoints" / run_id / f"step_{step:06d}").mkdir(parents=True)
            (sweep_dir / "checkpoints" / run_id / f"step_{step:06d}" / "config.json").write_text("{}")
            (sweep_dir / "records" / run_id).mkdir(parents=True, exist_ok=True)
            (sweep_dir / "records" / run_id / f"step_{step:06d}.original.parquet").write_bytes(b"x")
    from orchestrator.__main__ import main

    assert main([*SMALL, "sweep.grid.train.lr=[3e-3,1e-2]", "train.epochs=2", f"store.root={tmp_path}", "--plan"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert any(f"sweep {sweep_id}: stored" in line for line in lines)
    assert any("t01 continue" in line and "1 of 2 checkpoints stored" in line for line in lines), out.out
    assert any("t02 run" in line and "new point" in line for line in lines), out.out
    assert any("t00 keep" in line and "not fitted" in line for line in lines), out.out
    assert not (sweep_dir / "lease.json").exists()  # --plan writes nothing


# ------------------------------------------------------------------------------ evaluation settings
def test_evaluation_settings_name_their_records_set():
    """The records set's name follows what changes samples (and the grader version), not where they run."""
    from orchestrator.config import compose_config
    from omegaconf import OmegaConf

    def variant(*overrides):
        return evaluations.eval_variant(OmegaConf.to_container(compose_config([*SMALL, *overrides]).sampler))

    base = variant()
    assert base.startswith("eval-") and len(base) == len("eval-") + 8
    assert variant("sampler.batch_tokens=4096") == variant("sampler.num_actors=2") == base
    changed = [variant(o) for o in ("sampler.k=3", "sampler.temperature=0.5", "sampler.max_new_tokens=64",
                                    "sampler.seed=1", "sampler.answer_prefix=First")]
    assert base not in changed and len(set(changed)) == len(changed)


def test_other_evaluation_settings_address_a_new_records_set_of_the_same_sweep(tmp_path, capsys):
    """`sampler.k` changed: the same sweep, the same trials, a records set of its own (`eval-<hash>`); --plan
    says per trial how many stored checkpoints it evaluates (none trained) and names those store.keep evicted;
    the sweep's first settings stay `original`, and the same settings again find their set."""
    from orchestrator.__main__ import main
    from orchestrator.config import to_yaml
    from orchestrator.retention import EVICTED

    grid = ["sweep.grid.train.lr=[1e-3,3e-3]", "train.epochs=1"]
    cfg, planned_id, planned = sweep.plan([*SMALL, *grid, f"store.root={tmp_path}"])
    sweep_id, specs, _ = rerun.address(cfg, planned_id, planned)
    store_plan(tmp_path, sweep_id, specs)
    paths = sweep_paths(str(tmp_path), sweep_id)
    sweep_dir = tmp_path / "sweeps" / sweep_id
    (sweep_dir / "config.yaml").write_text(to_yaml(cfg))  # a sweep from before evaluations.json
    for run_id in (specs[0].run_id, specs[1].run_id):
        (sweep_dir / "checkpoints" / run_id / "step_000016").mkdir(parents=True)
        (sweep_dir / "checkpoints" / run_id / "step_000016" / "config.json").write_text("{}")
        (sweep_dir / "records" / run_id).mkdir(parents=True, exist_ok=True)
        (sweep_dir / "records" / run_id / "step_000016.original.parquet").write_bytes(b"x")
    (sweep_dir / "checkpoints" / specs[0].run_id / "step_000016" / EVICTED).write_text('{"reason": "keep=final"}')

    original = evaluations.evaluation_set(paths, cfg)
    assert (original.name, original.new) == ("original", False)
    k3 = sweep.plan([*SMALL, *grid, "sampler.k=3", f"store.root={tmp_path}"])[0]
    chosen = evaluations.evaluation_set(paths, k3)
    assert chosen.new and chosen.name.startswith("eval-") and chosen.changed == (("sampler.k", 5, 3),)
    assert chosen.regrade_from is None
    assert main([*SMALL, *grid, "sampler.k=3", f"store.root={tmp_path}", "--plan"]) == 0
    out = capsys.readouterr().out
    assert f"sweep {sweep_id}: stored" in out
    assert f"evaluation: records set {chosen.name}: new evaluation settings (sampler.k 5 -> 3); stored checkpoints " \
           "evaluated again, nothing trained" in out, out
    assert "t01 continue" in out and "trained (1 of 1 checkpoints stored), 1 to evaluate (new evaluation settings)" in out
    assert "t00 skip" in out, out  # its one checkpoint was evicted: nothing it can evaluate
    assert f"evicted: 1 checkpoint(s) have no weights any more (store.keep), so are not evaluated into {chosen.name}: " \
           f"{specs[0].run_id}/step_000016" in out, out
    assert not (sweep_dir / evaluations.SETS_FILE).exists()  # --plan writes nothing

    evaluations.register_set(paths, chosen)
    sets = json.loads((sweep_dir / evaluations.SETS_FILE).read_text())
    assert list(sets) == ["original", chosen.name] and sets["original"]["sampler.k"] == 5
    again = evaluations.evaluation_set(paths, k3)
    assert (again.name, again.new) == (chosen.name, False)
    assert evaluations.evaluation_set(paths, cfg).name == "original"
    renamed = evaluations.with_set(k3, specs, chosen.name)
    assert k3.sampler.variant == chosen.name and {s.config.sampler.variant for s in renamed} == {chosen.name}
    assert [rerun.trial_key(s) for s in renamed] == [rerun.trial_key(s) for s in specs]


def test_a_new_grader_version_regrades_the_stored_completions(tmp_path, monkeypatch):
    """The same sampling settings under another grader version: a new set, re-graded from the completions of
    the set that sampled them."""
    cfg, planned_id, planned = sweep.plan([*SMALL, f"store.root={tmp_path}"])
    sweep_id, specs, _ = rerun.address(cfg, planned_id, planned)
    paths = sweep_paths(str(tmp_path), sweep_id)
    evaluations.register_set(paths, evaluations.evaluation_set(paths, cfg))
    monkeypatch.setattr(evaluations, "GRADER_VERSION", evaluations.GRADER_VERSION + 1)
    chosen = evaluations.evaluation_set(paths, cfg)
    assert chosen.new and chosen.regrade_from == "original" and chosen.changed[0][0] == "grader_version"
    evaluations.register_set(paths, chosen)
    assert evaluations.regrade_sources(paths, chosen.name) == ["original"]
    assert "re-graded from the completions of original (no sampling)" in chosen.line()


# ------------------------------------------------------------------------------------------- lease
ME = Holder("here", 100, 0.0, 0.0)


@pytest.mark.parametrize("holder, now, alive, expected", [
    (None, 10.0, None, "take"),
    (Holder("here", 100, 0.0, 0.0), 1000.0, True, "take"),  # our own lease
    (Holder("there", 7, 0.0, 50.0), 100.0, None, "wait"),  # another host, heartbeat 50 s ago
    (Holder("there", 7, 0.0, 50.0), 171.0, None, "take_over"),  # no heartbeat for more than 120 s
    (Holder("here", 7, 0.0, 99.0), 100.0, False, "take_over"),  # a dead process on this host
    (Holder("here", 7, 0.0, 99.0), 100.0, True, "wait")])
def test_lease_decision(holder, now, alive, expected):
    assert decide(holder, ME, now, 120.0, alive) == expected


def write_holder(sweep_dir, holder: Holder) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "lease.json").write_text(json.dumps(asdict(holder)))


def test_a_held_lease_names_its_holder_and_a_dead_or_stale_one_is_taken_over(tmp_path):
    host = socket.gethostname()
    live = Holder(host, os.getppid(), time.time() - 60, time.time())
    write_holder(tmp_path / "a", live)
    with pytest.raises(LeaseHeld, match=rf"driver pid {os.getppid()} on {host} since .*lease_wait_s=0s"):
        Lease(str(tmp_path / "a"), stale_s=120).acquire(wait_s=0)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_holder(tmp_path / "b", Holder(host, int(dead.stdout), 0.0, time.time()))
    said = []
    with Lease(str(tmp_path / "b"), stale_s=120) as lease:
        lease.acquire(wait_s=0, say=said.append)
        assert json.loads((tmp_path / "b" / "lease.json").read_text())["pid"] == os.getpid()
        assert "that process is gone" in said[0]
    assert not (tmp_path / "b" / "lease.json").exists()  # released

    write_holder(tmp_path / "c", Holder("another-host", 1, 0.0, time.time() - 500))
    said = []
    with Lease(str(tmp_path / "c"), stale_s=120) as lease:
        lease.acquire(wait_s=0, say=said.append)
        assert "no heartbeat for sweep.lease_stale_s=120s" in said[0]


def test_two_points_that_differ_only_in_a_runtime_field_keep_two_run_ids(tmp_path):
    """Each stored trial is matched once: a rerun never gives two planned trials one run_id (one directory)."""
    sweep_id, first = addressed(["-m", *SMALL, "sweep.grid.train.lr=[1e-3]", "sampler.num_actors=1,2"], tmp_path)
    assert len({s.run_id for s in first}) == 2
    store_plan(tmp_path, sweep_id, first)
    _, again = addressed(["-m", *SMALL, "sweep.grid.train.lr=[1e-3]", "sampler.num_actors=1,2"], tmp_path)
    assert sorted(s.run_id for s in again) == sorted(s.run_id for s in first)


def test_the_robustness_prefix_is_part_of_the_address(tmp_path):
    """Its records are named by the variant only: another prefix under the same address would reuse them."""
    assert addressed(["sweep.robustness_prefix=Then"], tmp_path)[0] != addressed([], tmp_path)[0]


def test_an_empty_lease_file_is_waited_on_then_taken_over_when_old(tmp_path):
    """A driver killed while creating its lease leaves an empty file: a later driver neither spins nor waits
    forever on it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "lease.json").write_text("")
    started = time.time()
    with pytest.raises(LeaseHeld, match="stayed unreadable"):
        Lease(str(tmp_path / "a"), stale_s=120).acquire(wait_s=0.5, poll_s=0.1)
    assert time.time() - started < 5
    old = time.time() - 500
    os.utime(tmp_path / "a" / "lease.json", (old, old))
    said = []
    with Lease(str(tmp_path / "a"), stale_s=120) as lease:
        lease.acquire(wait_s=0, say=said.append)
        assert "unreadable and older than sweep.lease_stale_s=120s" in said[0]
        assert json.loads((tmp_path / "a" / "lease.json").read_text())["pid"] == os.getpid()


def test_moving_a_stale_lease_aside_puts_back_a_fresh_one_taken_meanwhile(tmp_path):
    """Two drivers take over one stale lease: the second to rename must not remove the first one's new lease."""
    stale = Holder("another-host", 1, 0.0, time.time() - 500)
    fresh = Holder("another-host", 2, time.time(), time.time())
    write_holder(tmp_path / "a", fresh)  # the first taker's lease, already in place
    Lease(str(tmp_path / "a"), stale_s=120)._remove_stale(stale)
    assert Holder(**json.loads((tmp_path / "a" / "lease.json").read_text())) == fresh
    write_holder(tmp_path / "b", stale)
    Lease(str(tmp_path / "b"), stale_s=120)._remove_stale(stale)
    assert not (tmp_path / "b" / "lease.json").exists() and os.listdir(tmp_path / "b") == []
