"""Pre-memorization train accuracy (Kang et al. 2024), exactly, vectorized over all runs and examples.

For train example i of a run at checkpoint t:
    acc(i,t) = n_correct / n_samples
    memorized(i,t) <=> ref_nll(i,t) < tau
    premem(i,t) = min( max_{s<=t} acc(i,s) * [not memorized(i,s)], acc(i,t) )
The run's pre-memorization train accuracy at t is the mean of premem(i,t) over the run's train examples.

`prepare` sorts the train rows once by (run, example, step); each threshold then costs a handful of
linear numpy passes, which is what makes sweeping tau over 20M-row record sets cheap. Accuracies are
handled as integer ranks of the distinct n_correct/n_samples fractions, so the running maximum across
all groups is one exact `np.maximum.accumulate` with a per-group offset instead of a Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from store.names import ORIGINAL

from store.records import Records, RecordsError


@dataclass
class Checkpoints:
    """One row per (run, step) among the `original`-variant records, ordered by run then step."""

    run: np.ndarray  # codes into Records.runs
    step: np.ndarray
    epoch: np.ndarray
    n_train: np.ndarray
    n_test: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    ref_nll_mean: np.ndarray


@dataclass
class PremState:
    """Train rows sorted by (run, example, step), with what every threshold needs precomputed."""

    records: Records
    checkpoints: Checkpoints
    rows: np.ndarray  # indices into records of the sorted original train rows
    ckpt: np.ndarray  # checkpoint index of each sorted train row
    acc_rank: np.ndarray  # rank of acc among rank_values
    rank_values: np.ndarray  # acc value of each rank; rank 0 is 0.0
    group_offset: np.ndarray  # (run, example) group index * number of ranks
    ref_nll: np.ndarray  # sorted train rows' ref_nll
    variant: str = ORIGINAL  # the records set these rows are of (others in `records` are perturbations of it)


def _dense_codes(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code per element, sorted distinct keys) for non-negative int64 keys."""
    if len(key) and key.max() < 50_000_000:
        present = np.bincount(key, minlength=1) > 0
        distinct = np.flatnonzero(present)
        lookup = np.cumsum(present) - 1
        return lookup[key].astype(np.int64), distinct
    distinct, codes = np.unique(key, return_inverse=True)
    return codes.astype(np.int64), distinct


def _mean_by(codes: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    sums = np.bincount(codes, weights=values, minlength=len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _accuracy_ranks(n_correct: np.ndarray, n_samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ranks of n_correct/n_samples among its distinct values, with 0.0 as rank 0."""
    pair_key = n_samples * (int(n_correct.max(initial=0)) + 1) + n_correct
    pair_code, pairs = _dense_codes(pair_key)
    radix = int(n_correct.max(initial=0)) + 1
    pair_values = (pairs % radix) / (pairs // radix)
    values, rank_of_pair = np.unique(np.concatenate([[0.0], pair_values]), return_inverse=True)
    return rank_of_pair[1:][pair_code].astype(np.int64), values


def prepare(records: Records, variant: str = ORIGINAL) -> PremState:
    """Index the records of `variant` (the sweep's first records set, `original`, by default) by checkpoint and
    sort their train rows for the running maximum; rows of other variants are left out."""
    original = records.variant_code(variant)
    if original < 0:
        raise RecordsError(f"{records.sources[0]}: column 'variant': no rows with variant '{variant}'")
    orig_rows = np.flatnonzero(records.variant == original)
    step_min = int(records.step.min())
    span = int(records.step.max()) - step_min + 1
    run, step = records.run[orig_rows].astype(np.int64), records.step[orig_rows]
    ckpt_of_orig, ckpt_keys = _dense_codes(run * span + (step - step_min))
    n_ckpt = len(ckpt_keys)
    is_train = records.is_train[orig_rows]
    acc = records.n_correct[orig_rows] / records.n_samples[orig_rows]
    n_train = np.bincount(ckpt_of_orig[is_train], minlength=n_ckpt)
    n_test = np.bincount(ckpt_of_orig[~is_train], minlength=n_ckpt)
    n_all = np.bincount(ckpt_of_orig, minlength=n_ckpt)
    checkpoints = Checkpoints(
        run=(ckpt_keys // span).astype(np.int64),
        step=ckpt_keys % span + step_min,
        epoch=_mean_by(ckpt_of_orig, records.epoch[orig_rows], n_all),
        n_train=n_train,
        n_test=n_test,
        train_acc=_mean_by(ckpt_of_orig[is_train], acc[is_train], n_train),
        test_acc=_mean_by(ckpt_of_orig[~is_train], acc[~is_train], n_test),
        ref_nll_mean=_mean_by(ckpt_of_orig[is_train], records.ref_nll[orig_rows][is_train], n_train),
    )

    train_rows = orig_rows[is_train]
    group = records.run[train_rows].astype(np.int64) * len(records.examples) + records.example[train_rows]
    if float(group.max(initial=0) + 1) * span < 2**62:
        order = np.argsort(group * span + (records.step[train_rows] - step_min), kind="stable")
    else:
        order = np.lexsort((records.step[train_rows], group))
    rows = train_rows[order]
    sorted_group = group[order]
    group_index = np.concatenate([[0], np.cumsum(sorted_group[1:] != sorted_group[:-1])]) if len(rows) else group
    acc_rank, rank_values = _accuracy_ranks(records.n_correct[rows], records.n_samples[rows])
    return PremState(
        records=records,
        checkpoints=checkpoints,
        rows=rows,
        ckpt=ckpt_of_orig[is_train][order],
        acc_rank=acc_rank,
        rank_values=rank_values,
        group_offset=group_index.astype(np.int64) * len(rank_values),
        ref_nll=records.ref_nll[rows],
        variant=variant,
    )


def example_premem(state: PremState, tau: float) -> np.ndarray:
    """premem(i,t) for each sorted train row of `state` (aligned with state.rows)."""
    unmemorized = np.where(state.ref_nll >= tau, state.acc_rank, 0)
    running_max = np.maximum.accumulate(unmemorized + state.group_offset) - state.group_offset
    return state.rank_values[np.minimum(running_max, state.acc_rank)]


def checkpoint_premem(state: PremState, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(premem_train_acc, memorized_frac) per checkpoint at threshold tau."""
    n_train = state.checkpoints.n_train
    premem = _mean_by(state.ckpt, example_premem(state, tau), n_train)
    memorized = _mean_by(state.ckpt, (state.ref_nll < tau).astype(np.float64), n_train)
    return premem, memorized


def checkpoint_table(state: PremState, tau: float) -> pd.DataFrame:
    """Per (run, checkpoint): premem_train_acc, test_acc, train_acc, ref_nll_mean, memorized_frac, counts."""
    ck = state.checkpoints
    premem, memorized = checkpoint_premem(state, tau)
    return pd.DataFrame(
        {
            "run_id": state.records.runs[ck.run].astype(str),
            "step": ck.step,
            "epoch": ck.epoch,
            "premem_train_acc": premem,
            "test_acc": ck.test_acc,
            "train_acc": ck.train_acc,
            "ref_nll_mean": ck.ref_nll_mean,
            "memorized_frac": memorized,
            "n_train": ck.n_train,
            "n_test": ck.n_test,
        }
    )


def example_table(state: PremState, tau: float) -> pd.DataFrame:
    """Per (run, train example, checkpoint): acc, ref_nll, memorized, premem — sorted by run, example, step."""
    rec, rows = state.records, state.rows
    return pd.DataFrame(
        {
            "run_id": pd.Categorical.from_codes(rec.run[rows], rec.runs.astype(str)),
            "example_id": pd.Categorical.from_codes(rec.example[rows], rec.examples.astype(str)),
            "step": rec.step[rows],
            "epoch": rec.epoch[rows],
            "acc": rec.n_correct[rows] / rec.n_samples[rows],
            "ref_nll": state.ref_nll,
            "memorized": state.ref_nll < tau,
            "premem": example_premem(state, tau),
        }
    )


def premem_at(state: PremState, tau: float, step: int | None = None, run_id: str | None = None) -> pd.DataFrame:
    """Per-example premem at one checkpoint of each run: `step`, or each run's last checkpoint."""
    table = example_table(state, tau)
    if run_id is not None:
        table = table[table["run_id"] == run_id]
        if table.empty:
            raise RecordsError(f"run_id {run_id!r}: no train records with variant '{state.variant}'")
    if step is None:
        last = table.groupby("run_id", observed=True)["step"].transform("max")
        return table[table["step"] == last].reset_index(drop=True)
    picked = table[table["step"] == step]
    if picked.empty:
        raise RecordsError(f"step {step}: no train records at that checkpoint")
    return picked.reset_index(drop=True)
