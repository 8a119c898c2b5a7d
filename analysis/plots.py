"""PNG figures: premem vs test accuracy, R^2 vs threshold, and the per-example picture."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.fit import Fit  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def scatter_premem_vs_test(points: pd.DataFrame, fit: Fit, tau: float, path: Path,
                           color_by: pd.Series | None = None, color_label: str = "",
                           baselines: dict[str, Fit] | None = None) -> Path:
    """Each (run, checkpoint) a point, connected along its run; the identity line y = x and the fitted line, with
    their R^2 in the title (the identity's first), and under it the baseline predictors' ({name: Fit}) on the
    same points."""
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    run_values = color_by if color_by is not None else None
    numeric = run_values is not None and pd.api.types.is_numeric_dtype(run_values)
    if run_values is not None:
        levels = sorted(run_values.dropna().unique())
        if numeric and len(levels) > 1 and min(levels) > 0 and max(levels) / min(levels) >= 5:
            norm = matplotlib.colors.LogNorm(min(levels), max(levels))
        else:
            norm = matplotlib.colors.Normalize(0, max(len(levels) - 1, 1)) if not numeric else \
                matplotlib.colors.Normalize(min(levels), max(levels) if max(levels) > min(levels) else min(levels) + 1)
        cmap = plt.get_cmap("viridis")
    for run_id, run_points in points.sort_values("step").groupby("run_id", sort=True):
        if run_values is not None and run_id in run_values.index and pd.notna(run_values[run_id]):
            v = run_values[run_id]
            color = cmap(norm(v if numeric else levels.index(v)))
        else:
            color = "tab:blue"
        ax.plot(run_points["premem_train_acc"], run_points["test_acc"], "-o", color=color, ms=4, lw=1, alpha=0.85)
    lo, hi = 0.0, max(1e-9, float(points["premem_train_acc"].max()))
    xs = np.linspace(lo, hi * 1.05, 50)
    top = max(hi, float(points["test_acc"].max()), 1e-9) * 1.05
    ax.plot([0, top], [0, top], "-", color="tab:red", lw=1.2, alpha=0.8,
            label=f"test = premem (y = x): R² = {fit.r2_identity:.3f}")
    ax.plot(xs, fit.slope * xs + fit.intercept, "--", color="black", lw=1.2,
            label=f"fitted: test = {fit.slope:.3f} x premem + {fit.intercept:.3f}: R² = {fit.r2:.3f}")
    if run_values is not None:
        sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        bar = fig.colorbar(sm, ax=ax)
        bar.set_label(color_label)
        if not numeric:
            bar.set_ticks(range(len(levels)), labels=[str(v) for v in levels])
        elif len(levels) <= 6:  # a few values: label each one plainly (a log scale would print 10^0 and the like)
            bar.set_ticks(levels, labels=[f"{v:g}" for v in levels])
            bar.ax.minorticks_off()
    ax.set_xlabel(f"pre-memorization train accuracy (τ = {tau:g})")
    ax.set_ylabel("test accuracy")
    title = (f"premem R² = {fit.r2_identity:.3f} against y = x, {fit.r2:.3f} fitted  ({fit.n_points} checkpoints, "
             f"{points['run_id'].nunique()} runs)")
    if baselines:
        title += "\nvs " + ", ".join(
            f"{name} R² = " + ("" if np.isnan(f.r2_identity) else f"{f.r2_identity:.3f} (y = x), ") + f"{f.r2:.3f} fitted"
            for name, f in baselines.items())
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def r2_vs_threshold(curve: pd.DataFrame, path: Path, chosen_tau: float | None = None,
                    baselines: dict[str, float] | None = None) -> Path:
    """R^2 of test accuracy on premem as a function of the memorization threshold τ."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if "r2_identity" in curve:
        ax.plot(curve["tau"], curve["r2_identity"], "-o", ms=3, color="tab:purple", label="premem: against y = x")
    ax.plot(curve["tau"], curve["r2"], "-o", ms=3, label="premem: fitted line")
    for i, (name, r2) in enumerate((baselines or {}).items()):
        ax.axhline(r2, ls=":", color=f"C{i + 1}", label=f"{name} (no τ)")
    if chosen_tau is not None:
        ax.axvline(chosen_tau, color="black", ls="--", lw=1, label=f"chosen τ = {chosen_tau:g}")
    ax.set_xscale("log")
    ax.set_xlabel("memorization threshold τ on reference NLL")
    ax.set_ylabel("R² (test accuracy)")
    values = np.concatenate([curve[c].to_numpy(float) for c in ("r2", "r2_identity") if c in curve])
    finite = values[np.isfinite(values)]
    # y = x can be far below 0 at thresholds that memorize everything: the axis stops at -1
    ax.set_ylim(max(-1.0, min(0.0, float(finite.min()))) if len(finite) else 0.0, 1.0)
    ax.set_title("R² of test accuracy vs memorization threshold")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def example_picture(table: pd.DataFrame, run_id: str, path: Path, max_examples: int = 200) -> Path:
    """Examples x checkpoints for one run: accuracy as colour, memorized cells marked."""
    run = table[table["run_id"] == run_id]
    acc = run.pivot_table(index="example_id", columns="step", values="acc", observed=True)
    mem = run.pivot_table(index="example_id", columns="step", values="memorized", observed=True)
    prem = run.pivot_table(index="example_id", columns="step", values="premem", observed=True)
    order = prem.iloc[:, -1].sort_values(kind="stable").index  # lowest final premem on top
    if len(order) > max_examples:  # evenly spaced rows keep the whole range visible
        order = order[np.linspace(0, len(order) - 1, max_examples).astype(int)]
    acc, mem = acc.loc[order], mem.loc[order].astype(float)
    fig, axes = plt.subplots(1, 2, figsize=(9, 6), sharey=True)
    im = axes[0].imshow(acc.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("accuracy of own samples")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[1].imshow(mem.to_numpy(), aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title("memorized (ref NLL < τ) in red")
    for ax in axes:
        ax.set_xticks(range(acc.shape[1]), labels=[str(s) for s in acc.columns], rotation=90, fontsize=7)
        ax.set_xlabel("checkpoint step")
    axes[0].set_ylabel(f"train examples ({len(order)} shown, sorted by final premem)")
    axes[0].set_yticks([])
    fig.suptitle(f"Per-example learning dynamics: {run_id}", fontsize=10)
    return _save(fig, path)


def data_efficiency(curves: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Test accuracy against examples added, one line per strategy: the mean over seeds, a band of ±1 std."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colors = {"premem": "C3", "iid": "black", "ifd": "C1", "longest": "C4", "low_train_acc": "C0",
              "high_ref_nll": "C2"}
    for i, (strategy, rows) in enumerate(curves.groupby("strategy", sort=False)):
        rows = rows.sort_values("examples_added")
        x, y, s = rows["examples_added"], rows["test_acc"], rows["std"]
        style = dict(color=colors.get(strategy, f"C{i + 4}"), ls="--" if strategy == "iid" else "-")
        ax.plot(x, y, marker="o", ms=4, lw=1.5, label=f"{strategy} ({int(rows['n_seeds'].max())} seeds)", **style)
        ax.fill_between(x, y - s, y + s, alpha=0.15, color=style["color"])
    ax.set_xlabel("examples added to the training data")
    ax.set_ylabel("final test accuracy (mean ± std over seeds)")
    ax.set_title(title or "Data efficiency of curation strategies", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)
