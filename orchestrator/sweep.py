"""The sweep as a library: plan -> check -> launch -> execute, from a composed config to records, MLflow runs and
the premem fit. The CLI (`python -m orchestrator`), `resume`, `reeval`, `curate` and the bench call these.

A trial's path reads top to bottom from here: `plan_sweep` (conf/ -> typed trial specs), `launch` (store and
MLflow runs), `execute` (orchestrator/schedule.py runs the trials on Ray: workers/train.py trains, workers/sample.py
evaluates each checkpoint), then orchestrator/finish.py fits and logs.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import (Config, ConfigError, compose_config, take_credentials, to_yaml,
                                 tracking_uri, validate)
from orchestrator.plan import TrialSpec, expand_grid
from store import io
from store.layout import SweepPaths, base_model_dir, open_sweep, sweep_paths, write_text_atomic
from workers.tasks import generated_tasks

KEY_PARAMS = ("train.lr", "train.epochs", "task.train_fraction", "seed", "task.name", "model.name",
              "train.global_batch_size", "train.zero_stage", "train.precision", "sampler.k", "sampler.temperature")


# ------------------------------------------------------------------------------------------------ plan
def new_sweep_id(name: str) -> str:
    """`<name>-<date>-<time>-<4 hex>`: two sweeps of one name started in the same second (two researchers on
    one cluster and store) still get directories, Tune experiments and MLflow runs of their own."""
    import secrets

    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def plan(overrides: list[str]) -> tuple[DictConfig, str, list[TrialSpec]]:
    """Config, sweep id and typed trial specs of the command line's overrides: a grid (`sweep.grid`) or Hydra's
    sweep syntax (`-m a=1,2`, `range()`, a preset's `hydra.sweeper.params`) is one sweep either way. ConfigError
    (one line naming the field) before anything is written."""
    from orchestrator import multirun
    from orchestrator.config import compose_with_sweeper_params

    swept = any(a in multirun.SWEEP_FLAGS for a in overrides) or multirun.has_sweep(overrides)
    cfg, params = (None, {}) if swept else compose_with_sweeper_params(overrides)
    if swept or params:
        return plan_jobs(*multirun.compose_jobs(overrides), fixed=multirun.command_line_fields(overrides))
    return plan_sweep(overrides, cfg)


def plan_sweep(overrides: list[str], cfg: DictConfig | None = None) -> tuple[DictConfig, str, list[TrialSpec]]:
    """Config, sweep id and trial specs (of `cfg` when already composed from the overrides); raises ConfigError
    before anything is written. A field the overrides set to one value replaces the grid's axis over it."""
    from orchestrator.multirun import command_line_fields

    cfg = cfg if cfg is not None else compose_config(overrides)
    return checked_plan(cfg, [], expand_grid, command_line_fields(overrides))


def plan_jobs(base: DictConfig, jobs: list[tuple[dict, DictConfig]],
              fixed: set[str] = frozenset()) -> tuple[DictConfig, str, list[TrialSpec]]:
    """plan_sweep for a Hydra sweep: the base config (no sweep override applied), each job's composed config and
    the fields the command line sets to one value."""
    from orchestrator.plan import expand_jobs

    return checked_plan(base, [cfg for _, cfg in jobs], lambda _, sweep_id: expand_jobs(jobs, sweep_id, fixed),
                        fixed)


def checked_plan(base: DictConfig, job_configs: list[DictConfig], expand,
                 fixed: set[str]) -> tuple[DictConfig, str, list[TrialSpec]]:
    """The checks every plan passes before anything is written: credentials out of every config, the base
    config valid, the grid's axes over `fixed` (fields the command line sets) dropped, each trial valid (expand
    validates them), every dataset file read, every trial's data filling at least one global batch."""
    from orchestrator.plan import without_axes

    for cfg in [base, *job_configs]:
        take_credentials(cfg)
    validate(base)  # a bad value is named before a clash with the grid
    base = without_axes(base, fixed)
    sweep_id = new_sweep_id(base.sweep.name)
    specs = expand(base, sweep_id)
    check_task_files(specs)
    expected_checkpoints(specs)  # a trial whose data do not fill one global batch is refused here
    return base, sweep_id, specs


def check_task_files(specs: list[TrialSpec]) -> None:
    """Read every dataset file the trials name, now: a bad row is one ConfigError naming the field, file and
    line before anything is written (not a trial failing minutes later)."""
    from workers.tasks.jsonl import DatasetFileError, read_added, read_jsonl

    seen = set()
    for spec in specs:
        task = spec.config.task
        for field, split, limit in (("path", "train", task.n_train), ("test_path", "test", task.n_test)):
            location = getattr(task, field)
            if task.name in generated_tasks() or not location or (task.name, location, limit) in seen:
                continue
            seen.add((task.name, location, limit))
            try:
                read_jsonl(task.name, location, split, limit)
            except DatasetFileError as exc:
                raise ConfigError(f"task.{field}: {exc}") from None
        if task.added_path and task.added_path not in seen:
            seen.add(task.added_path)
            try:
                read_added(task.added_path)
            except DatasetFileError as exc:
                raise ConfigError(f"task.added_path: {exc}") from None


def check(cfg: DictConfig, specs: list[TrialSpec]) -> None:
    """That the planned sweep can run here, before anything is written: the store writable, the tracking
    server answering, Ray up and able to hold the pool and each trial (StorageError, TrackingError,
    PlacementError: one line each)."""
    from orchestrator import schedule
    from orchestrator.tracking import check_tracking

    io.check_writable(io.normalize(cfg.store.root))
    check_tracking(tracking_uri(cfg))
    schedule.connect_and_place(cfg, specs)


def ensure_base_model(cfg: DictConfig, log=print) -> str:
    """The model every trial starts from: model.path, or the cached tiny base model (built once)."""
    if cfg.model.path:
        return cfg.model.path
    from workers.base_model import BaseStage, base_model_key, build_base_model_reproducibly

    key = base_model_key(cfg.model, cfg.task)
    stage, task, prompt = BaseStage(**key["stage"]), key["task"], key["prompt"]
    location = base_model_dir(cfg.store.root, key)
    if io.is_file(io.join(location, "config.json")):
        log(f"base model: reusing {location}")
        if changed := base_model_package_changes(location):
            log(f"note: the cached base model was built with other packages ({', '.join(changed)}); built "
                f"now it would have other weights, and the sweep other figures: a store without it rebuilds it")
        return location
    log(f"base model: building the tiny model and pretraining it on the task family -> {location}")
    threads = int(cfg.cluster.num_cpus or 2)
    if not io.is_uri(location):
        build_base_model_reproducibly(location, stage, task, prompt, threads=threads, log=log)
        return location
    with tempfile.TemporaryDirectory(prefix="premem-base-") as tmp:  # built here, then one upload
        build_base_model_reproducibly(Path(tmp) / "model", stage, task, prompt, threads=threads, log=log)
        io.upload_dir(Path(tmp) / "model", location)
    return location


def base_model_package_changes(location: str) -> list[str]:
    """The packages whose versions differ between the cached base model's build and this environment (none known
    for a model built before its build file named them)."""
    from workers.base_model import BUILD_FILE
    from workers.models import package_changes, package_versions

    build_file = io.join(location, BUILD_FILE)
    built_with = json.loads(io.read_text(build_file)).get("packages") if io.is_file(build_file) else None
    return package_changes(built_with, package_versions()) if built_with else []


def expected_checkpoints(specs: list[TrialSpec]) -> int:
    from orchestrator.cost import trial_steps

    return sum(trial_steps(spec)[1] for spec in specs)


def log_task_datasets(tracker, specs: list[TrialSpec], children: dict[str, str], parent: str) -> None:
    """Each trial's train and test questions as its MLflow run's dataset inputs (built once per task), and
    the first trial's on the sweep's parent run."""
    import pandas as pd

    from workers.tasks import load_task, task_args

    built: dict[str, dict] = {}
    for spec in specs:
        task = spec.config.task
        key = json.dumps(task_args(task), sort_keys=True)
        if key not in built:
            splits = load_task(**task_args(task))
            generated = {"generator": f"workers.tasks.{task.name}", **{k: getattr(task, k) for k in
                         ("seed", "n_train", "n_test", "min_steps", "max_steps", "max_number", "train_fraction")},
                         **({"added_path": task.added_path} if task.added_path else {})}
            built[key] = {
                split: (f"{task.name}-{split}", pd.DataFrame([vars(e) for e in examples]),
                        location if task.name not in generated_tasks() and location else generated)
                for split, examples, location in (("train", splits.train, task.path),
                                                  ("test", splits.test, task.test_path))}
        tracker.log_datasets(children[spec.run_id], built[key])
        if spec is specs[0]:
            tracker.log_datasets(parent, built[key])


def trial_params(spec: TrialSpec) -> dict:
    params = {k: spec.select(k) for k in KEY_PARAMS}
    params.update(spec.grid_values)
    return {k.split(".")[-1] if k in KEY_PARAMS else k: v for k, v in params.items()}



# ------------------------------------------------------------------------------------ launch and run
def base_models(specs: list[TrialSpec]) -> dict[str, str]:
    """Each trial's starting model (built once per distinct model: a sweep may vary the model group)."""
    from workers.base_model import base_model_key

    built: dict[str, str] = {}
    by_trial = {}
    for spec in specs:
        key = json.dumps(base_model_key(spec.config.model, spec.config.task), sort_keys=True)
        if key not in built:
            built[key] = ensure_base_model(OmegaConf.structured(spec.config))
        by_trial[spec.run_id] = built[key]
    return by_trial


def cut_answers_note(specs: list[TrialSpec], models: dict[str, str], max_new_tokens: int) -> str | None:
    """A line when reference solutions of the sweep's tasks are longer than the sampler may write: a sample that
    long is cut off before its final answer and graded wrong, which caps accuracy by solution length."""
    from workers.models import load_tokenizer
    from workers.tasks import PromptFormat, load_task, task_args

    lines, seen = [], set()
    for spec in specs:
        task, model = spec.config.task, models[spec.run_id]
        key = (task.name, task.seed, task.n_train, task.n_test, task.path, task.test_path, model)
        if key in seen or io.is_uri(model):
            continue
        seen.add(key)
        try:
            tokenizer = load_tokenizer(model)
            splits = load_task(**task_args(replace(task, train_fraction=1.0)))
        except (OSError, ValueError):  # a hub model or files not readable here: the trial itself will say so
            continue
        fmt = PromptFormat(task.question_suffix, task.stop)
        lengths = [len(tokenizer(fmt.target(e.solution))["input_ids"]) for e in splits.train + splits.test]
        longer = sum(n > max_new_tokens for n in lengths)
        if longer:
            lines.append(f"{longer / len(lengths):.0%} of task {task.name}'s reference solutions are longer than "
                         f"sampler.max_new_tokens={max_new_tokens} tokens (the longest {max(lengths)}): samples that "
                         f"long are cut before their answer and graded wrong; sampler.max_new_tokens="
                         f"{-(-max(lengths) * 9 // 8)} covers them")
    return "; ".join(lines) or None


def launch(cfg: DictConfig, sweep_id: str, specs: list[TrialSpec]) -> int:
    """Write the sweep's config and plan, build the base model(s), open the MLflow runs and execute."""
    from orchestrator.tracking import Tracker, end_abandoned_runs

    paths = sweep_paths(cfg.store.root, sweep_id)
    config_yaml = write_text_atomic(paths.file("config.yaml"), to_yaml(cfg))
    plan_json = write_text_atomic(paths.file("plan.json"), json.dumps([asdict(s) for s in specs], indent=1))
    print(f"sweep {sweep_id}: {len(specs)} trials -> {paths.sweep}")

    models = base_models(specs)
    if note := cut_answers_note(specs, models, cfg.sampler.max_new_tokens):
        print(f"note: {note}")
    tracker = Tracker(tracking_uri(cfg), cfg.tracking.experiment, paths.mlflow_artifacts())
    end_abandoned_runs(tracker, cfg.tracking.abandoned_after_s)
    parent = tracker.start_sweep(sweep_id, cfg.sweep.name, config_yaml, plan_json)
    children = {s.run_id: tracker.start_trial(parent, s.run_id, s.label, trial_params(s)) for s in specs}
    log_task_datasets(tracker, specs, children, parent)
    return execute(cfg, paths, specs, models, tracker, parent, children, placed=True)


def execute(cfg: DictConfig, paths, specs: list[TrialSpec], base_model: str | dict[str, str], tracker, parent: str,
            children: dict[str, str], resumed=None, pool=None, placed: bool = False) -> int:
    """Train, evaluate and fit a planned sweep (or the rest of an interrupted one); the exit code. A running
    sampling `pool` is reused (curation rounds), else one is started.

    The sweep's story, top to bottom: Ray up and the cluster checked, the sampling pool started, the trials
    started on Tune (each checkpoint goes to the pool as it is written: schedule.RouteCheckpoints), every
    event they report handled as it comes (Listener.record: the one place), the robustness pass, the fit."""
    from orchestrator import schedule
    from orchestrator.cost import trial_steps
    from orchestrator.finish import finish_sweep
    from orchestrator.jobs import jobs_for
    from orchestrator.retention import Retention
    from orchestrator.tracking import Heartbeat, Outbox, quiet_client_retries
    from store.names import robustness_set
    from workers.deepspeed_ops import prepare_deepspeed_ops

    quiet_client_retries()
    outbox = Outbox(tracker)  # MLflow writes from here on: an outage delays them, never the sweep
    heartbeat = Heartbeat(outbox, [parent])  # runs of a driver that dies without ending them get ended later
    retention = Retention(cfg.store.keep, paths, {s.run_id: trial_steps(s)[0] * s.config.train.epochs
                                                  for s in specs})
    listener = Listener(outbox, children, paths, retention, cfg.sampler.variant)
    robustness_not_evaluated = 0
    try:
        # Ray up (its logs to the sweep's), the cluster checked (resume and curate come without main's check)
        schedule.connect_and_place(cfg, specs, paths.logs, check=not placed)
        prepare_deepspeed_ops()
        pool = pool or schedule.start_pool(cfg.sampler)
        trials = schedule.Trials(specs, paths, base_model, cfg.sweep.max_concurrent_trials, pool,
                                 expected_checkpoints(specs), resumed).start()
        for event in trials.events():
            listener.record(event)
        progress = trials.progress
        for run_id in progress.done:  # a trial that ended as the events stopped; repeating a deletion is a no-op
            retention.trial_finished(run_id)
        print(schedule.record_placement(pool, paths))
        timings = paths.file("analysis", "timings.json")  # a rerun adds the trials it ran to the earlier ones'
        earlier = json.loads(io.read_text(timings)) if io.is_file(timings) else {}
        write_text_atomic(timings, json.dumps({**earlier, **progress.timings}, indent=1))
        if cfg.sweep.robustness_variant:  # each trial's last checkpoint again, under the perturbation
            perturbed = {**OmegaConf.to_container(cfg.sampler), "answer_prefix": cfg.sweep.robustness_prefix,
                         "variant": robustness_set(cfg.sweep.robustness_variant, cfg.sampler.variant)}
            jobs = jobs_for(paths, specs, perturbed, last_only=True)
            print(f"robustness: {len(jobs)} last checkpoints with the answer starting {cfg.sweep.robustness_prefix!r}")
            robustness_not_evaluated = evaluate(pool, jobs, listener)
        summary = finish_sweep(cfg, paths, specs, outbox, parent, children, progress.failed)
    except BaseException as exc:  # Ctrl-C or a crash: no MLflow run is left RUNNING
        heartbeat.stop()
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for run in [*children.values(), parent]:
            outbox.end_run(run, status)
        outbox.close(timeout_s=30)
        if isinstance(exc, KeyboardInterrupt):
            print(f"\ninterrupted: continue with  python -m orchestrator.resume {paths.sweep}", file=sys.stderr)
        raise
    heartbeat.stop()
    unwritten = outbox.close(timeout_s=cfg.tracking.outage_wait_s)
    print(summary.text(tracker.uri, paths, progress, tracker.ui_urls(parent)))
    if unwritten:
        print(f"MLflow: {unwritten} write(s) not made, the server was unreachable for tracking.outage_wait_s="
              f"{cfg.tracking.outage_wait_s:g}s; once it is back, `python -m orchestrator.resume {paths.sweep}` "
              "writes them (the records are complete)")
    return 1 if unwritten or robustness_not_evaluated else exit_code(progress, summary)


@dataclass
class Listener:
    """What the driver does with each event of a running sweep (schedule.Trials.events): the one place they
    are handled. An evaluated checkpoint is logged (and, once its records set's records are written, its weights
    may go under store.keep); a failed one is reported; train losses are logged; a finished trial's weights are
    thinned under store.keep."""

    outbox: object  # orchestrator.tracking.Outbox
    children: dict  # run_id -> its MLflow run
    paths: SweepPaths
    retention: object = None  # orchestrator.retention.Retention; None: nothing is evicted (reeval)
    records_set: str = "original"

    def record(self, event) -> None:
        from orchestrator import schedule
        from orchestrator.finish import log_failure, log_result

        match event:
            case schedule.Evaluated(result):
                log_result(self.outbox, self.children[result.run_id], result)
                if self.retention is not None and result.variant == self.records_set:
                    self.retention.evaluated(result.run_id, result.step, result.metrics["test_acc"])
            case schedule.EvaluationFailed(job, line, details):
                log_failure(self.outbox, self.children[job["run_id"]], self.paths, job, line, details)
            case schedule.TrainLosses(run_id, losses):  # from the trial's own report, not its evaluation
                self.outbox.log_series(self.children[run_id], "train_loss", losses)
            case schedule.TrialFinished(run_id):
                if self.retention is not None:
                    self.retention.trial_finished(run_id)


def exit_code(progress, summary) -> int:
    """0 when every trial trained and every checkpoint was evaluated; else 1 (the summary said which)."""
    all_evaluated = progress.evaluated >= progress.trained and progress.monitor_error is None
    return 0 if not progress.failed and not progress.eval_failed and all_evaluated and summary.ok else 1



# --------------------------------------------------------------------------------- a stored sweep
def load_stored_config(paths: SweepPaths, overrides: list[str], allowed: tuple[str, ...]):
    """The sweep's stored config with overrides (only of the `allowed` fields) applied and validated."""
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+")
        if "=" not in item or not key.startswith(allowed):
            raise ConfigError(f"{key}: only {', '.join(a.rstrip('.') + ('*' if a.endswith('.') else '') for a in allowed)}"
                              " can change here (the sweep is already planned)")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(io.read_text(paths.file("config.yaml"))),
                              OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{exc.full_key}: {str(exc.msg).splitlines()[0]}") from None
    take_credentials(cfg)
    validate(cfg)
    return cfg


def open_sweep_from_argv(argv: list[str], load_config, usage: str):
    """(sweep paths, config) from `SWEEP_DIR [overrides]`, the tracking server checked; or None after printing
    the usage or one error line (the caller exits 2)."""
    from orchestrator.tracking import TrackingError, check_tracking

    if not argv or argv[0].startswith("-"):
        print(usage)
        return None
    try:
        paths = open_sweep(argv[0])
        cfg = load_config(paths, argv[1:])
        check_tracking(tracking_uri(cfg))
    except (ConfigError, FileNotFoundError, io.StorageError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return paths, cfg


def stored_specs(paths: SweepPaths) -> list[TrialSpec]:
    """The trial specs a sweep was planned with (its plan.json)."""
    return [TrialSpec.from_dict(d) for d in json.loads(io.read_text(paths.file("plan.json")))]


def evaluate(pool, jobs: list, listener: Listener) -> int:
    """Send `jobs` to the sampling pool and hand each event to `listener` as it comes; how many did not come back
    evaluated (failed, or never came back)."""
    from orchestrator import schedule

    progress = schedule.Progress(len({j.run_id for j in jobs}), len(jobs), trained=len(jobs))
    for event in schedule.evaluation_events(pool, jobs, progress):
        listener.record(event)
    missing = len(jobs) - progress.evaluated - progress.eval_failed
    if missing:
        print(f"NOT EVALUATED: {missing} of {len(jobs)} checkpoints ({progress.monitor_error or 'no result'}); "
              "run the same command again to evaluate them")
    return missing + progress.eval_failed
