"""Ray wiring: Tune runs one trial per grid point, each trial fits a Train V2 TorchTrainer, a Train callback
routes every reported checkpoint to the sampling pool, and the driver logs what the pool finishes.

All Ray actor plumbing of the orchestrator lives here.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray
import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback

from store import io
from orchestrator import retention
from orchestrator.plan import TrialSpec
from store.layout import SweepPaths
from workers.sample import EvalResult, SamplingPool
from store.names import ENGINE_DIR
from orchestrator.jobs import EvalTemplate, trial_jobs
from workers.train import train_loop_per_worker

NAMESPACE = "premem"
TRIAL_DRIVER_MEMORY = 256 * 1024**2  # bytes; Tune needs a non-empty request and the driver takes no CPU
# Ray's own resource on the head node. The pool and each trial's Tune actor (with its Train controller, which
# Train V2 places on the same node) hold a sliver of it: they sit on the head node, so losing a worker node
# costs only the train workers and samplers on it, which Ray Train and the pool replace.
HEAD_NODE = {"node:__internal_head__": 0.001}


# --------------------------------------------------------------------------------- ray and the pool
def job_env() -> dict[str, str]:
    """Environment variables every process of the sweep's Ray job gets (its runtime_env).

    Nothing here depends on the driver's hardware: on a cluster the driver often runs on a GPU-less head, and
    what it sees says nothing about the nodes. DeepSpeed picks its accelerator on each worker's own node (CUDA
    where that process sees a GPU, else CPU)."""
    return {"RAY_TRAIN_V2_ENABLED": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
            "RAY_AIR_NEW_OUTPUT": "0",  # the driver's progress line replaces Tune's tables
            # The Train controller notices a finished worker group at its next poll; at the default 2 s that
            # added about 4 s to every trial (bench/evaluation.py's trial phases), at 0.2 s it is under 1 s.
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"),
            # Two of the helpers Train V2 starts with every trial's worker group, neither of which premem reads:
            # the preemption watcher (an actor: one more process per trial; it only logs a node's preemption,
            # the controller's health check restarts the group either way) and the controller's and workers'
            # Prometheus metrics. Off, a trial starts fewer processes on CPUs its workers need
            # (bench/trial_overhead.py).
            **{name: os.environ.get(name, "0")
               for name in ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED")},
            # "1": train workers and samplers import mlflow and scikit-learn as their libraries do
            # (workers/lean_imports.py: skipped, they start seconds sooner)
            "PREMEM_KEEP_OPTIONAL_IMPORTS": os.environ.get("PREMEM_KEEP_OPTIONAL_IMPORTS", "0")}


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, log_dir: Path | None = None) -> None:
    """Join a cluster or start a local Ray (once); Ray's own logs go to a file in `log_dir`, not the terminal
    (without one, until `log_ray_to` names it)."""
    env = job_env()
    os.environ.update(env)
    # before ray.init, whose own warnings (token authentication on a new head) would otherwise reach the terminal
    if log_dir is not None:
        _route_ray_loggers(_ray_log_file(log_dir))
    elif not ray.is_initialized():
        _route_ray_loggers(logging.NullHandler())  # the terminal is ours; the file comes with the sweep's directory
    if not ray.is_initialized():
        kwargs = dict(namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                      runtime_env={"env_vars": env}, include_dashboard=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
            from orchestrator import reaper  # this Ray is ours: nothing of it may outlive this driver

            reaper.start(ray._private.worker._global_node.get_session_dir_path())
    if log_dir is not None:
        _link_ray_logs(log_dir)


def log_ray_to(log_dir: Path) -> None:
    _route_ray_loggers(_ray_log_file(log_dir))
    _link_ray_logs(log_dir)


def _ray_log_file(log_dir: Path) -> logging.FileHandler:
    log_dir.mkdir(parents=True, exist_ok=True)
    return logging.FileHandler(log_dir / "ray_driver.log")


def _route_ray_loggers(handler: logging.Handler) -> None:
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False


def connect_and_place(cfg, specs: list[TrialSpec], log_dir: Path | None = None, check: bool = True):
    """Start or join Ray (its logs to `log_dir`, once the sweep has one) and check that the cluster holds the
    sampling pool and each trial (PlacementError naming the field and what the cluster has: Ray itself would
    wait for good); None when not checked."""
    init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.num_gpus, log_dir)
    if not (check and cfg.cluster.check_placement):
        return None
    planned = check_placement(specs, cfg.sampler)
    if planned.note:
        print(f"note: {planned.note}")
    return planned


def check_placement(specs: list[TrialSpec], sampler):
    """Refuse (PlacementError, one line) a pool or a trial that the joined cluster cannot hold; else where
    the pool and the largest trial will go."""
    from orchestrator import placement

    nodes = placement.nodes_from_ray(ray.nodes())
    plans = [placement.plan_placement(nodes, sampler, asdict(spec.config.train), spec.config.train.placement_strategy)
             for spec in specs]
    return max(plans, key=lambda p: len(p.workers))


def _link_ray_logs(log_dir: Path) -> None:
    """Point <sweep>/logs/ray at this Ray session's logs (workers' stdout/stderr, raylet, GCS)."""
    try:
        session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    except AttributeError:  # a client connection (ray://) has no local session directory
        return
    link = log_dir / "ray"
    if link.is_symlink():  # a rerun of the sweep (its address is the same): the newest session's logs
        link.unlink()
    if not link.exists():
        link.symlink_to(session, target_is_directory=True)


VLLM_OPTIONS = ("dtype", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager")


def pool_name() -> str:
    """The sampling pool's actor name: one per driver (its Ray job), so sweeps that share a cluster never share
    or collide on a pool. The Train controllers that route checkpoints to it run in the same job, so they find it
    by the same name; curation rounds (one driver) share it, and `resume` (a new driver) starts its own."""
    return f"premem-sampling-pool-{ray.get_runtime_context().get_job_id()}"


def start_pool(sampler):
    """The named pool actor (from the `sampler` config); it takes no CPU itself, its sampler actors hold the
    pool's resources: each one engine's CPUs and GPUs (tensor_parallel_size GPUs for a vLLM engine) plus the
    custom resources the config names (to put samplers on their own nodes). A sampler actor that dies is
    restarted, as often as it takes; the pool evaluates its checkpoint again."""
    options = {"num_cpus": sampler.cpus_per_actor, "num_gpus": sampler.gpus_per_actor, "max_restarts": -1,
               "resources": dict(sampler.resources_per_actor)}
    threads = max(1, int(sampler.cpus_per_actor))
    vllm_options = {k: sampler[k] for k in VLLM_OPTIONS}
    pool_cls = ray.remote(num_cpus=0, resources=HEAD_NODE)(SamplingPool)
    return pool_cls.options(name=pool_name(), namespace=NAMESPACE, lifetime=None).remote(
        sampler.num_actors, options, sampler.backend, threads, sampler.nice, vllm_options, sampler.max_backlog)


def record_placement(pool, paths: SweepPaths) -> str:
    """Write where the sampler actors ran beside the trials' files (analysis/placement/); for the terminal, one
    line a node: what ran there, on which GPU ids."""
    try:
        samplers = ray.get(pool.placement.remote(), timeout=60)
    except Exception as exc:  # a lost pool was reported already; where it ran is not worth failing for
        return f"placement: the sampling pool did not answer ({type(exc).__name__})"
    io.write_text(paths.file("analysis", "placement", "samplers.json"), json.dumps(samplers, indent=1))
    trials = {_trial_of(io.name(location)): json.loads(io.read_text(location))
              for location in io.list_files(io.join(paths.analysis, "placement"), suffix=".json")
              if io.name(location) != "samplers.json"}
    return placement_text(samplers, trials)


def placement_text(samplers: list[dict], trials: dict[str, list[dict]]) -> str:
    """One line a node: its sampler actors and each trial's workers there, with their GPU ids."""
    by_node: dict[str, dict[str, list]] = {}  # node -> what ran there -> one entry per process: its GPU ids
    for what, processes in [("samplers", samplers), *trials.items()]:
        for where in processes:
            by_node.setdefault(where["node_id"], {}).setdefault(what, []).append(where["gpu_ids"])
    lines = [f"  node {node[:8]}: " + "; ".join(
        f"{what} x{len(processes)}" + (f" (GPU {','.join(g for ids in processes for g in ids)})"
                                       if any(processes) else "")
        for what, processes in items.items()) for node, items in by_node.items()]
    return "placement (analysis/placement/):\n" + "\n".join(lines)


def _trial_of(file_name: str) -> str:
    found = re.search(r"-(t\d+)(-|\.json$)", file_name)
    return found.group(1) if found else file_name.removesuffix(".json")


# ------------------------------------------------------------------------------- one trial (Tune)
class RouteCheckpoints(UserCallback):
    """Runs in the Train controller: each persisted checkpoint goes to the sampling pool at once, and the
    DeepSpeed engine state (optimizer moments: twice the weights) is kept in the newest `keep_engine_states`
    checkpoints only; a restart resumes from the newest."""

    def __init__(self, template: EvalTemplate, keep_engine_states: int = 1):
        self.template = template
        self.keep_engine_states = keep_engine_states
        self.placement: list | None = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self._record_placement([m.get("placement") for m in metrics])
        if checkpoint is None:
            return
        # The checkpoint as a store location (Ray gives a path on its filesystem, without the URI scheme)
        location = io.join(self.template.paths.checkpoints, self.template.run_id, io.name(checkpoint.path))
        state = json.loads(io.read_text(io.join(location, "trainer_state.json")))
        retention.record_written(self.template.paths, self.template.run_id, int(state["step"]), location)
        job = self.template.job(int(state["step"]), float(state["epoch"]), location)
        ray.get_actor(pool_name(), namespace=NAMESPACE).submit.remote(job)
        older = [c for c in io.list_dirs(io.parent(location))
                 if io.name(c).startswith("step_") and io.name(c) < io.name(location)]
        for stale in older[: max(0, len(older) - self.keep_engine_states + 1)]:
            io.delete_dir(io.join(stale, ENGINE_DIR))


    def _record_placement(self, workers: list) -> None:
        """Where this trial's workers run (node, GPU ids), rank by rank: written again after a restart moves them."""
        if workers != self.placement and all(workers):
            self.placement = workers
            io.write_text(self.template.paths.file("analysis", "placement", f"{self.template.run_id}.json"),
                               json.dumps(workers, indent=1))


def run_trial(config: dict) -> dict:
    """The Tune function trainable: build this trial's TorchTrainer and fit it (Train V2)."""
    from ray.train.torch import TorchConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    job, template, train_cfg = config["job"], config["template"], config["train_cfg"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**asdict(job), "train": asdict(job.train)},
        torch_config=TorchConfig(backend=dist_backend(train_cfg)),
        scaling_config=ray.train.ScalingConfig(
            num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu,
            resources_per_worker={"CPU": train_cfg.cpus_per_worker,
                                  **({"GPU": train_cfg.gpus_per_worker} if train_cfg.use_gpu else {}),
                                  **train_cfg.resources_per_worker},
            placement_strategy=train_cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=job.run_id, storage_path=template.paths.checkpoints,
            failure_config=ray.train.FailureConfig(max_failures=train_cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
            worker_runtime_env={"env_vars": dict(train_cfg.env)} if train_cfg.env else None,
            callbacks=[RouteCheckpoints(template, train_cfg.keep_engine_states), TuneReportCallback()]),
    )
    # where the pool shares cores with training, a trial starts once evaluation has caught up (sampler.max_backlog)
    eval_wait = ray.get(ray.get_actor(pool_name(), namespace=NAMESPACE).room.remote())
    started = time.time()
    result = trainer.fit()
    ended = time.time()
    return {"final_step": (result.metrics or {}).get("step", 0), **trial_timings(started, ended, result.metrics),
            "eval_wait_seconds": eval_wait}


def dist_backend(train_cfg) -> str:
    """torch.distributed's backend for a trial: NCCL between GPU workers, gloo on CPU (`train.dist_backend`
    names one outright, e.g. gloo for workers placed on GPU nodes that train on CPU)."""
    if train_cfg.dist_backend != "auto":
        return train_cfg.dist_backend
    return "nccl" if train_cfg.use_gpu else "gloo"


def trial_timings(started: float, ended: float, last_metrics: dict | None) -> dict:
    """A trial's wall time split into phases from its workers' last report (see workers.train.PhaseClock)."""
    m = last_metrics or {}
    nan = float("nan")
    trial = ended - started
    phases = {
        "startup_seconds": m.get("worker_entered_at", nan) - started,  # Train controller, worker group, imports
        "setup_seconds": m.get("worker_ready_at", nan) - m.get("worker_entered_at", nan),  # model, data, engine
        "train_compute_seconds": m.get("train_compute_seconds", nan),
        "checkpoint_seconds": m.get("checkpoint_seconds", nan),
    }
    return {"trial_seconds": trial, **phases, "other_seconds": trial - sum(phases.values())}


# ------------------------------------------------------------------------------- progress and sweep
ETA_WINDOW = 8  # evaluations the ETA's pace is measured over


@dataclass
class Progress:
    total_trials: int
    expected_checkpoints: int
    started: float = field(default_factory=time.time)
    running: set = field(default_factory=set)
    done: set = field(default_factory=set)
    failed: dict = field(default_factory=dict)
    trained: int = 0
    evaluated: int = 0
    eval_failed: int = 0
    timings: dict = field(default_factory=dict)  # run_id -> phases of the trial's wall time (run_trial)
    trial_started: dict = field(default_factory=dict)  # run_id -> when Tune started the trial
    monitor_error: str | None = None  # the sampling pool was lost: evaluations stopped coming back
    # when the last evaluations of this driver came back (time.time()): the ETA's window and one before it
    came_back_at: collections.deque = field(default_factory=lambda: collections.deque(maxlen=ETA_WINDOW + 1))
    lock: threading.Lock = field(default_factory=threading.Lock)
    # what Tune's callback reports for the driver (TrainLosses), in the order it came
    reports: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment state
        return {k: v for k, v in self.__dict__.items() if k not in ("lock", "reports")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.Lock(), reports=queue.SimpleQueue())

    def came_back(self, n: int, now: float | None = None) -> None:
        """`n` evaluations (finished or failed) came back from the pool; call with the lock held."""
        self.came_back_at.extend([time.time() if now is None else now] * n)

    def seconds_per_evaluation(self, now: float) -> float:
        """The pace of the last ETA_WINDOW evaluations, counted up to `now` (a stall slows it). Not the
        sweep's mean: samplers share the CPUs with training until the last trial ends and then speed up, and
        evaluations a resumed sweep found done took no time in this driver. NaN before any came back."""
        times = self.came_back_at
        if not times:
            return float("nan")
        if len(times) <= ETA_WINDOW:
            return (now - self.started) / len(times)
        return (now - times[0]) / ETA_WINDOW

    def line(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        elapsed = now - self.started
        queued = self.total_trials - len(self.running) - len(self.done) - len(self.failed)
        finished = self.evaluated + self.eval_failed
        eta = self.seconds_per_evaluation(now) * (self.expected_checkpoints - finished)
        eta_text = f"{eta / 60:4.1f}m" if eta == eta else "  ?  "
        return (f"trials {queued} queued {len(self.running)} running {len(self.done)} done {len(self.failed)} failed"
                f" | checkpoints {self.trained}/{self.expected_checkpoints} trained {self.evaluated} evaluated"
                + (f" ({self.eval_failed} failed)" if self.eval_failed else "")
                + f" | {elapsed / 60:4.1f}m elapsed, ETA {eta_text}")


class ProgressCallback(ray.tune.Callback):
    """Tune driver-side callback: trial state changes and trained checkpoints feed the progress, and each
    report's train losses become a TrainLosses event for the driver (Trials.events hands them over)."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def _run_id(self, trial) -> str:
        return trial.config["trial"]["job"].run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        with self.progress.lock:
            self.progress.running.add(self._run_id(trial))
            self.progress.trial_started[self._run_id(trial)] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("train_losses"):
            self.progress.reports.put(TrainLosses(self._run_id(trial), result["train_losses"]))
        with self.progress.lock:
            if "checkpoint_path" in result:
                self.progress.trained += 1
            if "trial_seconds" in result:
                self.progress.timings[self._run_id(trial)] = {
                    k: v for k, v in result.items() if k.endswith("_seconds")}

    def on_trial_complete(self, iteration, trials, trial, **info):
        with self.progress.lock:
            run_id = self._run_id(trial)
            self.progress.running.discard(run_id)
            self.progress.done.add(run_id)
            if run_id in self.progress.timings and run_id in self.progress.trial_started:
                # Tune's view: also counts starting the trial's own actor, which run_trial cannot see
                self.progress.timings[run_id]["tune_trial_seconds"] = time.time() - self.progress.trial_started[run_id]

    def on_trial_error(self, iteration, trials, trial, **info):
        error = str(getattr(trial, "error_file", "") or "error")
        with self.progress.lock:
            self.progress.running.discard(self._run_id(trial))
            self.progress.failed[self._run_id(trial)] = error


def show(progress: Progress, final: bool = False) -> None:
    line = progress.line()
    if sys.stdout.isatty():
        sys.stdout.write("\r\033[K" + line + ("\n" if final else ""))
    else:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class Resumed:
    """What an interrupted sweep already has, for `orchestrator.resume`."""

    pending: list  # EvalJobs of checkpoints trained but not evaluated (or not logged) before the driver died
    train_losses: dict  # run_id -> [[step, loss], ...] its stored checkpoints hold (logged again: written once)
    trained: int  # registered checkpoints in the store
    evaluated: int  # of them, evaluated and logged
    finished_trials: set  # run_ids Tune finished (it does not run them again)


# ------------------------------------------------------------------------------------------- events
# What the driver hears while a sweep runs, from one place (Trials.events / evaluation_events), in one thread.
@dataclass
class Evaluated:
    result: EvalResult  # a checkpoint's records and completions are written


@dataclass
class EvaluationFailed:
    job: dict
    line: str  # one line: which checkpoint, and the cause
    details: str  # the traceback


@dataclass
class TrainLosses:
    run_id: str
    losses: list  # [[step, loss], ...] of one report


@dataclass
class TrialFinished:
    run_id: str  # Tune finished the trial: it trains no more


class Trials:
    """A sweep's trials running on Tune in a background thread (Tune's loop must run somewhere; the driver's
    thread listens), and the sampling pool their checkpoints go to. `events()` is everything they report.

    With `resumed`, Tune's experiment in the store is restored (finished trials stay finished, the others
    continue from their last checkpoints) and the pending checkpoints go to the pool first."""

    def __init__(self, specs: list[TrialSpec], paths: SweepPaths, base_model: str | dict[str, str],
                 max_concurrent: int, pool, expected_checkpoints: int, resumed: Resumed | None = None):
        self.specs, self.paths, self.base_model, self.pool = specs, paths, base_model, pool
        self.max_concurrent, self.resumed = max_concurrent, resumed
        self.progress = Progress(len(specs), expected_checkpoints)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._fit, name="premem-tune", daemon=True)

    def start(self) -> "Trials":
        progress, resumed = self.progress, self.resumed
        if resumed is not None:
            progress.trained, progress.evaluated = resumed.trained, resumed.evaluated
            progress.done = set(resumed.finished_trials)
            for job in resumed.pending:
                self.pool.submit.remote(job)
            for run_id, losses in resumed.train_losses.items():  # the dead driver may not have logged them all
                progress.reports.put(TrainLosses(run_id, losses))
        _keep_credentials_out_of_runtime_envs()
        self.thread.start()
        return self

    def _fit(self) -> None:
        try:
            fit_trials(self.specs, self.paths, self.base_model, self.max_concurrent, ProgressCallback(self.progress),
                       self.resumed)
        except BaseException as exc:  # raised again in the driver's thread, by events()
            self.error = exc

    def events(self, refresh_seconds: float = 2.0):
        """Evaluated / EvaluationFailed / TrainLosses / TrialFinished, as they come, until every trial has ended
        and every trained checkpoint is back from the pool; the progress line meanwhile."""
        yield from stream_events(self.pool, self.progress, self.thread, refresh_seconds)
        if self.error is not None:
            raise self.error


def evaluation_events(pool, jobs: list, progress: Progress):
    """The pool's events for `jobs` (checkpoints sent to it now, no training) until all are back."""
    for job in jobs:
        pool.submit.remote(job)
    yield from stream_events(pool, progress, None)


def stream_events(pool, progress: Progress, training: threading.Thread | None, refresh_seconds: float = 2.0):
    """The one loop that listens to a running sweep: drains the pool (finished, failed and retried
    evaluations), Tune's reports and finished trials, and shows the progress line.

    If the pool itself is lost, the error is kept on `progress` (the driver reports what never came back and
    exits non-zero) and the loop waits for the trials only."""
    last_shown = 0.0
    announced: set[str] = set()  # finished trials already handed over
    while True:
        training_over = training is None or not training.is_alive()  # read first: nothing is reported after
        while not progress.reports.empty():
            yield progress.reports.get()
        with progress.lock:
            newly_done = sorted(progress.done - announced)
        for run_id in newly_done:
            announced.add(run_id)
            yield TrialFinished(run_id)
        finished, failed = [], []
        if progress.monitor_error is None:
            try:
                finished, failed, retried = ray.get(pool.drain.remote())
            except Exception as exc:
                with progress.lock:
                    progress.monitor_error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
                retried = []
            for job, line in retried:
                print(f"evaluation RETRY: {line} (its sampler actor was lost; evaluating it again)", flush=True)
        for result in finished:
            yield Evaluated(result)
        for job, line, details in failed:
            yield EvaluationFailed(job, line, details)
        with progress.lock:  # every checkpoint Tune saw trained must come back from the pool
            progress.evaluated += len(finished)
            progress.eval_failed += len(failed)
            progress.came_back(len(finished) + len(failed))
            all_back = progress.evaluated + progress.eval_failed >= progress.trained
        if training_over and (all_back or progress.monitor_error is not None) and progress.reports.empty():
            if training is not None:
                training.join()
            show(progress, final=True)
            return
        interval = refresh_seconds if sys.stdout.isatty() else 30.0
        if time.time() - last_shown >= interval:
            show(progress)
            last_shown = time.time()
        time.sleep(0.5)


def fit_trials(specs: list[TrialSpec], paths: SweepPaths, base_model: str | dict[str, str], max_concurrent: int,
               callback: ProgressCallback, resumed: Resumed | None = None) -> None:
    """Run the trials not finished yet on Tune (blocking): a stored experiment of exactly these trials is
    restored, else a Tune experiment of their own."""
    trials = []
    for spec in specs:
        job, template = trial_jobs(spec, paths, base_model)
        trials.append({"job": job, "template": template, "train_cfg": spec.config.train})
    max_failures = max(int(spec.config.train.max_failures) for spec in specs)
    finished = finished_trials(paths) if resumed is not None else set()
    to_run = [t for t in trials if t["job"].run_id not in finished]
    experiments = stored_experiments(paths)
    by_id = {t["job"].run_id: t for t in trials}
    same = next((name for name, ids in experiments.items()
                 if set(ids) <= set(by_id) and set(ids) - finished == set(by_id) - finished
                 and ray.tune.Tuner.can_restore(tune_dir(paths, name))), None)
    if not to_run:
        return  # every trial of the command finished in an earlier pass: only evaluations and the fit are left
    if resumed is not None and same is not None:
        # Tune stores a trial's objects (TrainJob, EvalTemplate) as placeholders and does not save the param
        # space; trials it had not created yet (max_concurrent_trials holds them back) resolve them from the one
        # given here, rebuilt from the same specs, in the order the experiment was given them
        tuner = ray.tune.Tuner.restore(tune_dir(paths, same), _trainable_with_resources(), resume_unfinished=True,
                                       resume_errored=True, param_space=_param_space([by_id[i] for i in experiments[same]]))
        # the restored RunConfig carries the dead driver's callbacks; the progress is this driver's
        tuner._local_tuner.get_run_config().callbacks = [callback]
        tuner.fit()
        return
    # a first pass, or another set of trials than any stored experiment's (a grid grown or cut, or trials
    # that finished since): a Tune experiment of its own, named by its trials; each unfinished trial's
    # TorchTrainer still resumes from its Ray Train checkpoint snapshot in the store
    name = "tune" if not experiments and not io.exists(tune_dir(paths)) else \
        "tune-" + hashlib.sha256(" ".join(sorted(t["job"].run_id for t in to_run)).encode()).hexdigest()[:8]
    record_experiment(paths, name, [t["job"].run_id for t in to_run])
    _tuner(to_run, paths, max_concurrent, callback, max_failures, name).fit()


EXPERIMENTS_FILE = "tune_experiments.json"  # Tune experiment name -> the run_ids it was given, in order


def tune_dir(paths: SweepPaths, name: str = "tune") -> str:
    return io.join(paths.sweep, name)


def stored_experiments(paths: SweepPaths) -> dict[str, list[str]]:
    """The sweep's Tune experiments and their trials (a sweep from before the file: `tune`, over plan.json)."""
    location = paths.file(EXPERIMENTS_FILE)
    if io.is_file(location):
        return json.loads(io.read_text(location))
    if io.exists(tune_dir(paths)) and io.is_file(paths.file("plan.json")):
        return {"tune": [d["run_id"] for d in json.loads(io.read_text(paths.file("plan.json")))]}
    return {}


def remember_first_experiment(paths: SweepPaths) -> None:
    """Write down a pre-existing sweep's `tune` experiment's trials before a rerun rewrites plan.json."""
    if not io.is_file(paths.file(EXPERIMENTS_FILE)) and (experiments := stored_experiments(paths)):
        io.write_text(paths.file(EXPERIMENTS_FILE), json.dumps(experiments, indent=1))


def record_experiment(paths: SweepPaths, name: str, run_ids: list[str]) -> None:
    experiments = stored_experiments(paths)
    experiments[name] = run_ids
    io.write_text(paths.file(EXPERIMENTS_FILE), json.dumps(experiments, indent=1))


def finished_trials(paths: SweepPaths) -> set[str]:
    """run_ids of the trials that one of the sweep's stored Tune experiments marks finished."""
    done = set()
    for name in stored_experiments(paths):
        if ray.tune.Tuner.can_restore(tune_dir(paths, name)):
            analysis = ray.tune.ExperimentAnalysis(tune_dir(paths, name))
            done |= {t.config["trial"]["job"].run_id for t in analysis.trials if t.status == "TERMINATED"}
    return done


def trainable(config: dict) -> dict:
    """Tune's function trainable: one trial spec's TorchTrainer (module-level: a restore names it again)."""
    return run_trial(config["trial"])


def _trainable_with_resources():
    # the trial function holds memory but no CPU (its Train workers do), on the head node
    return ray.tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY, **HEAD_NODE})


# Tune copies these from the driver's environment into every trial actor's runtime_env, which Ray's
# runtime-env agent writes to its log in clear and the GCS keeps. Every node has the store's credentials in its
# own environment (the compose file and the KubeRay pods set them; a local Ray inherits the driver's), so the
# copy is dropped: credentials never reach Ray's logs or state.
CREDENTIAL_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def _keep_credentials_out_of_runtime_envs() -> None:
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_VARS


def _param_space(trials: list[dict]) -> dict:
    return {"trial": ray.tune.grid_search(trials)}


def _tuner(trials: list[dict], paths: SweepPaths, max_concurrent: int, callback,
           max_failures: int = 1, name: str = "tune") -> ray.tune.Tuner:
    """One Tune trial per trial spec."""
    return ray.tune.Tuner(
        _trainable_with_resources(),
        param_space=_param_space(trials),
        # a finished trial's actor runs the next trial (its imports done: ~4 s of 2 cores per trial); the
        # trial's training runs in Train V2's own fresh worker processes, so the records are the same
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=ray.tune.RunConfig(name=name, storage_path=paths.sweep, verbose=0, callbacks=[callback],
                                      # a trial whose own actor is lost restarts; its TorchTrainer then
                                      # resumes from the trial's last checkpoint
                                      failure_config=ray.tune.FailureConfig(max_failures=max_failures)),
    )
