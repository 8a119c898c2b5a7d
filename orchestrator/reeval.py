"""python -m orchestrator.reeval SWEEP_DIR [sampler.* overrides]: re-run the sampling pool over a finished
sweep's stored checkpoints — new sampler settings or a prompt variant — without retraining.

Records are written with `sampler.variant` into the same store and logged to the same MLflow runs
(metrics get a `_<variant>` suffix). Checkpoints that already have records for the variant are skipped, so
an interrupted re-evaluation resumes. Example:
    python -m orchestrator.reeval runs/sweeps/default-20261123-120000 sampler.variant=first \\
        sampler.answer_prefix=First
"""
from __future__ import annotations

import json
import sys
import threading

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from analysis import storage
from orchestrator.config import Config, ConfigError, take_credentials, tracking_uri, validate
from orchestrator.plan import TrialSpec
from orchestrator.retention import EVICTED, evicted
from orchestrator.store import SweepPaths, open_sweep, write_text_atomic

ALLOWED = ("sampler.", "sweep.nll_threshold", "tracking.", "cluster.")


def load_stored_config(paths: SweepPaths, overrides: list[str], allowed: tuple[str, ...] = ALLOWED):
    """The sweep's stored config with overrides (only of the `allowed` fields) applied and validated."""
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+")
        if "=" not in item or not key.startswith(allowed):
            raise ConfigError(f"{key}: only {', '.join(a.rstrip('.') + ('*' if a.endswith('.') else '') for a in allowed)}"
                              " can change here (the sweep is already planned)")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(storage.read_text(paths.file("config.yaml"))),
                              OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{exc.full_key}: {str(exc.msg).splitlines()[0]}") from None
    take_credentials(cfg)
    validate(cfg)
    return cfg


def load_reeval_config(paths: SweepPaths, overrides: list[str]):
    """The sweep's stored config with sampler/tracking/cluster overrides applied and validated."""
    cfg = load_stored_config(paths, overrides)
    if cfg.sampler.variant == "original":
        raise ConfigError("sampler.variant='original': name the new records' variant (e.g. sampler.variant=first)")
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
    except (ConfigError, FileNotFoundError, storage.StorageError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return paths, cfg


def main(argv: list[str] | None = None) -> int:
    opened = open_sweep_from_argv(sys.argv[1:] if argv is None else argv, load_reeval_config, __doc__)
    if opened is None:
        return 2
    paths, cfg = opened
    from orchestrator import schedule
    from orchestrator.finish import log_failure, log_result
    from orchestrator.tracking import Tracker, end_abandoned_runs

    specs = [TrialSpec(**d) for d in json.loads(storage.read_text(paths.file("plan.json")))]
    variant = cfg.sampler.variant
    jobs = variant_jobs(paths, specs, OmegaConf.to_container(cfg.sampler))
    gone = evicted_line(paths, specs)
    if gone:
        print(gone)
    if not jobs and gone:
        print(f"error: no checkpoint of {paths.sweep_id} left to re-evaluate", file=sys.stderr)
        return 2
    print(f"re-evaluating {len(jobs)} checkpoints of {paths.sweep_id} as variant '{variant}'")

    uri = tracking_uri(cfg)
    tracker = Tracker(uri, cfg.tracking.experiment, paths.mlflow_artifacts())
    end_abandoned_runs(tracker, cfg.tracking.abandoned_after_s)
    parent, children = tracker.find_sweep(paths.sweep_id)
    schedule.init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.num_gpus, paths.logs)
    pool = schedule.start_pool(cfg.sampler)
    not_evaluated = evaluate(pool, jobs, lambda r: log_result(tracker, children[r.run_id], r),
                             lambda job, line, details: log_failure(tracker, children[job["run_id"]], paths, job,
                                                                    line, details))
    table = robustness_table(paths, float(cfg.sweep.nll_threshold), variant, tracker, parent)
    print(f"accuracy under variant '{variant}' by premem bin:\n{table.to_string(index=False)}")
    print(f"records: {paths.records}")
    return 1 if not_evaluated else 0


def variant_jobs(paths: SweepPaths, specs: list[TrialSpec], sampler: dict, last_only: bool = False) -> list:
    """Evaluation jobs of the trials' checkpoints (or each trial's last) with these sampler settings (whose
    `variant` names the records); checkpoints that already have those records are left out."""
    from orchestrator import schedule

    jobs = []
    for spec in specs:
        trial_cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(spec.config), {"sampler": sampler}))
        _, template = schedule.trial_jobs(TrialSpec(spec.run_id, spec.index, spec.grid_values, trial_cfg), paths, "")
        checkpoints = paths.trial_checkpoints(spec.run_id)
        for ckpt in checkpoints[-1:] if last_only else checkpoints:
            state = json.loads(storage.read_text(storage.join(ckpt, "trainer_state.json")))
            if storage.is_file(paths.records_file(spec.run_id, state["step"], sampler["variant"])):
                continue  # done by an earlier, interrupted pass
            if evicted(ckpt):
                continue  # its weights were deleted under store.keep; main says which
            jobs.append(template.job(state["step"], state["epoch"], ckpt, {}))
    return jobs


def evicted_line(paths: SweepPaths, specs: list[TrialSpec]) -> str | None:
    """One line naming the checkpoints whose weights store.keep deleted (they cannot be evaluated again)."""
    gone = [c for spec in specs for c in paths.trial_checkpoints(spec.run_id) if evicted(c)]
    if not gone:
        return None
    reason = json.loads(storage.read_text(storage.join(gone[0], EVICTED)))["reason"]
    names = [f"{storage.name(storage.parent(c))}/{storage.name(c)}" for c in gone]
    return (f"evicted: {len(gone)} checkpoint(s) have no weights any more ({reason}), so are not re-evaluated: "
            + ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else ""))


def evaluate(pool, jobs: list, on_result, on_failure) -> int:
    """Send `jobs` to the sampling pool and hand the results over as they come; how many did not come back
    evaluated (failed, or never came back)."""
    from orchestrator import schedule

    progress = schedule.Progress(len({j.run_id for j in jobs}), len(jobs), trained=len(jobs))
    for job in jobs:
        pool.submit.remote(job)
    stop = threading.Event()
    stop.set()
    schedule.monitor_pool(pool, progress, on_result, on_failure, stop)
    schedule.show(progress, final=True)
    missing = len(jobs) - progress.evaluated - progress.eval_failed
    if missing:
        print(f"NOT EVALUATED: {missing} of {len(jobs)} checkpoints ({progress.monitor_error or 'no result'}); "
              "run the same command again to evaluate them")
    return missing + progress.eval_failed


def robustness_table(paths: SweepPaths, tau: float, variant: str, tracker, parent: str):
    """Accuracy under the variant binned by premem (original records), saved and logged on the parent run."""
    from analysis.curate import robustness
    from analysis.premem import prepare
    from analysis.records import ORIGINAL, load_records

    files = paths.record_files(ORIGINAL) + paths.record_files(variant)
    table = robustness(prepare(load_records(files)), tau)
    out = write_text_atomic(paths.file("analysis", f"robustness_{variant}.json"),
                            json.dumps(table.to_dict(orient="records"), indent=1))
    tracker.log_artifacts(parent, [out], "analysis")
    return table


if __name__ == "__main__":
    sys.exit(main())
