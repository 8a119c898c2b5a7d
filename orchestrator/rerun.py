"""Rerun is resume: a sweep is addressed by what it computes, so the same command on the same store continues it.

A sweep's id is its name plus a hash of its resolved config without the swept fields (each trial is addressed by
its own config, below), without where and how it runs (RUNTIME_FIELDS: cluster, tracking, store, concurrency,
resources) and without how it is evaluated (EVAL_FIELDS). A trial is addressed by a hash of its own resolved
config without those; a stored trial keeps its run_id (and so its checkpoints, records and MLflow child run)
whenever a later command plans a trial of the same address. An evaluation is addressed by its settings: each
distinct set of them is a records set of the sweep (`original`, then `eval-<hash>`), and no fit mixes two.
Running the same command again therefore continues the stored sweep through orchestrator.resume's machinery; a
grid grown by one point trains that point only; other evaluation settings evaluate the stored checkpoints
again; `--new` starts a fresh sweep.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, replace

from omegaconf import DictConfig, OmegaConf

from orchestrator.evaluations import EVAL_FIELDS, EvaluationSet, config_hash
from orchestrator.plan import TrialSpec
from store import io
from store.layout import SweepPaths, sweep_paths, write_text_atomic
from store.names import ORIGINAL

# Fields that say where and how a sweep runs, not what it computes: a rerun may change them freely (another
# cluster, tracking server, staging directory, concurrency, retention, lease timing, worker resources).
RUNTIME_FIELDS = (
    "tracking", "cluster", "store", "curation",
    "sweep.name", "sweep.grid", "sweep.max_concurrent_trials", "sweep.color_by", "sweep.nll_threshold",
    "sweep.robustness_variant", "sweep.lease_stale_s", "sweep.lease_wait_s", "sweep.cpu_only",
    "task.nll_threshold",  # the analysis' τ: every rerun fits again
    "train.use_gpu", "train.cpus_per_worker", "train.gpus_per_worker", "train.resources_per_worker",
    "train.keep_engine_states", "train.max_failures", "train.placement_strategy", "train.dist_backend", "train.env",
    "sampler.num_actors", "sampler.cpus_per_actor", "sampler.nice", "sampler.max_backlog",
    "sampler.gpus_per_actor",
    "sampler.resources_per_actor", "sampler.batch_tokens", "sampler.score_batch_tokens",
    "sampler.tensor_parallel_size", "sampler.gpu_memory_utilization", "sampler.enforce_eager",
    "sampler.grade_workers",
)
TRIALS_FILE = "trials.json"  # every trial the sweep ever planned (plan.json: the latest command's)


def without_fields(tree: dict, fields) -> dict:
    """A copy of a config tree with the dotted `fields` (and everything under them) removed."""
    tree = json.loads(json.dumps(tree, default=str))
    for field in fields:
        *parents, leaf = field.split(".")
        node = tree
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(leaf, None)
    return tree


def swept_fields(specs: list[TrialSpec]) -> set[str]:
    """The fields the plan varies across its trials (grid axes, linked axes' fields, Hydra's swept overrides)."""
    return {field for spec in specs for field in spec.grid_values}


def sweep_key(cfg: DictConfig, specs: list[TrialSpec]) -> str:
    """8 hex digits of the resolved config without the swept, runtime and evaluation fields."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    return config_hash(without_fields(tree, (*RUNTIME_FIELDS, *EVAL_FIELDS, *sorted(swept_fields(specs)))))


def trial_key(spec: TrialSpec) -> str:
    """8 hex digits of a trial's own resolved config without the runtime and evaluation fields: its address in
    its sweep (what it trains)."""
    return config_hash(without_fields(asdict(spec.config), (*RUNTIME_FIELDS, *EVAL_FIELDS)))


def content_sweep_id(cfg: DictConfig, specs: list[TrialSpec]) -> str:
    return f"{cfg.sweep.name}-{sweep_key(cfg, specs)}"


def stored_trials(paths: SweepPaths) -> list[TrialSpec]:
    """Every trial a stored sweep has planned (trials.json; plan.json for a sweep from before it); [] if none."""
    for name in (TRIALS_FILE, "plan.json"):
        if io.is_file(paths.file(name)):
            return [TrialSpec.from_dict(d) for d in json.loads(io.read_text(paths.file(name)))]
    return []


def address(cfg: DictConfig, planned_id: str, specs: list[TrialSpec],
            fresh: bool = False) -> tuple[str, list[TrialSpec], list[TrialSpec]]:
    """(sweep id, the specs renamed into it, the trials the store already has under that id).

    A planned trial whose address matches a stored one takes its run_id; a new one gets the next free trial
    number. `fresh` keeps the planned (dated, random) id: a new sweep of the same config."""
    if fresh:
        return planned_id, specs, []
    sweep_id = content_sweep_id(cfg, specs)
    stored = stored_trials(sweep_paths(cfg.store.root, sweep_id))
    known: dict[str, list[TrialSpec]] = {}
    for s in sorted(stored, key=lambda s: s.index):
        known.setdefault(trial_key(s), []).append(s)
    next_index = max((s.index for s in stored), default=-1) + 1
    renamed = []
    for spec in specs:
        # each stored trial is matched once: two points that differ only in a runtime field keep two run_ids
        candidates = known.get(trial_key(spec))
        match = candidates.pop(0) if candidates else None
        if match is not None:
            renamed.append(replace(spec, run_id=match.run_id, index=match.index))
            continue
        suffix = re.sub(rf"^{re.escape(planned_id)}-t\d+", "", spec.run_id)
        renamed.append(replace(spec, run_id=f"{sweep_id}-t{next_index:02d}{suffix}", index=next_index))
        next_index += 1
    return sweep_id, renamed, stored


def write_plan(paths: SweepPaths, specs: list[TrialSpec], stored: list[TrialSpec]) -> tuple[str, str]:
    """plan.json (this command's trials) and trials.json (every trial the sweep has planned); their locations."""
    merged = {s.run_id: s for s in stored} | {s.run_id: s for s in specs}
    trials = sorted(merged.values(), key=lambda s: s.index)
    plan = write_text_atomic(paths.file("plan.json"), json.dumps([asdict(s) for s in specs], indent=1))
    write_text_atomic(paths.file(TRIALS_FILE), json.dumps([asdict(s) for s in trials], indent=1))
    return plan, paths.file(TRIALS_FILE)


# ------------------------------------------------------------------------------------------- --plan
def trial_status(new: bool, stored_checkpoints: int, expected: int, unevaluated: int,
                 new_settings: bool = False) -> tuple[str, str]:
    """(run | continue | skip, why) of one trial of a rerun."""
    if new:
        return "run", "new point"
    if stored_checkpoints == 0:
        return "run", f"0 of {expected} checkpoints stored"
    evaluate = f"{unevaluated} to evaluate" + (" (new evaluation settings)" if new_settings else "")
    if stored_checkpoints < expected:
        return "continue", f"{stored_checkpoints} of {expected} checkpoints stored" + (
            f", {evaluate}" if unevaluated else "")
    if unevaluated:
        return "continue", f"trained ({expected} of {expected} checkpoints stored), {evaluate}"
    return "skip", f"done ({expected} of {expected} checkpoints stored and evaluated)"


def status_text(sweep_id: str, paths: SweepPaths, specs: list[TrialSpec], stored: list[TrialSpec],
                chosen: EvaluationSet | None = None) -> str:
    """What running the command would do, per trial and for its evaluation, with the reason; reads the store,
    starts nothing."""
    from orchestrator.cost import trial_steps
    from orchestrator.retention import evicted

    if not stored:
        return f"sweep {sweep_id}: new (nothing stored under {paths.sweep}); every trial runs"
    chosen = chosen or EvaluationSet(ORIGINAL, {}, new=False)
    known = {s.run_id for s in stored}
    lines = [f"sweep {sweep_id}: stored under {paths.sweep}; running this command again continues it",
             f"evaluation: {chosen.line()}"]
    lost = []
    for spec in specs:
        checkpoints = paths.trial_checkpoints(spec.run_id) if spec.run_id in known else []
        todo = [c for c in checkpoints if not io.is_file(paths.records_file(spec.run_id, _step(c), chosen.name))]
        if not chosen.regrade_from:  # re-grading needs the completions, not the weights
            lost += [c for c in todo if evicted(c)]
            todo = [c for c in todo if not evicted(c)]
        action, why = trial_status(spec.run_id not in known, len(checkpoints), trial_steps(spec)[1], len(todo),
                                   chosen.new)
        lines.append(f"  t{spec.index:02d} {action:<9} {spec.label[:45]:<46} {why}")
    planned = {s.run_id for s in specs}
    for spec in stored:
        if spec.run_id not in planned:
            lines.append(f"  t{spec.index:02d} {'keep':<9} {spec.label[:45]:<46} not in this command: stored, not fitted")
    if lost:
        lines.append(f"evicted: {len(lost)} checkpoint(s) have no weights any more (store.keep), so are not "
                     f"evaluated into {chosen.name}: " + ", ".join(f"{io.name(io.parent(c))}/{io.name(c)}"
                                                                   for c in lost[:6])
                     + (f" and {len(lost) - 6} more" if len(lost) > 6 else ""))
    return "\n".join(lines)


def _step(checkpoint: str) -> int:
    return int(io.name(checkpoint).removeprefix("step_"))


# --------------------------------------------------------------------------------------- continuing
def continue_sweep(cfg: DictConfig, paths: SweepPaths, specs: list[TrialSpec], stored: list[TrialSpec],
                   records_set: EvaluationSet | None = None) -> int:
    """Run this command's trials in their stored sweep: finished trials are not trained again, unfinished ones go
    on from their last checkpoints, new points train, stored records are not redone, the sweep's MLflow runs are
    found again by their tags; the exit code."""
    from orchestrator.config import to_yaml, tracking_uri
    from orchestrator.resume import resume_sweep
    from orchestrator.sweep import base_models
    from orchestrator.tracking import Tracker, end_abandoned_runs

    from orchestrator import schedule

    schedule.remember_first_experiment(paths)  # before plan.json changes: a sweep from before trials.json
    write_text_atomic(paths.file("config.yaml"), to_yaml(cfg))
    write_plan(paths, specs, stored)
    new = [s for s in specs if s.run_id not in {t.run_id for t in stored}]
    print(f"sweep {paths.sweep_id}: {len(specs)} trials, {len(new)} of them new -> {paths.sweep} (stored: "
          "running the same command continues it; --new starts a fresh sweep)")
    if records_set is not None and records_set.new:
        print(records_set.line())
    tracker = Tracker(tracking_uri(cfg), cfg.tracking.experiment, paths.mlflow_artifacts())
    end_abandoned_runs(tracker, cfg.tracking.abandoned_after_s)
    return resume_sweep(cfg, paths, specs, base_models(specs), tracker)
