"""python -m orchestrator.reeval SWEEP_DIR [sampler.* overrides]: re-run the sampling pool over a finished
sweep's stored checkpoints — new sampler settings or a prompt variant — without retraining.

Records are written with `sampler.variant` into the same store and logged to the same MLflow runs
(metrics get a `_<variant>` suffix). Checkpoints that already have records for the variant are skipped, so
an interrupted re-evaluation resumes. Example:
    python -m orchestrator.reeval runs/sweeps/default-20261123-120000 sampler.variant=first \\
        sampler.answer_prefix=First
"""
from __future__ import annotations

import sys

from omegaconf import OmegaConf

from orchestrator.config import ConfigError, tracking_uri
from orchestrator.jobs import evicted_line, jobs_for
from orchestrator.sweep import Listener, evaluate, load_stored_config, open_sweep_from_argv, stored_specs
from store.layout import SweepPaths

ALLOWED = ("sampler.", "sweep.nll_threshold", "tracking.", "cluster.")  # what a re-evaluation may change


def load_reeval_config(paths: SweepPaths, overrides: list[str]):
    """The sweep's stored config with sampler/tracking/cluster overrides applied and validated."""
    cfg = load_stored_config(paths, overrides, ALLOWED)
    if cfg.sampler.variant == "original":
        raise ConfigError("sampler.variant='original': name the new records' variant (e.g. sampler.variant=first)")
    return cfg


def main(argv: list[str] | None = None) -> int:
    opened = open_sweep_from_argv(sys.argv[1:] if argv is None else argv, load_reeval_config, __doc__)
    if opened is None:
        return 2
    paths, cfg = opened
    from orchestrator import schedule
    from orchestrator.finish import robustness_table
    from orchestrator.tracking import Outbox, Tracker, end_abandoned_runs, quiet_client_retries

    specs = stored_specs(paths)
    variant = cfg.sampler.variant
    tracker = Tracker(tracking_uri(cfg), cfg.tracking.experiment, paths.mlflow_artifacts())
    end_abandoned_runs(tracker, cfg.tracking.abandoned_after_s)
    parent, children = tracker.find_sweep(paths.sweep_id)
    done_marker = f"test_acc_{variant}"  # logged last for an evaluated checkpoint (Tracker.log_checkpoint)
    for child in children.values():
        tracker.load_logged(child, (done_marker,))
    jobs = jobs_for(paths, specs, OmegaConf.to_container(cfg.sampler),
                        logged=lambda run_id, step: tracker.has_step(children[run_id], done_marker, step))
    gone = evicted_line(paths, specs)
    if gone:
        print(gone)
    if not jobs and gone:
        print(f"error: no checkpoint of {paths.sweep_id} left to re-evaluate", file=sys.stderr)
        return 2
    print(f"re-evaluating {len(jobs)} checkpoints of {paths.sweep_id} as variant '{variant}'")
    quiet_client_retries()
    outbox = Outbox(tracker)  # as in a sweep: an MLflow outage delays the writes, never the evaluation
    schedule.init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.num_gpus, paths.logs)
    pool = schedule.start_pool(cfg.sampler)
    not_evaluated = evaluate(pool, jobs, Listener(outbox, children, paths))
    table = robustness_table(paths, specs, float(cfg.sweep.nll_threshold), variant, outbox, parent)
    print(f"accuracy under variant '{variant}' by premem bin:\n{table.to_string(index=False)}")
    print(f"records: {paths.records}")
    unwritten = outbox.close(timeout_s=cfg.tracking.outage_wait_s)
    if unwritten:
        print(f"MLflow: {unwritten} write(s) not made, the server was unreachable for tracking.outage_wait_s="
              f"{cfg.tracking.outage_wait_s:g}s; the records are complete: once it is back, the same command "
              "evaluates the checkpoints whose values MLflow lacks again and writes them")
    return 1 if not_evaluated or unwritten else 0


if __name__ == "__main__":
    sys.exit(main())
