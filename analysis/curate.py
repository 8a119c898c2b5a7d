"""Per-example views: curation picks (lowest premem) and robustness under prompt perturbations."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.premem import PremState, example_premem, premem_at
from store.names import CURATION_STRATEGIES
from store.records import RecordsError

DEFAULT_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def example_scores(state: PremState, tau: float, step: int | None = None, run_id: str | None = None) -> pd.DataFrame:
    """Per train example, what the curation strategies rank by: premem, train accuracy and reference NLL at
    each run's last checkpoint (or `step`), averaged over runs."""
    at = premem_at(state, tau, step=step, run_id=run_id)
    return (at.groupby("example_id", observed=True)
            .agg(premem_train_acc=("premem", "mean"), train_acc=("acc", "mean"), ref_nll=("ref_nll", "mean"),
                 n_runs=("run_id", "nunique"))
            .reset_index())


def curation_picks(state: PremState, tau: float, count: int | None = None, fraction: float | None = None,
                   step: int | None = None, run_id: str | None = None) -> pd.DataFrame:
    """Train examples with the lowest premem (mean over runs at each run's last checkpoint, or `step`)."""
    per_example = example_scores(state, tau, step, run_id).sort_values(
        ["premem_train_acc", "train_acc", "example_id"], kind="stable")
    if count is None:
        count = int(np.ceil((fraction if fraction is not None else 0.1) * len(per_example)))
    return per_example.head(count).reset_index(drop=True)


# What each curation strategy wants more of: (score column, ascending). `iid` ranks nothing: its new data are
# drawn from the task's own distribution, the baseline every strategy is measured against.
# `ifd` and `longest` are the paper's two heuristics: instruction-following difficulty (Li et al. 2023: the
# reference's perplexity given its question over its perplexity alone, under the base model) and the longest
# reference solutions.
STRATEGIES = {"premem": ("premem_train_acc", True), "ifd": ("ifd", False), "longest": ("solution_length", False),
              "low_train_acc": ("train_acc", True), "high_ref_nll": ("ref_nll", False), "iid": (None, True)}
assert tuple(STRATEGIES) == CURATION_STRATEGIES, "store.names.CURATION_STRATEGIES names each strategy here"


def rank_examples(scores: pd.DataFrame, strategy: str, seed: int) -> list[str]:
    """example_ids in the order `strategy` wants more examples like them, most wanted first; ties (and all of
    `iid`) in a seeded random order."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown curation strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    column, ascending = STRATEGIES[strategy]
    shuffled = scores.sample(frac=1.0, random_state=np.random.default_rng(seed))
    if column is not None:
        shuffled = shuffled.sort_values(column, ascending=ascending, kind="stable")
    return shuffled["example_id"].astype(str).tolist()


def ifd(nll_given_question: np.ndarray, nll_alone: np.ndarray) -> np.ndarray:
    """Instruction-following difficulty of references from their mean per-token NLLs: perplexity given the
    question over perplexity alone. Near 1: the question barely helps to write the solution."""
    return np.exp(np.asarray(nll_given_question, dtype=float) - np.asarray(nll_alone, dtype=float))


def pick_count(scores: pd.DataFrame, premem_at_most: float | None, select_fraction: float) -> int:
    """How many train examples each strategy picks: the paper's rule, as many as have premem at most
    `premem_at_most` (every strategy then picks that many, by its own ranking); without it a fixed share."""
    if premem_at_most is not None:
        return max(1, int((scores["premem_train_acc"] <= premem_at_most).sum()))
    return max(1, int(np.ceil(select_fraction * len(scores))))


def first_reach(examples_added: np.ndarray, accuracy: np.ndarray, target: float) -> float:
    """The fewest examples added at which the piecewise-linear curve (examples_added ascending) reaches
    `target`; NaN if it never does within its points."""
    if accuracy[0] >= target:
        return float(examples_added[0])
    for i in range(1, len(accuracy)):
        if accuracy[i] >= target:
            lo, hi = accuracy[i - 1], accuracy[i]
            return float(examples_added[i - 1] + (target - lo) / (hi - lo) * (examples_added[i] - examples_added[i - 1]))
    return float("nan")


@dataclass
class Efficiency:
    """How many i.i.d. examples reach the accuracy a strategy reaches with `budget` examples, over `budget`."""

    budget: int
    strategy_acc: float
    iid_examples: float  # NaN: the i.i.d. curve never got there (then `ratio` is a lower bound)
    ratio: float
    lower_bound: bool


def efficiency(curve: pd.DataFrame, iid: pd.DataFrame, budget: int) -> Efficiency:
    """The data-efficiency ratio at `budget` from two curves (columns examples_added, test_acc; one row per
    point, the shared 0-examples point included). If the i.i.d. curve stays below, the ratio is its largest
    point over `budget`, marked as a lower bound."""
    at = curve.loc[curve["examples_added"] == budget, "test_acc"]
    if at.empty:
        raise ValueError(f"no point at {budget} examples added")
    iid = iid.sort_values("examples_added")
    x, y = iid["examples_added"].to_numpy(float), iid["test_acc"].to_numpy(float)
    needed = first_reach(x, y, float(at.iloc[0]))
    if needed != needed:
        return Efficiency(budget, float(at.iloc[0]), needed, float(x[-1] / budget), True)
    return Efficiency(budget, float(at.iloc[0]), needed, needed / budget, False)


def write_jsonl(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write one JSON object per row, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for row in frame.to_dict(orient="records"):
            f.write(json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}) + "\n")
    os.replace(tmp, path)
    return path


def robustness(state: PremState, tau: float, bins: tuple[float, ...] = DEFAULT_BINS) -> pd.DataFrame:
    """Accuracy under each prompt variant, binned by the example's premem at the same checkpoint.

    Low-premem examples whose accuracy drops most under perturbation are the fragile ones. `perturbed_acc` is
    what the paper plots (there every train example is solved before the perturbation); where a bin's original
    accuracy is lower, `retained` (perturbed over original accuracy, NaN for a bin with none correct) separates
    fragility from never having been solved.
    """
    rec = state.records
    others = [(code, name) for code, name in enumerate(rec.variants) if name != state.variant]
    if not others:
        raise RecordsError(f"{rec.sources[0]}: column 'variant': no rows other than '{state.variant}' to compare")
    step_min = int(rec.step.min())
    span = int(rec.step.max()) - step_min + 1
    n_examples = len(rec.examples)

    def key(rows: np.ndarray) -> np.ndarray:
        return (rec.run[rows].astype(np.int64) * n_examples + rec.example[rows]) * span + (rec.step[rows] - step_min)

    orig_key = key(state.rows)  # sorted ascending by construction of PremState
    orig_premem = example_premem(state, tau)
    orig_acc = rec.n_correct[state.rows] / rec.n_samples[state.rows]
    frames = []
    for code, name in others:
        rows = np.flatnonzero((rec.variant == code) & rec.is_train)
        pos = np.searchsorted(orig_key, key(rows))
        pos = np.minimum(pos, len(orig_key) - 1)
        matched = orig_key[pos] == key(rows)
        if not matched.any():
            continue
        premem = orig_premem[pos[matched]]
        bin_index = np.clip(np.digitize(premem, bins[1:-1], right=False), 0, len(bins) - 2)
        frame = pd.DataFrame({
            "variant": str(name),
            "bin": bin_index,
            "premem": premem,
            "original_acc": orig_acc[pos[matched]],
            "perturbed_acc": rec.n_correct[rows[matched]] / rec.n_samples[rows[matched]],
        })
        frames.append(frame)
    if not frames:
        raise RecordsError(f"{rec.sources[0]}: no perturbed train rows match an original (run, step, example)")
    joined = pd.concat(frames, ignore_index=True)
    table = joined.groupby(["variant", "bin"]).agg(
        n=("premem", "size"), premem_mean=("premem", "mean"),
        original_acc=("original_acc", "mean"), perturbed_acc=("perturbed_acc", "mean")).reset_index()
    table["premem_bin"] = [f"[{bins[b]:.1f}, {bins[b + 1]:.1f}{']' if b == len(bins) - 2 else ')'}" for b in table["bin"]]
    table["acc_drop"] = table["original_acc"] - table["perturbed_acc"]
    table["retained"] = table["perturbed_acc"] / table["original_acc"].where(table["original_acc"] > 0)
    return table[["variant", "premem_bin", "n", "premem_mean", "original_acc", "perturbed_acc", "acc_drop",
                  "retained"]]


BASE = "base"  # the runs on the sweep's data alone: every strategy's point at 0 examples added


def per_seed_curves(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, seed, examples_added) with its run's final test accuracy; the base runs (strategy
    'base', 0 added) become each strategy's first point for the same seed. `results` has columns strategy,
    seed, examples_added, test_acc."""
    base = results[results["strategy"] == BASE]
    rows = [results[results["strategy"] != BASE]]
    for strategy in results.loc[results["strategy"] != BASE, "strategy"].unique():
        rows.append(base.assign(strategy=strategy))
    out = pd.concat(rows, ignore_index=True)
    return out.sort_values(["strategy", "seed", "examples_added"], kind="stable").reset_index(drop=True)


def mean_curves(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per (strategy, examples_added): mean test accuracy over seeds, its standard deviation (ddof 1; 0 with
    one seed) and how many seeds have the point."""
    grouped = per_seed.groupby(["strategy", "examples_added"], sort=True)["test_acc"]
    out = grouped.agg(test_acc="mean", std=lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      n_seeds="size").reset_index()
    return out


def efficiency_report(per_seed: pd.DataFrame, strategy: str) -> dict:
    """`strategy` against i.i.d. data at its largest budget: the ratio of the mean curves, and the ratio of
    each seed's two curves (the spread)."""
    curves = mean_curves(per_seed)
    mine, iid = curves[curves["strategy"] == strategy], curves[curves["strategy"] == "iid"]
    budget = int(mine["examples_added"].max())
    overall = efficiency(mine, iid, budget)
    by_seed = {}
    for seed, rows in per_seed[per_seed["strategy"] == strategy].groupby("seed"):
        iid_seed = per_seed[(per_seed["strategy"] == "iid") & (per_seed["seed"] == seed)]
        if budget in set(rows["examples_added"]) and len(iid_seed) > 1:
            by_seed[int(seed)] = efficiency(rows, iid_seed, budget)
    ratios = np.array([e.ratio for e in by_seed.values()])
    return {"strategy": strategy, "budget": budget, "ratio": overall.ratio, "lower_bound": overall.lower_bound,
            "strategy_acc": overall.strategy_acc, "iid_examples_needed": overall.iid_examples,
            "ratio_by_seed": {s: e.ratio for s, e in by_seed.items()},
            "ratio_std": float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0}
