"""Faults on a real multi-node Ray cluster on this host (a head node for the driver's actors and the sampling
pool, two trainer nodes): a train worker SIGKILLed, a sampler actor SIGKILLed mid-evaluation, the driver
SIGKILLed and the sweep resumed, a trainer node's raylet killed. After each: every planned record exactly
once, every MLflow metric one value per step, all runs FINISHED, no process left behind; and a trial that
resumed has the loss curve of the uninterrupted one."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (N_TEST, N_TRAIN, ONE_LONG_TRIAL, Driver, ray_cluster_at,
                                        wait_until, with_small_base)
from tests.integration.exactly_once import (assert_mlflow_exactly_once, assert_no_leftovers,
                                            assert_records_exactly_once, process_table, report)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

FAULT_SWEEP = [*ONE_LONG_TRIAL, "tracking.experiment=faults"]
PLACED = ["+train.resources_per_worker.trainer=1", "+sampler.resources_per_actor.sampler=1"]


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster_at([{"num_cpus": 2, "resources": {"sampler": 2}},
                         {"num_cpus": 1, "resources": {"trainer": 1}},
                         {"num_cpus": 1, "resources": {"trainer": 1}}]) as c:
        yield c


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_base_models):
    return with_small_base(tmp_path_factory.mktemp("store"), small_base_models)  # one store for the module


def pids_titled(title: str, before: dict[int, str]) -> list[int]:
    """Processes started since `before` whose title starts with `title`: Ray workers show what they run as
    their process title (ray::RayTrainWorker, ray::SamplerActor.evaluate). A worker process of an earlier
    sweep's actor can linger a while under the same title."""
    return [pid for pid, cmd in process_table().items() if cmd.startswith(title) and pid not in before]


def checkpoints(sweep: Path, trial: str = "-t00") -> list[Path]:
    return sorted(p.parent for p in (sweep / "checkpoints").glob(f"*{trial}*/step_*/trainer_state.json"))


def started_sweep(store: Path, before: set) -> Path | None:
    """The sweep directory that appeared since `before` (the sweeps the store had), if any yet."""
    new = set((store / "sweeps").iterdir()) - before if (store / "sweeps").exists() else set()
    return next(iter(new), None)


def sweeps_in(store: Path) -> set:
    return set((store / "sweeps").iterdir()) if (store / "sweeps").exists() else set()


def registered(sweep: Path, trial: str = "-t00") -> list[str]:
    """Checkpoints Ray Train has registered (a restart resumes from the newest of these; one merely written
    to the store but not yet registered is trained again)."""
    snapshots = list((sweep / "checkpoints").glob(f"*{trial}*/checkpoint_manager_snapshot.json"))
    if not snapshots:
        return []
    with contextlib.suppress(ValueError):  # caught mid-write
        return [r["checkpoint_dir_name"] for r in json.loads(snapshots[0].read_text())["checkpoint_results"]]
    return []


def loss_curve(sweep: Path, trial: str = "-t00") -> dict[int, float]:
    """step -> train loss from the trial's checkpoints (each holds the losses since the one before)."""
    curve = {}
    for ckpt in checkpoints(sweep, trial):
        for step, loss in json.loads((ckpt / "trainer_state.json").read_text())["train_loss"]:
            assert step not in curve, f"step {step} recorded twice"
            curve[step] = loss
    return curve


def check_exactly_once(sweep: Path, tracking_uri: str, n_trials: int = 1) -> dict:
    assert_records_exactly_once(sweep, N_TRAIN, N_TEST)
    return assert_mlflow_exactly_once(tracking_uri, "faults", sweep.name, n_trials)


# ------------------------------------------------------------------------------------------- tests
ACTORS = ("ray::RayTrainWorker", "ray::SamplerActor", "ray::SamplingPool", "ray::TrainController")


@pytest.fixture(scope="module")
def reference(cluster, store, mlflow_server, tmp_path_factory):
    """The uninterrupted sweep the faulted ones are compared with, and the nodes its actors ran on (seen from
    their processes while it ran)."""
    known = sweeps_in(store)
    driver = Driver(["-m", "orchestrator", "--new", f"store.root={store}", f"tracking.uri={mlflow_server}",
                     f"cluster.address={cluster.address}", *FAULT_SWEEP, *PLACED],
                    tmp_path_factory.mktemp("ref") / "driver.log")
    placement: dict[str, set] = {title: set() for title in ACTORS}
    while driver.proc.poll() is None:
        for pid, cmd in process_table().items():
            title = next((t for t in ACTORS if cmd.startswith(t)), None)
            if title:
                with contextlib.suppress(OSError):  # gone meanwhile
                    node = cluster.node_of(pid)
                    if node:  # None: caught before its log files were open
                        placement[title].add(node)
        time.sleep(0.2)
    assert driver.wait() == 0, driver.output
    return started_sweep(store, known), placement, driver.seconds


def test_trials_and_samplers_run_where_the_config_places_them(cluster, reference, mlflow_server):
    sweep, placement, _ = reference
    check_exactly_once(sweep, mlflow_server)
    head, trainer_nodes = cluster.temp_dirs[0], set(cluster.temp_dirs[1:])
    assert placement["ray::RayTrainWorker"] and placement["ray::RayTrainWorker"] <= trainer_nodes
    assert placement["ray::SamplerActor"] == {head}
    assert placement["ray::SamplingPool"] == {head} and placement["ray::TrainController"] == {head}


def test_killed_driver_is_resumed_without_rerunning_or_duplicating(small_base_models, reference, tmp_path):
    """The embedded default: a local Ray (the driver's own, which dies with it) and MLflow in the store's
    SQLite file; the same command again finishes the sweep (a store of its own: the reference's store holds
    the same sweep). The kill lands in the first trial, before Tune has created the second
    (max_concurrent_trials 1): the rerun creates it from Tune's restored search."""
    before = process_table()
    store = with_small_base(tmp_path / "store", small_base_models)
    known = sweeps_in(store)
    # the first trial (the one the kill interrupts) has the reference sweep's training config: its curve is
    # comparable; the second trains one epoch; evaluation, not under test here, is the smallest (k 1, 16 tokens)
    args = [f"store.root={store}", "cluster.num_cpus=2", *(a for a in FAULT_SWEEP if a != "train.epochs=2"),
            "+sweep.grid.train.epochs=[2,1]", "sampler.k=1", "sampler.max_new_tokens=16"]
    driver = Driver(["-m", "orchestrator", *args], tmp_path / "driver.log")
    wait_until(lambda: started_sweep(store, known) and registered(started_sweep(store, known), "-t00"),
               what="the first trial's first checkpoint")
    driver.proc.kill()
    driver.wait()
    sweep = started_sweep(store, known)
    assert 0 < len(checkpoints(sweep, "-t00")) < 6 and not checkpoints(sweep, "-t01")

    resume = Driver(["-m", "orchestrator", *args], tmp_path / "resume.log")  # the same command again
    assert resume.wait() == 0, resume.output
    assert "0 of 2 trials finished" in resume.output
    # the interrupted trial went on from its checkpoint, not from scratch, and trained as if never interrupted
    # (weights, optimizer, schedule, data order, RNG restored); the second ran whole
    states = [json.loads((c / "trainer_state.json").read_text()) for c in checkpoints(sweep, "-t00")]
    assert len(states) == 6 and max(s["resumed_from_step"] for s in states) > 0
    assert loss_curve(sweep, "-t00") == pytest.approx(loss_curve(reference[0]), abs=1e-4)
    assert len(checkpoints(sweep, "-t01")) == 3 and len(loss_curve(sweep, "-t01")) == 48
    check_exactly_once(sweep, f"sqlite:///{store}/mlflow.db", n_trials=2)
    assert_no_leftovers(before)
    assert "lease: taking the sweep over" in resume.output and sweeps_in(store) == {sweep}
    report("driver SIGKILLed, then the same command again (2 trials, local Ray)", driver.seconds + resume.seconds,
           2 * reference[2])


# --------------------------------------------------------------------------- sweeps that share a cluster
SHARED = ["sweep=small", "sweep.grid.train.lr=[1e-3]", "task.n_train=32", "task.n_test=16", "train.epochs=1",
          "train.micro_batch_size=4", "train.global_batch_size=4", "train.save_every_steps=4", "sampler.k=1",
          "sampler.max_new_tokens=32", "sampler.num_actors=1", "model.base_stage.n_examples=600",
          "model.base_stage.epochs=1", "tracking.experiment=faults", *PLACED]


def test_two_sweeps_share_the_cluster_and_one_keeps_only_final_weights(cluster, store, mlflow_server, tmp_path):
    """Two researchers' sweeps started at once on one cluster and store: each has its own pool, records exactly
    once and its own MLflow runs; the one with store.keep=final ends with its final weights only and no engine
    state, stages checkpoints in its store.local_dir and leaves nothing there; `resume` finds its own pieces."""
    known = sweeps_in(store)
    stage = tmp_path / "stage"
    common = ["-m", "orchestrator", "--new", f"store.root={store}", f"tracking.uri={mlflow_server}",
              f"cluster.address={cluster.address}", *SHARED]
    evicting = Driver([*common, "store.keep=final", f"store.local_dir={stage}"], tmp_path / "a.log")
    keeping = Driver(common, tmp_path / "b.log")
    assert evicting.wait() == 0, evicting.output
    assert keeping.wait() == 0, keeping.output
    sweeps = sweeps_in(store) - known
    assert len(sweeps) == 2
    by_keep = {("final" if "keep: final" in (s / "config.yaml").read_text() else "all"): s for s in sweeps}
    for sweep in sweeps:
        assert_records_exactly_once(sweep, 32, 16)
        assert_mlflow_exactly_once(mlflow_server, "faults", sweep.name, 1)  # one parent each, its child only

    final, kept_all = by_keep["final"], by_keep["all"]
    steps = checkpoints(final)
    assert len(steps) == 2 and not list((final / "checkpoints").rglob("engine"))
    assert not (steps[0] / "model.safetensors").exists() and (steps[0] / "EVICTED.json").exists()
    assert (steps[-1] / "model.safetensors").exists()
    assert all((c / "model.safetensors").exists() for c in checkpoints(kept_all))
    assert list((kept_all / "checkpoints").rglob("engine"))  # the CPU default keeps the newest engine state
    assert not list(stage.glob("premem-ckpt-*")) and not list(stage.glob("premem-resume-*"))
    written_and_kept = [line for line in evicting.output.splitlines() if line.startswith("store: weights")]
    assert written_and_kept, evicting.output[-2000:]
    weights = (steps[-1] / "model.safetensors").stat().st_size
    assert f"weights {2 * weights / 1e6:.1f} MB written / {weights / 1e6:.1f} MB kept" in written_and_kept[0]

    from tests.integration.conftest import run_python

    resumed = run_python(["-m", "orchestrator.resume", str(final), f"tracking.uri={mlflow_server}",
                          f"cluster.address={cluster.address}"], timeout=600)
    assert "1 of 1 trials finished" in resumed.stdout and "0 of them to evaluate" in resumed.stdout
    assert_records_exactly_once(final, 32, 16)


# ------------------------------------------------------------------------------- last: it loses a node
def test_a_killed_worker_a_killed_sampler_and_a_lost_node_cost_time_not_records(cluster, store, reference,
                                                                                mlflow_server, tmp_path):
    """Three faults in one sweep (each sweep costs a minute of the suite), last in the module: the lost node
    leaves the cluster one trainer node short.
    1. The train worker SIGKILLed after the first registered checkpoint: the trial resumes from its engine
       checkpoint.
    2. A sampler actor SIGKILLed mid-evaluation: that checkpoint is evaluated again (a retry, not a failure).
    3. The raylet of the node the resumed worker runs on SIGKILLed: the trial goes on on the live trainer node.
    The loss curve is the uninterrupted one; every record and metric exactly once."""
    before = process_table()
    known = sweeps_in(store)
    driver = Driver(["-m", "orchestrator", "--new", f"store.root={store}", f"tracking.uri={mlflow_server}",
                     f"cluster.address={cluster.address}", *FAULT_SWEEP, *PLACED], tmp_path / "driver.log")
    wait_until(lambda: started_sweep(store, known), what="the sweep dir")
    sweep = started_sweep(store, known)
    wait_until(lambda: registered(sweep), what="the first registered checkpoint")
    first_workers = pids_titled("ray::RayTrainWorker", before)
    assert first_workers, "no train worker to kill"
    for pid in first_workers:
        os.kill(pid, signal.SIGKILL)

    wait_until(lambda: pids_titled("ray::SamplerActor.evaluate", before) or driver.proc.poll() is not None,
               what="an evaluation in progress")
    evaluating = pids_titled("ray::SamplerActor.evaluate", before)
    assert evaluating, "the sweep ended with no evaluation caught in progress:\n" + driver.output[-3000:]
    os.kill(evaluating[0], signal.SIGKILL)

    # 6 checkpoints in all: two more registered after the restart leave three to train on the other node
    wait_until(lambda: len(registered(sweep)) >= 3 or driver.proc.poll() is not None,
               what="two checkpoints registered after the restart")
    resumed_workers = [pid for pid in pids_titled("ray::RayTrainWorker", before) if pid not in first_workers]
    assert resumed_workers and driver.proc.poll() is None, "the trial ended before its node could be lost"
    node = cluster.node_of(resumed_workers[0])
    assert node in cluster.temp_dirs[1:], "the train worker is not on a trainer node"
    cluster.kill_node(node)
    assert driver.wait() == 0, driver.output

    states = [json.loads((c / "trainer_state.json").read_text()) for c in checkpoints(sweep)]
    restarts = {s["resumed_from_step"] for s in states} - {0}
    assert len(restarts) == 2, f"two restarts expected, resumed from steps {sorted(restarts)}"
    resumed, uninterrupted = loss_curve(sweep), loss_curve(reference[0])
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, 97))
    # weights, Adam moments, LR schedule, data order and RNG all came back: the curve is the same
    assert max(abs(resumed[s] - uninterrupted[s]) for s in resumed) < 1e-4
    assert "evaluation RETRY" in driver.output and "FAILED" not in driver.output
    curves = check_exactly_once(sweep, mlflow_server)
    assert len(next(c for k, c in curves.items() if k != "parent")["train_loss"]) == 96
    assert_no_leftovers(before, keep=tuple(cluster.temp_dirs))
    report("train worker SIGKILLed, a sampler actor mid-evaluation, then the trainer node lost (raylet SIGKILLed)",
           driver.seconds, reference[2])
