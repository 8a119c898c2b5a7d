"""Least-squares fits of test accuracy across (run, checkpoint) points, threshold choice and uncertainty."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.premem import PremState, checkpoint_premem, checkpoint_table, example_premem

PREDICTORS = ("premem_train_acc", "train_acc", "ref_nll_mean", "memorized_frac")
ACCURACIES = ("premem_train_acc", "train_acc")  # predictors on test accuracy's scale: they have an identity line
DEFAULT_TAUS = tuple(float(t) for t in np.round(np.geomspace(0.01, 1.0, 41), 6))


@dataclass
class Fit:
    slope: float
    intercept: float
    r2: float  # of the fitted line: how well test accuracy is *some* linear function of the predictor
    n_points: int
    # of the identity line, test accuracy = predictor: the paper's measure (premem *is* test accuracy; 0.935 on
    # its GSM8k runs, 0.949 on MATH). Negative when y = x predicts worse than the mean; NaN for a predictor that
    # is not an accuracy (an NLL, a fraction memorized), which no identity line relates to test accuracy.
    r2_identity: float = float("nan")

    def to_dict(self) -> dict:
        """The fit with the identity line's R² first, as everywhere a fit is shown."""
        d = asdict(self)
        return {"r2_identity": d.pop("r2_identity"), **d}


def r2_against(y: np.ndarray, predicted: np.ndarray) -> float:
    """1 - SS_res/SS_tot of `predicted` as a prediction of y; NaN when y has no spread."""
    y, predicted = np.asarray(y, float), np.asarray(predicted, float)
    ss_tot = ((y - y.mean()) ** 2).sum()
    return float(1.0 - ((y - predicted) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def fit_line(x: np.ndarray, y: np.ndarray, identity: bool = False) -> Fit:
    """Ordinary least squares y ~ slope*x + intercept, with R^2 = 1 - SS_res/SS_tot; with `identity`, also
    the R^2 of y = x (x is an accuracy, as y is)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 2:
        return Fit(float("nan"), float("nan"), float("nan"), n)
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    slope = ((x - xm) * (y - ym)).sum() / sxx if sxx > 0 else 0.0
    intercept = ym - slope * xm
    r2 = r2_against(y, slope * x + intercept)
    return Fit(float(slope), float(intercept), r2, n, r2_against(y, x) if identity else float("nan"))


def fit_points(table: pd.DataFrame) -> pd.DataFrame:
    """The checkpoints that are fit points: both train and test rows present."""
    return table[(table["n_train"] > 0) & (table["n_test"] > 0)].reset_index(drop=True)


def fit_all(points: pd.DataFrame) -> dict[str, Fit]:
    """test_acc fitted on premem and on each baseline predictor."""
    return {name: fit_line(points[name].to_numpy(), points["test_acc"].to_numpy(), identity=name in ACCURACIES)
            for name in PREDICTORS}


def _premem_by_tau(state: PremState, taus: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.stack([checkpoint_premem(state, float(t))[0][valid] for t in taus])


def _valid_points(state: PremState) -> np.ndarray:
    ck = state.checkpoints
    return (ck.n_train > 0) & (ck.n_test > 0)


def r2_curve(state: PremState, taus: np.ndarray) -> pd.DataFrame:
    """In-sample R^2 of test accuracy on premem at each threshold."""
    valid = _valid_points(state)
    y = state.checkpoints.test_acc[valid]
    premem = _premem_by_tau(state, taus, valid)
    fits = [fit_line(x, y, identity=True) for x in premem]
    return pd.DataFrame({"tau": taus, "r2_identity": [f.r2_identity for f in fits], "r2": [f.r2 for f in fits],
                         "slope": [f.slope for f in fits], "intercept": [f.intercept for f in fits]})


@dataclass
class LeaveOneRunOut:
    tau: float  # chosen on all runs by the fitted line's R^2 (the CLI reports at tau_identity)
    oos_r2: float  # pooled out-of-sample R^2 of held-out runs' predictions
    oos_mae: float
    oos_rmse: float
    tau_by_run: dict[str, float]  # threshold each fold chose without seeing its run
    predictions: pd.DataFrame  # run_id, step, test_acc, predicted_test_acc, tau
    # the identity line's: each fold picks the tau whose premem is closest to test accuracy on the other runs,
    # and the held-out run's premem at that tau is its prediction (nothing fitted)
    oos_r2_identity: float = float("nan")
    tau_identity: float = float("nan")  # chosen on all runs by the identity line's R^2
    tau_by_run_identity: dict[str, float] = field(default_factory=dict)  # each identity fold's τ


def leave_one_run_out(state: PremState, taus: np.ndarray) -> LeaveOneRunOut:
    """Choose tau without peeking: for each run, pick tau on the others and predict the held-out run."""
    valid = _valid_points(state)
    ck = state.checkpoints
    run, y, step = ck.run[valid], ck.test_acc[valid], ck.step[valid]
    premem = _premem_by_tau(state, taus, valid)
    runs = np.unique(run)
    if len(runs) < 3:
        raise ValueError(f"leave-one-run-out needs at least 3 runs with fit points, got {len(runs)}")
    predicted = np.full(len(y), np.nan)
    chosen = np.full(len(y), np.nan)
    tau_by_run: dict[str, float] = {}
    for r in runs:
        held = run == r
        fits = [fit_line(x[~held], y[~held]) for x in premem]
        best = int(np.nanargmax([f.r2 for f in fits]))
        predicted[held] = fits[best].slope * premem[best][held] + fits[best].intercept
        chosen[held] = taus[best]
        tau_by_run[str(state.records.runs[r])] = float(taus[best])
    residual = y - predicted
    ss_tot = ((y - y.mean()) ** 2).sum()
    all_r2 = [fit_line(x, y).r2 for x in premem]
    as_is = np.full(len(y), np.nan)
    tau_by_run_identity: dict[str, float] = {}
    for r in runs:
        held = run == r
        best = int(np.nanargmax([r2_against(y[~held], x[~held]) for x in premem]))
        as_is[held] = premem[best][held]
        tau_by_run_identity[str(state.records.runs[r])] = float(taus[best])
    return LeaveOneRunOut(
        oos_r2_identity=r2_against(y, as_is),
        tau_identity=float(taus[int(np.nanargmax([r2_against(y, x) for x in premem]))]),
        tau_by_run_identity=tau_by_run_identity,
        tau=float(taus[int(np.nanargmax(all_r2))]),
        oos_r2=float(1 - (residual**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        oos_mae=float(np.abs(residual).mean()),
        oos_rmse=float(np.sqrt((residual**2).mean())),
        tau_by_run=tau_by_run,
        predictions=pd.DataFrame({"run_id": state.records.runs[run].astype(str), "step": step, "test_acc": y,
                                  "predicted_test_acc": predicted, "tau": chosen}),
    )


def bootstrap_r2(points: pd.DataFrame, x_col: str = "premem_train_acc", n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile confidence interval for R^2, resampling whole runs with replacement."""
    codes, _ = pd.factorize(points["run_id"])
    n_runs = codes.max() + 1
    rng = np.random.default_rng(seed)
    x, y = points[x_col].to_numpy(float), points["test_acc"].to_numpy(float)
    # Per-run sufficient statistics make each resample O(runs) instead of O(points).
    stats = np.stack([np.bincount(codes, weights=w, minlength=n_runs)
                      for w in (np.ones_like(x), x, y, x * x, y * y, x * y)])
    draws = rng.integers(0, n_runs, size=(n_boot, n_runs))
    weight = np.stack([np.bincount(d, minlength=n_runs) for d in draws])  # (n_boot, n_runs)
    n, sx, sy, sxx, syy, sxy = (weight @ stats.T).T
    with np.errstate(invalid="ignore", divide="ignore"):
        cxx, cyy, cxy = sxx - sx * sx / n, syy - sy * sy / n, sxy - sx * sy / n
        r2 = cxy * cxy / (cxx * cyy)
    r2 = r2[np.isfinite(r2)]
    alpha = (1 - level) / 2
    return float(np.quantile(r2, alpha)), float(np.quantile(r2, 1 - alpha))


def fit_report(state: PremState, tau: float) -> tuple[pd.DataFrame, dict[str, Fit]]:
    """(fit points at tau, fits of test accuracy on premem and the baselines)."""
    points = fit_points(checkpoint_table(state, tau))
    return points, fit_all(points)


# ---------------------------------------------------------------- evaluation budget: a subset of train questions
def train_example_codes(state: PremState) -> np.ndarray:
    """Sorted codes (into state.records.examples) of every example that has an `original` train row."""
    return np.unique(state.records.example[state.rows])


def draw_subsets(state: PremState, n: int, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, n) example codes: each row n distinct train examples, uniformly without replacement.

    One row is one subset for a whole sweep: every run and checkpoint is evaluated on the same questions (a run
    that trained on a fraction of the train set uses the subset's questions it trained on). The generator is
    seeded by (seed, n), so a size's subsets do not depend on which other sizes are asked for.
    """
    examples = train_example_codes(state)
    if not 1 <= n <= len(examples):
        raise ValueError(f"subset size {n} is outside [1, {len(examples)} train examples]")
    if draws < 1:
        raise ValueError(f"draws: {draws} must be >= 1")
    keys = np.random.default_rng([seed, n]).random((draws, len(examples)))
    return examples[np.argsort(keys, axis=1, kind="stable")[:, :n]]


def subset_premem(state: PremState, tau: float, subsets: np.ndarray) -> np.ndarray:
    """(draws, checkpoints) premem train accuracy from only each subset's examples; NaN where a checkpoint has
    none of them. Row d is checkpoint_premem(state, tau)[0] recomputed on the records of subsets[d] alone."""
    n_ckpt, n_examples = len(state.checkpoints.step), len(state.records.examples)
    # premem(i,t) depends only on example i's own history, so a subset is a mask on the per-example values:
    # one dense (checkpoint, example) table, then one matrix product for all draws.
    cell = state.ckpt * n_examples + state.records.example[state.rows]
    sums = np.bincount(cell, weights=example_premem(state, tau), minlength=n_ckpt * n_examples)
    present = np.bincount(cell, minlength=n_ckpt * n_examples).astype(np.float64)
    chosen = np.zeros((len(subsets), n_examples))
    chosen[np.arange(len(subsets))[:, None], subsets] = 1.0
    total = chosen @ sums.reshape(n_ckpt, n_examples).T
    count = chosen @ present.reshape(n_ckpt, n_examples).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def r2_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """fit_line's R^2 of y on each row of x (draws, points), over the points where that row is finite."""
    finite = np.isfinite(x)
    n = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(finite, x - np.where(finite, x, 0).sum(axis=1, keepdims=True) / n[:, None], 0.0)
        dy = np.where(finite, y - (finite * y).sum(axis=1, keepdims=True) / n[:, None], 0.0)
        cxx, cyy, cxy = (dx * dx).sum(axis=1), (dy * dy).sum(axis=1), (dx * dy).sum(axis=1)
        r2 = np.where(cxx > 0, cxy * cxy / (cxx * cyy), 0.0)  # a flat x: slope 0, R^2 = 0, as in fit_line
    return np.where((n >= 2) & (cyy > 0), r2, np.nan)


def subset_r2(state: PremState, tau: float, sizes: Sequence[int | None], draws: int = 200, seed: int = 0,
              level: float = 0.95) -> pd.DataFrame:
    """Per subset size n: median and percentile interval, over `draws` seeded subsets of n train examples, of
    the R^2 of test accuracy on premem train accuracy across all (run, checkpoint) fit points.

    The interval is the spread over which questions are drawn, with the runs and their test accuracies fixed.
    n = None or n >= the number of train examples is "all": one draw, the full records' R^2 (that of
    fit_report), r2_lo = r2_hi = r2_median; fit's own interval (bootstrap_r2, over runs) is another question.
    """
    examples = train_example_codes(state)
    valid = _valid_points(state)
    y = state.checkpoints.test_acc[valid]
    alpha = (1 - level) / 2
    rows = []
    for n in sizes:
        if n is None or n >= len(examples):
            subsets = examples[None, :]
        else:
            subsets = draw_subsets(state, int(n), draws, seed)
        r2 = r2_rows(subset_premem(state, tau, subsets)[:, valid], y)
        r2 = r2[np.isfinite(r2)]
        rows.append({"n": subsets.shape[1], "r2_median": float(np.median(r2)) if len(r2) else np.nan,
                     "r2_lo": float(np.quantile(r2, alpha)) if len(r2) else np.nan,
                     "r2_hi": float(np.quantile(r2, 1 - alpha)) if len(r2) else np.nan, "draws": len(subsets)})
    return pd.DataFrame(rows, columns=["n", "r2_median", "r2_lo", "r2_hi", "draws"])
