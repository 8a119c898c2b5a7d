"""python -m orchestrator [hydra overrides]: run a sweep from conf/ to records, MLflow and the premem fit.

Validates everything first (one line naming the field, exit 2, nothing written), builds or reuses the
base model, runs the trials on Ray with the sampling pool streaming every checkpoint, then fits pre-
memorization train accuracy against test accuracy and prints where to look.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from analysis import storage
from orchestrator.config import ConfigError, register_configs, take_credentials, to_yaml, tracking_uri, validate
from orchestrator.placement import PlacementError
from orchestrator.plan import TrialSpec, expand_grid
from orchestrator.store import base_model_dir, sweep_paths, write_text_atomic

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
HELP = f"""usage: python -m orchestrator [-m] [--plan | --cfg] [hydra overrides ...]

{__doc__.strip()}

Config groups (conf/): {', '.join(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()))}
  e.g.  python -m orchestrator -m sweep=small train.lr=1e-3,3e-3 'seed=range(2)'   (one sweep of 4 trials)
        python -m orchestrator cluster=ray train=gpu sampler=vllm_gpu sweep=gpu model=hf model.path=/models/llama3-8b
  -m, --multirun  Hydra's sweep syntax (a=1,2, range(), choice(), glob(), config groups): optional, any sweep
                  override or a preset's hydra.sweeper.params makes the run one premem sweep
  --plan  print the trials and their checkpoints, start and write nothing
  --cfg   print the composed config and exit
Re-evaluate a finished sweep: python -m orchestrator.reeval SWEEP_DIR sampler.variant=NAME [sampler.* ...]
Finish an interrupted sweep:  python -m orchestrator.resume SWEEP_DIR
Curation rounds from a sweep: python -m orchestrator.curate SWEEP_DIR [curation=NAME] [curation.* ...]"""
KEY_PARAMS = ("train.lr", "train.epochs", "task.train_fraction", "seed", "task.name", "model.name",
              "train.global_batch_size", "train.zero_stage", "train.precision", "sampler.k", "sampler.temperature")


def compose_config(overrides: list[str], config_dir: Path = CONF_DIR, config_name: str = "config") -> DictConfig:
    """Compose conf/ with command-line overrides through Hydra; schema errors become ConfigError."""
    return compose_with_sweeper_params(overrides, config_dir, config_name)[0]


def compose_with_sweeper_params(overrides: list[str], config_dir: Path = CONF_DIR,
                                config_name: str = "config") -> tuple[DictConfig, dict]:
    """The composed config (Hydra's node dropped) and its `hydra.sweeper.params`: a grid that a preset declares in
    Hydra's spelling, which makes the run a Hydra sweep."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from orchestrator.multirun import without_hydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        params = dict(OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {})
        cfg = without_hydra(cfg)  # resolves: ${oc.env:...} of cluster groups, an unset one fails here
        return cfg, params
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_config_message(exc)) from None


def _config_message(exc: BaseException) -> str:
    """One line from Hydra/OmegaConf's nested exceptions: the field and what is wrong with it."""
    from omegaconf.errors import OmegaConfBaseException

    seen = exc
    while seen is not None:
        if isinstance(seen, OmegaConfBaseException) and getattr(seen, "full_key", None):
            msg = (getattr(seen, "msg", None) or str(seen)).splitlines()[0]
            return f"{seen.full_key}: {msg}"
        seen = seen.__cause__ or seen.__context__
    return " ".join(str(exc).split())


def new_sweep_id(name: str) -> str:
    """`<name>-<date>-<time>-<4 hex>`: two sweeps of one name started in the same second (two researchers on
    one cluster and store) still get directories, Tune experiments and MLflow runs of their own."""
    import secrets

    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def plan_sweep(overrides: list[str], cfg: DictConfig | None = None) -> tuple[DictConfig, str, list[TrialSpec]]:
    """Config, sweep id and trial specs (of `cfg` when already composed from the overrides); raises ConfigError
    before anything is written."""
    cfg = cfg if cfg is not None else compose_config(overrides)
    return checked_plan(cfg, [], lambda sweep_id: expand_grid(cfg, sweep_id))


def plan_jobs(base: DictConfig, jobs: list[tuple[dict, DictConfig]]) -> tuple[DictConfig, str, list[TrialSpec]]:
    """plan_sweep for a Hydra sweep: the base config (no sweep override applied) and each job's composed config."""
    from orchestrator.plan import expand_jobs

    return checked_plan(base, [cfg for _, cfg in jobs], lambda sweep_id: expand_jobs(jobs, sweep_id))


def checked_plan(base: DictConfig, job_configs: list[DictConfig], expand) -> tuple[DictConfig, str, list[TrialSpec]]:
    """The checks every plan passes before anything is written: credentials out of every config, the base
    config valid, each trial valid (expand validates them), every dataset file read, every trial's data
    filling at least one global batch."""
    for cfg in [base, *job_configs]:
        take_credentials(cfg)
    validate(base)
    sweep_id = new_sweep_id(base.sweep.name)
    specs = expand(sweep_id)
    check_task_files(specs)
    expected_checkpoints(specs)  # a trial whose data do not fill one global batch is refused here
    return base, sweep_id, specs


def check_task_files(specs: list[TrialSpec]) -> None:
    """Read every dataset file the trials name, now: a bad row is one ConfigError naming the field, file and
    line before anything is written (not a trial failing minutes later)."""
    from workers.tasks.jsonl import DatasetFileError, read_added, read_jsonl

    seen = set()
    for spec in specs:
        task = spec.config["task"]
        for field, split, limit in (("path", "train", task["n_train"]), ("test_path", "test", task["n_test"])):
            if task["name"] == "synthetic" or not task[field] or (task["name"], task[field], limit) in seen:
                continue
            seen.add((task["name"], task[field], limit))
            try:
                read_jsonl(task["name"], task[field], split, limit)
            except DatasetFileError as exc:
                raise ConfigError(f"task.{field}: {exc}") from None
        if task.get("added_path") and task["added_path"] not in seen:
            seen.add(task["added_path"])
            try:
                read_added(task["added_path"])
            except DatasetFileError as exc:
                raise ConfigError(f"task.added_path: {exc}") from None


def connect_and_place(cfg: DictConfig, specs: list[TrialSpec]):
    """Start or join Ray and check that the cluster holds the sampling pool and each trial (PlacementError
    naming the field and what the cluster has: Ray itself would wait for good); None when not checked."""
    from orchestrator import schedule

    schedule.init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.num_gpus)
    if not cfg.cluster.check_placement:
        return None
    planned = schedule.check_placement(specs, cfg.sampler)
    if planned.note:
        print(f"note: {planned.note}")
    return planned


def ensure_base_model(cfg: DictConfig, log=print) -> str:
    """The model every trial starts from: model.path, or the cached tiny base model (built once)."""
    if cfg.model.path:
        return cfg.model.path
    from workers.train import BaseStage, build_base_model

    stage = BaseStage(**OmegaConf.to_container(cfg.model.base_stage))
    task = {k: cfg.task[k] for k in ("min_steps", "max_steps", "max_number")}
    prompt = {"question_suffix": cfg.task.question_suffix, "stop": cfg.task.stop}
    location = base_model_dir(cfg.store.root, {"stage": asdict(stage), "task": task, "prompt": prompt, "v": 1})
    if storage.is_file(storage.join(location, "config.json")):
        log(f"base model: reusing {location}")
        return location
    log(f"base model: building the tiny model and pretraining it on the task family -> {location}")
    threads = int(cfg.cluster.num_cpus or 2)
    if not storage.is_uri(location):
        build_base_model(location, stage, task, prompt, threads=threads, log=log)
        return location
    with tempfile.TemporaryDirectory(prefix="premem-base-") as tmp:  # built here, then one upload
        build_base_model(Path(tmp) / "model", stage, task, prompt, threads=threads, log=log)
        storage.upload_dir(Path(tmp) / "model", location)
    return location


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
        task = spec.config["task"]
        key = json.dumps(task_args(task), sort_keys=True)
        if key not in built:
            splits = load_task(**task_args(task))
            generated = {"generator": f"workers.tasks.{task['name']}", **{k: task[k] for k in
                         ("seed", "n_train", "n_test", "min_steps", "max_steps", "max_number", "train_fraction")},
                         **({"added_path": task["added_path"]} if task.get("added_path") else {})}
            built[key] = {
                split: (f"{task['name']}-{split}", pd.DataFrame([vars(e) for e in examples]),
                        task[field] if task["name"] != "synthetic" and task[field] else generated)
                for split, examples, field in (("train", splits.train, "path"), ("test", splits.test, "test_path"))}
        tracker.log_datasets(children[spec.run_id], built[key])
        if spec is specs[0]:
            tracker.log_datasets(parent, built[key])


def trial_params(spec: TrialSpec) -> dict:
    params = {k: OmegaConf.select(OmegaConf.create(spec.config), k) for k in KEY_PARAMS}
    params.update(spec.grid_values)
    return {k.split(".")[-1] if k in KEY_PARAMS else k: v for k, v in params.items()}


def main(argv: list[str] | None = None) -> int:
    from orchestrator import multirun

    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(HELP)
        return 0
    mode = "cfg" if "--cfg" in argv else "plan" if "--plan" in argv else "run"
    overrides = [a for a in argv if a not in ("--cfg", "--plan")]
    try:
        swept = any(a in multirun.SWEEP_FLAGS for a in overrides) or multirun.has_sweep(overrides)
        cfg, params = (None, {}) if swept else compose_with_sweeper_params(overrides)
        if swept or params:
            cfg, sweep_id, specs = multirun.plan(overrides)  # Hydra's sweep syntax: still one sweep
        else:
            cfg, sweep_id, specs = plan_sweep(overrides, cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_plan(cfg, sweep_id, specs, mode)


def run_plan(cfg: DictConfig, sweep_id: str, specs: list[TrialSpec], mode: str = "run") -> int:
    """Print the config (`--cfg`) or the plan (`--plan`), or check that the sweep can run and run it."""
    from orchestrator.tracking import TrackingError, check_tracking

    if mode == "cfg":
        print(to_yaml(cfg))
        return 0
    if mode == "plan":
        from orchestrator.cost import plan_text

        print(plan_text(specs))
        return 0
    try:  # all checked before anything is written
        storage.check_writable(storage.normalize(cfg.store.root))
        check_tracking(tracking_uri(cfg))
        connect_and_place(cfg, specs)
    except (ConfigError, storage.StorageError, TrackingError, PlacementError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return launch(cfg, sweep_id, specs)


def base_models(specs: list[TrialSpec]) -> dict[str, str]:
    """Each trial's starting model (built once per distinct model: a sweep may vary the model group)."""
    built: dict[str, str] = {}
    by_trial = {}
    for spec in specs:
        cfg = OmegaConf.create(spec.config)
        key = json.dumps([spec.config["model"], {k: spec.config["task"][k] for k in ("min_steps", "max_steps",
                          "max_number", "question_suffix", "stop")}], sort_keys=True)
        if key not in built:
            built[key] = ensure_base_model(cfg)
        by_trial[spec.run_id] = built[key]
    return by_trial


def launch(cfg: DictConfig, sweep_id: str, specs: list[TrialSpec]) -> int:
    """Write the sweep's config and plan, build the base model(s), open the MLflow runs and execute."""
    from orchestrator.tracking import Tracker, end_abandoned_runs

    paths = sweep_paths(cfg.store.root, sweep_id)
    config_yaml = write_text_atomic(paths.file("config.yaml"), to_yaml(cfg))
    plan_json = write_text_atomic(paths.file("plan.json"), json.dumps([asdict(s) for s in specs], indent=1))
    print(f"sweep {sweep_id}: {len(specs)} trials -> {paths.sweep}")

    models = base_models(specs)
    tracker = Tracker(tracking_uri(cfg), cfg.tracking.experiment, paths.mlflow_artifacts())
    end_abandoned_runs(tracker, cfg.tracking.abandoned_after_s)
    parent = tracker.start_sweep(sweep_id, cfg.sweep.name, config_yaml, plan_json)
    children = {s.run_id: tracker.start_trial(parent, s.run_id, s.label, trial_params(s)) for s in specs}
    log_task_datasets(tracker, specs, children, parent)
    return execute(cfg, paths, specs, models, tracker, parent, children, placed=True)


def execute(cfg: DictConfig, paths, specs: list[TrialSpec], base_model: str | dict[str, str], tracker, parent: str,
            children: dict[str, str], resumed=None, pool=None, placed: bool = False) -> int:
    """Train, evaluate and fit a planned sweep (or the rest of an interrupted one); the exit code. A running
    sampling `pool` is reused (curation rounds), else one is started."""
    from orchestrator import schedule
    from orchestrator.finish import finish_sweep, log_failure, log_result
    from orchestrator.tracking import Heartbeat, Outbox, quiet_client_retries
    from workers.train import prepare_deepspeed_ops

    quiet_client_retries()
    outbox = Outbox(tracker)  # MLflow writes from here on: an outage delays them, never the sweep
    heartbeat = Heartbeat(outbox, [parent])  # runs of a driver that dies without ending them get ended later

    from analysis.records import ORIGINAL
    from orchestrator.cost import trial_steps
    from orchestrator.retention import Retention

    retention = Retention(cfg.store.keep, paths, {s.run_id: trial_steps(s)[0] * s.config["train"]["epochs"]
                                                  for s in specs})

    def on_result(result) -> None:
        log_result(outbox, children[result.run_id], result)
        if result.variant == ORIGINAL:  # its records and completions are written: the weights may go
            retention.evaluated(result.run_id, result.step, result.metrics["test_acc"])

    def on_failure(job: dict, line: str, details: str) -> None:
        log_failure(outbox, children[job["run_id"]], paths, job, line, details)

    robustness_not_evaluated = 0
    try:
        schedule.init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.num_gpus, paths.logs)
        if not placed:  # resume and curate come here without main's check
            connect_and_place(cfg, specs)
        prepare_deepspeed_ops()
        pool = pool or schedule.start_pool(cfg.sampler)
        progress = schedule.run_sweep(specs, paths, base_model, cfg.sweep.max_concurrent_trials, pool,
                                      on_result, on_failure, expected_checkpoints(specs), resumed=resumed,
                                      on_trial_done=retention.trial_finished)
        for run_id in progress.done:  # a trial that ended as the monitor stopped; repeating a deletion is a no-op
            retention.trial_finished(run_id)
        print(schedule.record_placement(pool, paths))
        write_text_atomic(paths.file("analysis", "timings.json"), json.dumps(progress.timings, indent=1))
        if cfg.sweep.robustness_variant:  # each trial's last checkpoint again, under the perturbation
            from orchestrator.reeval import evaluate, variant_jobs

            perturbed = {**OmegaConf.to_container(cfg.sampler), "variant": cfg.sweep.robustness_variant,
                         "answer_prefix": cfg.sweep.robustness_prefix}
            jobs = variant_jobs(paths, specs, perturbed, last_only=True)
            print(f"robustness: {len(jobs)} last checkpoints with the answer starting {cfg.sweep.robustness_prefix!r}")
            robustness_not_evaluated = evaluate(pool, jobs, on_result, on_failure)
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


def exit_code(progress, summary) -> int:
    """0 when every trial trained and every checkpoint was evaluated; else 1 (the summary said which)."""
    all_evaluated = progress.evaluated >= progress.trained and progress.monitor_error is None
    return 0 if not progress.failed and not progress.eval_failed and all_evaluated and summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
