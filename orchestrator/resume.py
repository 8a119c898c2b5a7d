"""python -m orchestrator.resume SWEEP_DIR [tracking.* cluster.* overrides]: finish a sweep whose driver died.

Finished trials are not run again; the others continue from their last checkpoint (Tune restores its
experiment from the store, and each trial's TorchTrainer resumes from Ray Train's checkpoint snapshot:
weights, optimizer, LR schedule, data position, RNG). Checkpoints trained but not evaluated (or evaluated but
not yet in MLflow) are evaluated. The sweep's MLflow parent and child runs are reused and end FINISHED; every
metric keeps one value per step. Running it on a finished sweep just redoes the fit. Example:
    python -m orchestrator.resume runs/sweeps/default-20261123-120000
"""
from __future__ import annotations

import json
import sys

from store import io
from orchestrator.config import tracking_uri
from orchestrator.plan import TrialSpec
from orchestrator.sweep import load_stored_config, open_sweep_from_argv, stored_specs
from store.layout import SweepPaths

ALLOWED = ("tracking.", "cluster.", "sweep.lease_")
DONE_MARKER = "test_acc"  # logged last for a checkpoint (Tracker.log_checkpoint)


def pending_evaluations(paths: SweepPaths, specs: list[TrialSpec], base_model: str | dict[str, str], tracker,
                        children: dict[str, str]):
    """What the interrupted (or continued) sweep has: registered checkpoints, and those whose evaluation into
    the command's records set is not in MLflow. A checkpoint store.keep evicted before this set was asked for
    is left out (the fit names it); one whose completions another set sampled the same way is re-graded."""
    from dataclasses import replace

    from orchestrator import schedule
    from orchestrator.jobs import trial_jobs
    from orchestrator.evaluations import regrade_sources
    from orchestrator.retention import evicted
    from orchestrator.tracking import variant_suffix

    pending, trained, evaluated, train_losses = [], 0, 0, {}
    sources_of: dict[str, list[str]] = {}  # records set -> the stored sets it is re-graded from
    for spec in specs:
        _, template = trial_jobs(spec, paths, base_model)
        done_marker = DONE_MARKER + variant_suffix(template.variant)
        if template.variant not in sources_of:
            sources_of[template.variant] = regrade_sources(paths, template.variant)
        sources = sources_of[template.variant]
        for checkpoint in paths.trial_checkpoints(spec.run_id):
            state = json.loads(io.read_text(io.join(checkpoint, "trainer_state.json")))
            step = int(state["step"])
            train_losses.setdefault(spec.run_id, []).extend(state["train_loss"])
            if tracker.has_step(children[spec.run_id], done_marker, step):
                trained += 1
                evaluated += 1
                continue
            job = template.job(step, float(state["epoch"]), checkpoint)
            source = next((s for s in sources if io.is_file(paths.completions_file(spec.run_id, step, s))
                           and io.is_file(paths.records_file(spec.run_id, step, s))), None)
            if source is not None:
                job = replace(job, regrade_records=paths.records_file(spec.run_id, step, source),
                              regrade_completions=paths.completions_file(spec.run_id, step, source))
            elif evicted(checkpoint):
                continue  # no weights to sample: not counted as trained for this set
            trained += 1
            pending.append(job)
    return schedule.Resumed(pending, train_losses, trained, evaluated, schedule.finished_trials(paths))


def main(argv: list[str] | None = None) -> int:
    opened = open_sweep_from_argv(sys.argv[1:] if argv is None else argv,
                                  lambda paths, overrides: load_stored_config(paths, overrides, ALLOWED), __doc__)
    if opened is None:
        return 2
    paths, cfg = opened
    from orchestrator.sweep import base_models
    from orchestrator.tracking import Tracker, end_abandoned_runs

    from orchestrator.lease import Lease, LeaseHeld

    specs = stored_specs(paths)
    with Lease(paths.sweep, cfg.sweep.lease_stale_s) as lease:
        try:
            lease.acquire(cfg.sweep.lease_wait_s)
        except LeaseHeld as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        tracker = Tracker(tracking_uri(cfg), cfg.tracking.experiment, paths.mlflow_artifacts())
        end_abandoned_runs(tracker, cfg.tracking.abandoned_after_s)  # this sweep's too: reopened below
        return resume_sweep(cfg, paths, specs, base_models(specs), tracker)


def resume_sweep(cfg, paths: SweepPaths, specs: list[TrialSpec], base_model: str | dict[str, str], tracker,
                 parent_id: str | None = None, pool=None) -> int:
    """Finish a planned sweep in its own MLflow runs (made now where the dead driver had not made them, nested
    under `parent_id` for a curation's round): finished trials stay finished, the others go on from their last
    checkpoints, unevaluated checkpoints are evaluated; the exit code."""
    from orchestrator.sweep import execute, trial_params
    from orchestrator.tracking import CHECKPOINT_METRICS, PARENT_METRICS, variant_suffix

    # new grid points get runs; points dropped from the command stay as they are
    parent, children = tracker.continue_sweep(paths.sweep_id, cfg.sweep.name, paths.file("config.yaml"),
                                              paths.file("plan.json"),
                                              {s.run_id: (s.label, trial_params(s)) for s in specs}, parent_id)
    for run in [parent, *children.values()]:
        tracker.reopen(run)
    suffix = variant_suffix(cfg.sampler.variant)  # this command's records set: its own metric names
    for child in children.values():
        tracker.load_logged(child, ("train_loss", *(f"{k}{suffix}" for k in ("premem_train_acc", "memorized_frac",
                                                                              *CHECKPOINT_METRICS))))
    tracker.load_logged(parent, tuple({*PARENT_METRICS, *(f"{k}{suffix}" for k in PARENT_METRICS)}))
    resumed = pending_evaluations(paths, specs, base_model, tracker, children)
    print(f"resuming {paths.sweep_id}: {len(resumed.finished_trials)} of {len(specs)} trials finished, "
          f"{resumed.trained} checkpoints trained, {len(resumed.pending)} of them to evaluate")
    return execute(cfg, paths, specs, base_model, tracker, parent, children, resumed=resumed, pool=pool)


if __name__ == "__main__":
    sys.exit(main())
