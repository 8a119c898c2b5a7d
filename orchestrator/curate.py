"""python -m orchestrator.curate SWEEP_DIR [curation=NAME] [curation.* train.* sampler.* tracking.* cluster.*]:
curation rounds on a finished sweep, and the data-efficiency curve they give.

Each strategy (conf/curation/: premem — the lowest pre-memorization train accuracy, the paper's; iid — new data
from the task's own distribution, the baseline; the paper's heuristics ifd — instruction-following difficulty
under the base model — and longest — the longest reference solutions; low_train_acc; high_ref_nll) ranks the
sweep's train examples and picks as many as have premem at most curation.premem_at_most (0.75, the paper's rule;
null: curation.select_fraction of them); new examples like its picks are obtained (the built-in task's
generator, nearest neighbours from a candidate pool, or a user command), and one trial of the sweep is trained
again on its data plus each budget of new examples, for every seed. Each round is a sweep of its own in the
store (same trial machinery: Ray Tune, DeepSpeed, the sampling pool, records), nested in MLflow under the
curation's parent run; round r+1 picks from round r's largest-budget runs. At the end: test accuracy against
examples added per strategy (mean and spread over seeds) as a PNG and as the parent run's metrics, the
efficiency ratio (how many i.i.d. examples reach what premem curation reaches with B, over B), and curation.json
($CURATION_OUT, default <store>/curations/<id>/curation.json). Example:
    python -m orchestrator.curate runs/sweeps/default-20261130-120000 curation.seeds=[0,1,2]
A curation is addressed by what it computes: <curation.name>-<8 hex of the source sweep's id and the follow-up
runs' config (trial, curation.*, train/sampler overrides; tracking, cluster and other runtime fields left out)>.
Running the same command again continues it where it stopped (finished follow-up runs are not run again, a
round that was training continues from its checkpoints, the rounds not started run); --new starts a fresh one
(dated id). A curation's directory can also be named:
    python -m orchestrator.curate --resume runs/curations/<curation_id> [tracking.* cluster.*]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from store import io
from orchestrator.config import ConfigError, similar_source, to_yaml, tracking_uri, validate, validate_curation
from orchestrator.plan import TrialSpec, typed_config
from orchestrator.rerun import RUNTIME_FIELDS, config_hash, without_fields
from store.layout import SweepPaths, sweep_paths, write_text_atomic
from workers.tasks import Example, generated_tasks, load_task, task_args

ALLOWED = ("train.", "sampler.", "tracking.", "cluster.", "sweep.max_concurrent_trials", "sweep.nll_threshold")


# ------------------------------------------------------------------------------------------ config
def load_curation_config(paths: SweepPaths, overrides: list[str]) -> DictConfig:
    """The sweep's stored config with the `curation` group composed from conf/ (curation=NAME, curation.*)
    and train/sampler/tracking/cluster overrides, all validated."""
    from orchestrator.config import compose_config
    from orchestrator.sweep import load_stored_config

    ours = [o for o in overrides if o.lstrip("+").split("=", 1)[0].split(".", 1)[0] == "curation"]
    curation = compose_config(ours).curation
    cfg = load_stored_config(paths, [o for o in overrides if o not in ours], ALLOWED)
    cfg.curation = curation
    validate_curation(cfg)
    return cfg


def follow_up_config(cfg: DictConfig, trial: TrialSpec, overrides: list[str]) -> DictConfig:
    """The config every follow-up run repeats: the chosen trial's, with this command's overrides, the
    curation's checkpoint schedule, no robustness pass, and this invocation's tracking and cluster."""
    base = OmegaConf.merge(cfg, trial.config)
    base = OmegaConf.merge(base, OmegaConf.from_dotlist([o for o in overrides if o.startswith(ALLOWED)]))
    base.tracking, base.cluster, base.curation = cfg.tracking, cfg.cluster, cfg.curation
    base.train.checkpoints_per_epoch = cfg.curation.checkpoints_per_epoch
    base.train.save_every_steps = 0
    base.sweep.robustness_variant = ""
    base.sweep.grid = {}
    base.task.added_path = None
    validate(base)
    return base


def pick_trial(cfg: DictConfig, specs: list[TrialSpec], table: pd.DataFrame) -> TrialSpec:
    """curation.trial, or the trial whose last checkpoint has the best test accuracy."""
    if cfg.curation.trial is not None:
        if not 0 <= cfg.curation.trial < len(specs):
            raise ConfigError(f"curation.trial={cfg.curation.trial}: the sweep has trials 0..{len(specs) - 1}")
        return specs[cfg.curation.trial]
    last = last_test_accuracy(table)
    by_run = {s.run_id: s for s in specs}
    return by_run[max((r for r in last.index if r in by_run), key=lambda r: (last[r], r))]


# ------------------------------------------------------------------------------------------ rounds
@dataclass
class Source:
    """What one (strategy, seed) picks from in a round: records of runs on the data so far, and that data."""

    record_files: list[str]
    added: list[dict] = field(default_factory=list)  # rows of the added JSONL so far


@dataclass
class FollowUp:
    strategy: str
    seed: int
    round: int
    budget: int  # examples added in this round
    examples_added: int  # all rounds together
    added: list[dict]  # the rows of its added-data file

    def run_id(self, round_id: str) -> str:
        return f"{round_id}-{self.strategy}-s{self.seed}-n{self.examples_added}"


def example_row(example: Example, like: Example | None, strategy: str, round_no: int) -> dict:
    return {"example_id": example.example_id, "question": example.question, "solution": example.solution,
            "answer": example.answer, "similar_to": like.example_id if like is not None else None,
            "strategy": strategy, "round": round_no}


def obtain(cfg: DictConfig, likes: list[Example | None], train: list[Example], exclude: set[str], seed: int,
           prefix: str) -> list[Example]:
    """New examples, one per entry of `likes` (None: i.i.d.), from the configured source."""
    from workers.tasks import similar

    source, task = similar_source(cfg), cfg.task
    file_format = "gsm8k" if task.name in generated_tasks() else task.name  # the built-in tasks write GSM8k's format
    if source == "generator":
        from workers.tasks import generator

        return generator(task.name).new_examples(seed, prefix, likes, exclude, task.min_steps, task.max_steps,
                                                 task.max_number)
    if source == "neighbors":
        from workers.tasks.jsonl import read_jsonl

        pool = read_jsonl(file_format, cfg.curation.candidates, "candidates", 0)
        return similar.from_pool(likes, pool, exclude, seed, prefix)
    return similar.from_command(cfg.curation.command, likes, train, file_format, exclude, seed, prefix,
                                cfg.curation.command_timeout_s)


def reference_ifd(cfg: DictConfig, examples: list[Example]) -> dict[str, float]:
    """Each example's instruction-following difficulty under the base model the follow-up runs start from,
    scored in this process (transformers, on its GPU if it has one)."""
    from analysis.curate import ifd
    from orchestrator.sweep import ensure_base_model
    from workers.backends.hf import HFBackend
    from workers.tasks import PromptFormat

    backend = HFBackend(threads=int(cfg.cluster.num_cpus or 2))
    backend.load(io.local_copy(ensure_base_model(cfg, log=lambda _: None)))
    fmt = PromptFormat(cfg.task.question_suffix, cfg.task.stop)
    targets = [fmt.target(e.solution) for e in examples]
    given = backend.score([fmt.prompt(e.question) for e in examples], targets)
    alone = backend.score([""] * len(examples), targets)  # the solution after the start token only
    backend.close()
    return dict(zip((e.example_id for e in examples), ifd(given, alone).tolist()))


def plan_round(cfg: DictConfig, round_no: int, round_id: str, sources: dict[tuple[str, int], Source],
               train: list[Example], test: list[Example]) -> list[FollowUp]:
    """Every (seed, strategy, budget) follow-up of one round, its new data obtained (nothing written yet)."""
    from analysis.curate import example_scores, pick_count, rank_examples
    from analysis.premem import prepare
    from store.records import load_records

    c = cfg.curation
    tau = float(cfg.sweep.nll_threshold)
    scores_of: dict[tuple[str, ...], pd.DataFrame] = {}
    ifd_of: dict[str, float] = {}  # example_id -> IFD under the base model (the same for every source)
    follow_ups = []
    for seed in c.seeds:
        for strategy in c.strategies:
            source = sources[(strategy, seed)]
            known = {**{e.example_id: e for e in train},
                     **{r["example_id"]: Example(r["example_id"], r["question"], r["solution"], r["answer"])
                        for r in source.added}}
            key = tuple(source.record_files)
            if key not in scores_of:  # round 1: every (strategy, seed) reads the same sweep
                scores_of[key] = example_scores(prepare(load_records(source.record_files)), tau)
            scores = scores_of[key][scores_of[key]["example_id"].isin(known)]
            ids = scores["example_id"].astype(str).tolist()
            scores = scores.assign(solution_length=[len(known[i].solution) for i in ids])
            if strategy == "ifd":
                if missing := [known[i] for i in ids if i not in ifd_of]:
                    ifd_of.update(reference_ifd(cfg, missing))
                scores = scores.assign(ifd=[ifd_of[i] for i in ids])
            ranked = rank_examples(scores, strategy, seed * 1000 + round_no)
            picks = ranked[: pick_count(scores, c.premem_at_most, c.select_fraction)]
            budgets = sorted(set(c.budgets) | (set(c.iid_budgets) if strategy == "iid" else set()))
            likes = [None if strategy == "iid" else known[picks[j % len(picks)]] for j in range(max(budgets))]
            exclude = {e.question for e in train + test} | {r["question"] for r in source.added}
            prefix = f"{round_id}-{strategy}-s{seed}"
            new = obtain(cfg, likes, train, exclude, seed * 1000 + round_no, prefix)
            rows = [example_row(e, like, strategy, round_no) for e, like in zip(new, likes)]
            already = len(source.added)
            follow_ups += [FollowUp(strategy, seed, round_no, b, already + b, source.added + rows[:b]) for b in budgets]
    return follow_ups


def stored_follow_ups(specs: list[TrialSpec]) -> list[FollowUp]:
    """A planned round's follow-ups from its stored trial specs and added-data files (the round's base runs,
    which add nothing, left out): what the next round picks from."""
    follow_ups = []
    for spec in specs:
        values = spec.grid_values
        if values["curation.strategy"] == "base":
            continue
        added = [json.loads(line) for line in io.read_text(spec.config.task.added_path).splitlines() if line]
        budget = sum(1 for row in added if row["round"] == values["curation.round"])
        follow_ups.append(FollowUp(values["curation.strategy"], values["seed"], values["curation.round"], budget,
                                   values["curation.examples_added"], added))
    return follow_ups


def load_round_config(round_paths: SweepPaths, cfg: DictConfig) -> DictConfig:
    """A planned round's stored config, with this invocation's tracking and cluster."""
    from orchestrator.config import Config

    round_cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(io.read_text(round_paths.file("config.yaml"))))
    round_cfg.tracking, round_cfg.cluster = cfg.tracking, cfg.cluster
    return round_cfg


def round_specs(base: DictConfig, round_paths: SweepPaths, follow_ups: list[FollowUp],
                with_base_runs: bool) -> list[TrialSpec]:
    """Write each follow-up's added data, and its trial spec (the base runs first in round 1)."""
    runs = ([FollowUp("base", seed, 1, 0, 0, []) for seed in base.curation.seeds] if with_base_runs else []) + follow_ups
    specs = []
    for index, run in enumerate(runs):
        config = OmegaConf.to_container(base, resolve=True)
        config["seed"] = run.seed
        if run.added:
            location = round_paths.file("data", f"{run.strategy}-s{run.seed}-n{run.examples_added}.jsonl")
            config["task"]["added_path"] = write_text_atomic(
                location, "".join(json.dumps(r) + "\n" for r in run.added))
        grid_values = {"curation.strategy": run.strategy, "curation.examples_added": run.examples_added,
                       "seed": run.seed, "curation.round": run.round}
        specs.append(TrialSpec(run.run_id(round_paths.sweep_id), index, grid_values, typed_config(config)))
    return specs


def run_rounds(cfg: DictConfig, base: DictConfig, paths: SweepPaths, splits, curation_id: str,
               follow_ups: list[FollowUp], tracker, parent: str) -> tuple[list[TrialSpec], list[str], list[int]]:
    """Each round as a sweep of its own (written, tracked under the curation's run, executed); (every round's
    trial specs, their record files, each round's exit code)."""
    from store.names import ORIGINAL
    from orchestrator import schedule
    from orchestrator.sweep import ensure_base_model, execute, log_task_datasets, trial_params

    c = cfg.curation
    base_model = ensure_base_model(base)
    all_specs, record_files, codes, pool, previous = [], [], [], None, None
    round_files: dict[str, list[str]] = {}
    for round_no in range(1, c.rounds + 1):
        round_paths = sweep_paths(paths.root, f"{curation_id}-r{round_no}")
        planned = io.is_file(round_paths.file("plan.json"))  # by a driver that died: go on with that plan
        if pool is None:  # one sampling pool for every round
            schedule.init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.num_gpus, round_paths.logs)
            pool = schedule.start_pool(cfg.sampler)
        if planned:
            from orchestrator.resume import resume_sweep
            from orchestrator.sweep import stored_specs

            specs = stored_specs(round_paths)
            follow_ups = stored_follow_ups(specs)
            round_cfg = load_round_config(round_paths, cfg)
            codes.append(resume_sweep(round_cfg, round_paths, specs, base_model, tracker, parent, pool))
        elif round_no > 1:  # each (strategy, seed) picks from its run of the round before at the largest budget
            largest = max(c.budgets)
            sources = {(f.strategy, f.seed): Source(round_files.get(f.run_id(previous.sweep_id), []), f.added)
                       for f in follow_ups if f.budget == largest}
            unevaluated = sorted(f"{s} seed {seed}" for (s, seed), source in sources.items() if not source.record_files)
            if unevaluated:
                print(f"round {round_no}: not started, the round before has no records for {', '.join(unevaluated)}",
                      file=sys.stderr)
                codes.append(1)
                break
            follow_ups = plan_round(base, round_no, round_paths.sweep_id, sources, splits.train, splits.test)
        if not planned:
            round_cfg = base.copy()
            round_cfg.sweep.name = f"{c.name}-r{round_no}"
            specs = round_specs(round_cfg, round_paths, follow_ups, with_base_runs=round_no == 1)
            round_yaml = write_text_atomic(round_paths.file("config.yaml"), to_yaml(round_cfg))
            # written last: its presence marks the round planned, its data written (what --resume goes on from)
            plan_json = write_text_atomic(round_paths.file("plan.json"),
                                          json.dumps([asdict(s) for s in specs], indent=1))
            print(f"round {round_no}: {len(specs)} runs -> {round_paths.sweep} (its summary fits premem across these "
                  "runs' last checkpoints, one trial on different data; the curation's result is the curve at the end)")
            round_parent = tracker.start_sweep(round_paths.sweep_id, round_cfg.sweep.name, round_yaml, plan_json,
                                               parent)
            children = {s.run_id: tracker.start_trial(round_parent, s.run_id, s.label, trial_params(s)) for s in specs}
            log_task_datasets(tracker, specs, children, round_parent)
            codes.append(execute(round_cfg, round_paths, specs, base_model, tracker, round_parent, children,
                                 pool=pool))
        all_specs += specs
        round_files = {}
        for location in round_paths.record_files(ORIGINAL):
            round_files.setdefault(io.name(io.parent(location)), []).append(location)
        record_files += [f for files in round_files.values() for f in files]
        previous = round_paths
    return all_specs, record_files, codes


# ------------------------------------------------------------------------------------------ results
def last_test_accuracy(table: pd.DataFrame) -> pd.Series:
    """Each run's test accuracy at its last checkpoint, by run_id (from a checkpoint table)."""
    return table.sort_values("step").groupby("run_id").tail(1).set_index("run_id")["test_acc"]


def final_test_accuracy(record_files: list[str], tau: float) -> pd.Series:
    """Each run's test accuracy at its last checkpoint, by run_id, from its records."""
    from analysis.premem import checkpoint_table, prepare
    from store.records import load_records

    return last_test_accuracy(checkpoint_table(prepare(load_records(record_files)), tau))


def curation_result(specs: list[TrialSpec], accuracy: pd.Series) -> tuple[pd.DataFrame, dict]:
    """(per-seed curve points, the report for curation.json): curves per strategy and efficiency ratios."""
    from analysis.curate import efficiency_report, mean_curves, per_seed_curves

    rows = [{"strategy": s.grid_values["curation.strategy"], "seed": s.grid_values["seed"],
             "examples_added": s.grid_values["curation.examples_added"], "run_id": s.run_id,
             "test_acc": float(accuracy[s.run_id])} for s in specs if s.run_id in accuracy.index]
    per_seed = per_seed_curves(pd.DataFrame(rows))
    curves = mean_curves(per_seed)
    report = {"curves": {strategy: [[int(p.examples_added), float(p.test_acc), float(p.std)]
                                    for p in points.itertuples()]
                         for strategy, points in curves.groupby("strategy", sort=False)},
              "n_seeds": {strategy: int(points["n_seeds"].min()) for strategy, points in curves.groupby("strategy")},
              "runs": rows}
    strategies = [s for s in curves["strategy"].unique() if s != "iid"]
    if "iid" in set(curves["strategy"]):
        report["efficiency"] = {s: efficiency_report(per_seed, s) for s in strategies}
        premem = report["efficiency"].get("premem")
        report["efficiency_ratio"] = premem["ratio"] if premem else None
        report["efficiency_ratio_std"] = premem["ratio_std"] if premem else None
    return curves, report


def describe(curation_id: str, report: dict, plot_artifact: str | None) -> str:
    """The curation parent run's description in the MLflow UI (markdown)."""
    lines = [f"**premem curation** `{curation_id}` on sweep `{report['source_sweep']}`; follow-up runs repeat "
             f"trial `{report['trial']}`; new data: {report['similar']}", "",
             "| strategy | " + " | ".join(f"+{n}" for n in report["examples_added"]) + " |",
             "|---|" + "---|" * len(report["examples_added"])]
    for strategy, points in report["curves"].items():
        at = {n: f"{acc:.3f} ± {std:.3f}" for n, acc, std in points}
        lines.append(f"| {strategy} | " + " | ".join(at.get(n, "") for n in report["examples_added"]) + " |")
    for strategy, e in report.get("efficiency", {}).items():
        bound = "≥ " if e["lower_bound"] else ""
        lines.append(f"\n**{strategy}** vs i.i.d. at +{e['budget']}: efficiency ratio {bound}{e['ratio']:.2f} "
                     f"(seeds: {', '.join(f'{r:.2f}' for r in e['ratio_by_seed'].values())})")
    if plot_artifact:
        lines += ["", f"![test accuracy vs examples added]({plot_artifact})"]
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    lines = ["test accuracy after adding N examples (mean ± std over seeds):"]
    for strategy, points in report["curves"].items():
        lines.append(f"  {strategy:>14}: " + "  ".join(f"+{n}: {acc:.3f}±{std:.3f}" for n, acc, std in points))
    for strategy, e in report.get("efficiency", {}).items():
        bound = ">= " if e["lower_bound"] else ""
        lines.append(f"efficiency vs i.i.d. ({strategy}, +{e['budget']}): {bound}{e['ratio']:.2f}x  "
                     f"(per seed: {', '.join(f'{r:.2f}' for r in e['ratio_by_seed'].values())})")
    return lines


def publish(report: dict, curves: pd.DataFrame, curation_dir: str, out_json: str, outbox, parent: str) -> str:
    """curation.json and the curve's PNG in the store (and at $CURATION_OUT); metrics, artifacts and the
    description on the curation's parent run. Returns the PNG's location."""
    from analysis.plots import data_efficiency
    from orchestrator.tracking import NOTE_TAG

    ratio = report.get("efficiency_ratio")
    title = f"Data efficiency, task {report['task']}" + (f": premem {ratio:.2f}x i.i.d." if ratio is not None else "")
    with tempfile.TemporaryDirectory(prefix="premem-curve-") as tmp:
        local = data_efficiency(curves, Path(tmp) / "curation.png", title)
        plot = io.write_bytes(io.join(curation_dir, "curation.png"), local.read_bytes())
    stored = write_text_atomic(io.join(curation_dir, "curation.json"), json.dumps(report, indent=1))
    if out_json != stored:
        write_text_atomic(out_json, json.dumps(report, indent=1))
    for strategy, points in report["curves"].items():
        for n, acc, std in points:
            outbox.log_metrics(parent, {f"test_acc_{strategy}": acc, f"test_acc_std_{strategy}": std}, n)
    for strategy, e in report.get("efficiency", {}).items():
        outbox.log_metrics(parent, {f"efficiency_ratio_{strategy}": e["ratio"]}, e["budget"])
    if ratio is not None:
        outbox.log_metrics(parent, {"efficiency_ratio": ratio, "efficiency_ratio_std": report["efficiency_ratio_std"]}, 0)
    outbox.log_artifacts(parent, [stored, plot], "curation")
    image = f"get-artifact?path=curation%2Fcuration.png&run_uuid={parent}"
    outbox.set_tags(parent, {NOTE_TAG: describe(report["curation_id"], report, image)})
    return plot


# ------------------------------------------------------------------------------------------ address
INVOCATION = "invocation.json"  # in the curation's directory: what --resume needs to go on
# where and how the follow-up runs run (rerun.RUNTIME_FIELDS), and how long a user command may take: not in the
# curation's address. The rest of `curation.*` (strategies, budgets, seeds, rounds, ...) is.
CURATION_RUNTIME_FIELDS = (*(f for f in RUNTIME_FIELDS if f != "curation"), "curation.command_timeout_s")


def curation_key(source_sweep_id: str, base: DictConfig) -> str:
    """8 hex digits of the source sweep's id and the follow-up runs' resolved config without runtime fields."""
    tree = without_fields(OmegaConf.to_container(base, resolve=True), CURATION_RUNTIME_FIELDS)
    return config_hash({"source_sweep": source_sweep_id, "follow_up": tree})


def curation_id_for(source_sweep_id: str, base: DictConfig, fresh: bool = False) -> str:
    """The curation's id: its content address, or (`fresh`, --new) a dated one no later command finds."""
    if fresh:
        return f"{base.curation.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return f"{base.curation.name}-{curation_key(source_sweep_id, base)}"


def curation_location(paths: SweepPaths, curation_id: str) -> str:
    return io.join(paths.root, "curations", curation_id)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    from orchestrator.sweep import open_sweep_from_argv

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--resume"]:
        return resume(argv[1:])
    fresh = "--new" in argv
    argv = [a for a in argv if a != "--new"]
    opened = open_sweep_from_argv(argv, load_curation_config, __doc__)
    if opened is None:
        return 2
    paths, cfg = opened
    try:
        trial, base, splits, curation_id, first = prepare_curation(paths, cfg, argv[1:], fresh=fresh)
    except (ConfigError, ValueError, io.StorageError) as exc:  # nothing written yet
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return under_lease(cfg, curation_location(paths, curation_id), lambda: run_curation(
        paths, cfg, trial, base, splits, curation_id, first, overrides=argv[1:],
        # the same command again: this curation is stored (its invocation is written before round 1 runs)
        resumed=io.is_file(io.join(curation_location(paths, curation_id), INVOCATION))))


def under_lease(cfg: DictConfig, directory: str, run) -> int:
    """run() while holding the curation's lease (a second driver of it waits, as for a sweep); its exit code,
    or 1 with one line naming the holder when it did not end within sweep.lease_wait_s."""
    from orchestrator.lease import Lease, LeaseHeld

    with Lease(directory, cfg.sweep.lease_stale_s) as lease:
        try:
            lease.acquire(cfg.sweep.lease_wait_s, say=lambda line: print(line.replace("the sweep", "the curation")))
        except LeaseHeld as exc:
            print(f"error: {str(exc).replace('the sweep', 'the curation')}", file=sys.stderr)
            return 1
        return run()


def resume(argv: list[str]) -> int:
    """`--resume CURATION_DIR [tracking.* cluster.*]`: the curation that directory holds, from where it stopped."""
    from orchestrator.sweep import open_sweep_from_argv

    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    curation_dir, extra = io.normalize(argv[0]), argv[1:]
    try:
        stored = json.loads(io.read_text(io.join(curation_dir, INVOCATION)))
        wrong = [o for o in extra if not o.lstrip("+").startswith(("tracking.", "cluster."))]
        if wrong:
            raise ConfigError(f"{wrong[0].split('=', 1)[0]}: only tracking.* and cluster.* can change when a "
                              "curation is resumed (its rounds are planned)")
    except (ConfigError, FileNotFoundError, io.StorageError) as exc:
        print(f"error: {curation_dir}: {exc}" if not isinstance(exc, ConfigError) else f"error: {exc}",
              file=sys.stderr)
        return 2
    opened = open_sweep_from_argv([stored["source_sweep"], *stored["overrides"], *extra], load_curation_config,
                                  __doc__)
    if opened is None:
        return 2
    paths, cfg = opened
    try:
        trial, base, splits, _, first = prepare_curation(paths, cfg, stored["overrides"], stored["curation_id"],
                                                         stored["trial"])
    except (ConfigError, ValueError, io.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return under_lease(cfg, curation_dir, lambda: run_curation(
        paths, cfg, trial, base, splits, stored["curation_id"], first, overrides=stored["overrides"], resumed=True))


def prepare_curation(paths: SweepPaths, cfg: DictConfig, overrides: list[str], curation_id: str | None = None,
                     trial_run_id: str | None = None, fresh: bool = False):
    """Everything round 1 needs, checked and obtained before anything is written (a resumed curation names its
    id and trial; otherwise the id is the curation's content address, or a dated one when `fresh`; a round 1
    already planned under that id is read from the store instead)."""
    from analysis.premem import checkpoint_table, prepare
    from store.names import ORIGINAL
    from store.records import load_records

    specs = [TrialSpec.from_dict(d) for d in json.loads(io.read_text(paths.file("plan.json")))]
    record_files = paths.record_files(ORIGINAL)
    if not record_files:
        raise ConfigError(f"{paths.sweep}: no records; curation picks from a sweep's evaluated checkpoints")
    table = checkpoint_table(prepare(load_records(record_files)), float(cfg.sweep.nll_threshold))
    trial = next((s for s in specs if s.run_id == trial_run_id), None) if trial_run_id else pick_trial(cfg, specs, table)
    if trial is None:
        raise ConfigError(f"{INVOCATION}: trial {trial_run_id} is not a trial of {paths.sweep}")
    base = follow_up_config(cfg, trial, overrides)
    splits = load_task(**task_args(base.task))
    curation_id = curation_id or curation_id_for(paths.sweep_id, base, fresh)
    if io.is_file(sweep_paths(paths.root, f"{curation_id}-r1").file("plan.json")):
        return trial, base, splits, curation_id, []  # planned by the driver that died: run_rounds reads it
    sources = {(s, seed): Source(record_files) for s in cfg.curation.strategies for seed in cfg.curation.seeds}
    first = plan_round(base, 1, f"{curation_id}-r1", sources, splits.train, splits.test)
    return trial, base, splits, curation_id, first


def run_curation(paths: SweepPaths, cfg: DictConfig, trial: TrialSpec, base: DictConfig, splits, curation_id: str,
                 follow_ups: list[FollowUp], overrides: list[str] = (), resumed: bool = False) -> int:
    from orchestrator.tracking import Heartbeat, Outbox, Tracker, end_abandoned_runs

    c = cfg.curation
    curation_dir = curation_location(paths, curation_id)
    out_json = os.environ.get("CURATION_OUT") or io.join(curation_dir, "curation.json")
    config_yaml = write_text_atomic(io.join(curation_dir, "config.yaml"), to_yaml(base))
    # what --resume repeats: tracking and cluster come from the resuming command (a URI may hold credentials)
    kept = [o for o in overrides if not o.lstrip("+").startswith(("tracking.", "cluster."))]
    write_text_atomic(io.join(curation_dir, INVOCATION), json.dumps(
        {"source_sweep": paths.sweep, "overrides": kept, "curation_id": curation_id, "trial": trial.run_id}, indent=1))
    print(f"curation {curation_id}{' (resumed)' if resumed else ''}: {len(c.strategies)} strategies x "
          f"{len(c.seeds)} seeds, {c.rounds} round(s), follow-up runs repeat {trial.run_id} ({trial.label}); "
          f"new data: {similar_source(base)} -> {curation_dir}")
    tracker = Tracker(tracking_uri(cfg), cfg.tracking.experiment, paths.mlflow_artifacts())
    end_abandoned_runs(tracker, cfg.tracking.abandoned_after_s)
    parent = None
    if resumed:
        try:
            parent = tracker.find_curation(curation_id)
            tracker.reopen(parent)
            # a finished curation run again publishes its curve again: each (metric, step) stays written once
            tracker.load_logged(parent, ("efficiency_ratio", "efficiency_ratio_std", *(
                f"{key}_{strategy}" for strategy in c.strategies
                for key in ("test_acc", "test_acc_std", "efficiency_ratio"))))
        except LookupError:  # the driver died before it made the curation's run
            parent = None
    parent = parent or tracker.start_curation(curation_id, paths.sweep_id, config_yaml)
    outbox = Outbox(tracker)
    heartbeat = Heartbeat(outbox, [parent])
    try:
        all_specs, record_files, codes = run_rounds(cfg, base, paths, splits, curation_id, follow_ups, tracker, parent)
    except BaseException as exc:  # Ctrl-C or a crash: the round ended its own runs, this ends the curation's
        heartbeat.stop()
        outbox.end_run(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        outbox.close(timeout_s=30)
        raise
    accuracy = final_test_accuracy(record_files, float(cfg.sweep.nll_threshold)) if record_files else pd.Series(dtype=float)
    curves, report = curation_result(all_specs, accuracy)
    report.update(curation_id=curation_id, source_sweep=paths.sweep_id, trial=trial.run_id, task=base.task.name,
                  similar=similar_source(base),
                  seeds=list(c.seeds), strategies=list(c.strategies), rounds=c.rounds,
                  examples_added=sorted({int(n) for n in curves["examples_added"]}))
    heartbeat.stop()
    plot = publish(report, curves, curation_dir, out_json, outbox, parent)
    outbox.end_run(parent, "FINISHED" if not any(codes) else "FAILED")
    unwritten = outbox.close(timeout_s=cfg.tracking.outage_wait_s)
    print("\n".join(summary_lines(report)))
    print(f"curation.json: {out_json}\ncurve: {plot}\nMLflow curation run: {tracker.ui_urls(parent)[0]}")
    return 1 if unwritten or any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())
