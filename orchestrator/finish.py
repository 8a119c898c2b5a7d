"""What the driver does with results: log each evaluated checkpoint, and at the end compute premem per
trial and the cross-run fit from the records, log them to MLflow and summarize for the terminal."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from store import io
from analysis.fit import Fit, fit_all, fit_points
from analysis.premem import checkpoint_table, prepare
from store.names import ORIGINAL, robustness_set
from store.records import load_records
from orchestrator.plan import TrialSpec
from orchestrator.retention import bytes_text, store_bytes
from store.layout import SweepPaths, write_text_atomic
from orchestrator.tracking import NOTE_TAG, Outbox, redact, variant_suffix
from workers.sample import EvalResult


def log_result(outbox: Outbox, mlflow_run_id: str, result: EvalResult) -> None:
    """An evaluated checkpoint: accuracy metrics at its step, its two files."""
    outbox.log_checkpoint(mlflow_run_id, result.step, result.metrics, [result.records_path, result.completions_path],
                           variant=result.variant)


def log_failure(outbox: Outbox, mlflow_run_id: str, paths: SweepPaths, job: dict, line: str, details: str) -> str:
    """A checkpoint whose evaluation failed: one line on the terminal, the traceback in the sweep's logs and
    as an artifact of the trial's MLflow run, the line as a tag. Returns the line."""
    print(f"evaluation FAILED: {line}", flush=True)
    trace = write_text_atomic(paths.error_file(job["run_id"], job["step"], job["variant"]), f"{line}\n\n{details}\n")
    outbox.log_artifacts(mlflow_run_id, [trace], "errors")
    outbox.set_tags(mlflow_run_id, {f"eval_error_step_{job['step']}": line[:4000]})
    return line


@dataclass
class Summary:
    fit: Fit | None
    tau: float
    n_trials: int
    test_acc_range: tuple[float, float]
    plot: Path | None
    failed: dict
    ok: bool  # every trained checkpoint is in the records (a fit that cannot be made is a note, not a failure)
    missing: list[str] = field(default_factory=list)  # trained checkpoints without records: not in the fit
    baselines: dict[str, Fit] = field(default_factory=dict)  # what the paper compares premem with
    robustness: object = None  # DataFrame: accuracy under the sweep's perturbation, binned by premem
    store_bytes: dict = field(default_factory=dict)  # bytes written and kept, by kind (orchestrator.retention)
    evicted: list[str] = field(default_factory=list)  # checkpoints without weights or records of this set
    records_set: str = ORIGINAL  # whose records the fit is of

    def fit_lines(self) -> list[str]:
        """The fit, the baselines beside it, and the spread it was fit on (terminal and run description)."""
        if self.fit is None or self.fit.n_points < 2:
            n = self.fit.n_points if self.fit is not None else 0
            return [f"note: premem R² needs at least 2 evaluated checkpoints with distinct premem train accuracy; "
                    f"this sweep has {n} (more trials or save points give a fit)"]
        lo, hi = self.test_acc_range
        if hi - lo < MIN_TEST_SPREAD:
            return [self.no_spread_line()]
        lines = [f"premem R² = {self.fit.r2_identity:.3f} against y = x (test acc = premem train acc); fitted line "
                 f"R² = {self.fit.r2:.3f} (test acc = {self.fit.slope:.3f} x premem + {self.fit.intercept:.3f}); "
                 f"{self.fit.n_points} checkpoints of {self.n_trials} trials, τ = {self.tau:g}"
                 + ("" if self.records_set == ORIGINAL else f"; records set {self.records_set}")]
        if self.baselines:
            lines.append("baselines: " + ", ".join(f"{BASELINES[k]} R² = {_identity(f)}{f.r2:.3f} fitted"
                                                   for k, f in self.baselines.items()))
        lines.append(f"test accuracy across checkpoints: {lo:.3f} .. {hi:.3f} (spread {hi - lo:.3f})")
        return lines

    def no_spread_line(self) -> str:
        """Why no R² is printed: the checkpoints' test accuracies (nearly) coincide, so R² measures noise."""
        lo, hi = self.test_acc_range
        return (f"no fit: test accuracy spans only {lo:.3f} .. {hi:.3f} across these {self.fit.n_points} checkpoints "
                f"of {self.n_trials} trials (less than {MIN_TEST_SPREAD:g}), so an R² against it would measure noise, "
                "not premem; a sweep whose runs differ in test accuracy gives one")

    def description(self, paths: SweepPaths, plot_artifact: str | None) -> str:
        """The parent run's description in the MLflow UI (markdown): the fit, the baselines, the plot."""
        lines = [f"**premem sweep** `{paths.sweep_id}`: {self.n_trials} trials; store `{paths.sweep}`", ""]
        spread = self.test_acc_range[1] - self.test_acc_range[0]
        if self.fit is not None and self.fit.n_points >= 2 and spread >= MIN_TEST_SPREAD:
            lines += ["| predictor of test accuracy | R² against y = x | R² fitted line | slope | intercept |",
                      "|---|---|---|---|---|",
                      f"| pre-memorization train accuracy (τ = {self.tau:g}) | **{self.fit.r2_identity:.3f}** | "
                      f"{self.fit.r2:.3f} | {self.fit.slope:.3f} | {self.fit.intercept:.3f} |"]
            lines += [f"| {BASELINES[k]} | {f.r2_identity:.3f} | {f.r2:.3f} | {f.slope:.3f} | {f.intercept:.3f} |"
                      for k, f in self.baselines.items()]
            lo, hi = self.test_acc_range
            lines += ["", f"{self.fit.n_points} (run, checkpoint) points; test accuracy {lo:.3f} .. {hi:.3f}."]
        else:
            lines += self.fit_lines()
        if self.robustness is not None:
            table = self.robustness
            lines += ["", f"**Robustness**: accuracy on train questions at each trial's last checkpoint, the "
                      f"answer forced to start with a prefix (variant `{table['variant'].iloc[0]}`), by the "
                      "example's pre-memorization accuracy:", "",
                      "| premem bin | examples | original acc | perturbed acc | drop | retained (perturbed / original) |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {r.premem_bin} | {r.n} | {r.original_acc:.3f} | {r.perturbed_acc:.3f} | {r.acc_drop:+.3f} | "
                      f"{r.retained:.3f} |" for r in table.itertuples()]
        if self.missing:
            lines += ["", f"**Not in the fit**: {len(self.missing)} trained checkpoint(s) without records."]
        if plot_artifact:
            lines += ["", f"![premem vs test accuracy]({plot_artifact})"]
        return "\n".join(lines)

    def text(self, uri: str, paths: SweepPaths, progress=None, urls: tuple[str, str] | None = None) -> str:
        lines = self.fit_lines()
        if self.robustness is not None:
            columns = ["premem_bin", "n", "original_acc", "perturbed_acc", "acc_drop", "retained"]
            lines.append(f"robustness (variant '{self.robustness['variant'].iloc[0]}', train questions, last "
                         f"checkpoints):\n{self.robustness[columns].to_string(index=False, float_format='%.3f')}")
        if self.missing:
            lines.append(f"NOT IN THE FIT: {len(self.missing)} trained checkpoint(s) have no records: "
                         + ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else ""))
        if self.evicted:
            lines.append(f"evicted: {len(self.evicted)} checkpoint(s) lost their weights to store.keep before records "
                         f"set {self.records_set} was asked for, so are not in its fit: "
                         + ", ".join(self.evicted[:6]) + (f" and {len(self.evicted) - 6} more" if len(self.evicted) > 6
                                                          else ""))
        for run_id, error in self.failed.items():
            lines.append(f"FAILED trial {run_id}: {error}")
        if progress is not None:
            import time

            lines.append(f"elapsed: {(time.time() - progress.started) / 60:.1f} min "
                         f"({progress.evaluated} checkpoints evaluated, {progress.eval_failed} failed)")
            missing = progress.trained - progress.evaluated - progress.eval_failed
            if missing > 0:
                lines.append(f"NOT EVALUATED: {missing} of {progress.trained} trained checkpoints never came back "
                             f"from the sampling pool ({progress.monitor_error or 'no result'}); the fit above "
                             f"uses {progress.evaluated} of them")
        lines.append(f"store: {paths.sweep}")
        if self.store_bytes:
            lines.append(bytes_text(self.store_bytes))
        if self.plot:
            lines.append(f"scatter plot: {self.plot}")
        if not uri.startswith("http"):
            lines.append(f"MLflow: mlflow ui --backend-store-uri {redact(uri)}   (then the pages below)")
        if urls:
            lines.append(f"MLflow sweep run: {urls[0]}")
            lines.append(f"MLflow runs:      {urls[1]}")
        elif uri.startswith("http"):
            lines.append(f"MLflow: {redact(uri)}")
        return "\n".join(lines)


MIN_TEST_SPREAD = 0.05  # test accuracy must span at least this across checkpoints for an R² to be printed
BASELINES = {"train_acc": "train accuracy", "ref_nll_mean": "train NLL (reference solutions)"}


def _identity(fit: Fit) -> str:
    """'x against y = x, ' for a predictor on accuracy's scale; nothing for one without an identity line."""
    return "" if np.isnan(fit.r2_identity) else f"{fit.r2_identity:.3f} against y = x, "
PLOT_ARTIFACT = "analysis/premem_vs_test.png"


def finish_sweep(cfg: DictConfig, paths: SweepPaths, specs: list[TrialSpec], outbox: Outbox, parent: str,
                 children: dict[str, str], failed: dict[str, str]) -> Summary:
    """Per-trial premem series on the child runs; R², slope, intercept and the scatter on the parent."""
    from analysis.plots import scatter_premem_vs_test

    tau = float(cfg.sweep.nll_threshold)
    records_set = cfg.sampler.variant  # the records of this command's evaluation settings; never another set's
    suffix = variant_suffix(records_set)
    record_files = trial_record_files(paths, specs, records_set)  # a point dropped from the command is not fitted
    missing, evicted = missing_checkpoints(paths, specs, record_files)
    if not record_files:
        for child in children.values():
            outbox.end_run(child, "FAILED")
        outbox.end_run(parent, "FAILED")
        return Summary(None, tau, len(specs), (np.nan, np.nan), None, failed, ok=False, missing=missing,
                       evicted=evicted, records_set=records_set)
    records = load_records(record_files)
    table = checkpoint_table(prepare(records, records_set), tau)
    for run_id, rows in table.groupby("run_id"):
        if run_id not in children:
            continue
        for row in rows.itertuples():
            outbox.log_metrics(children[run_id], {f"premem_train_acc{suffix}": row.premem_train_acc,
                                                   f"memorized_frac{suffix}": row.memorized_frac}, row.step)
    for run_id, child in children.items():
        outbox.end_run(child, "FAILED" if run_id in failed else "FINISHED")

    points = fit_points(table)
    fits = fit_all(points)
    fit, baselines = fits["premem_train_acc"], {k: fits[k] for k in BASELINES}
    points_file = write_text_atomic(analysis_file(paths, records_set, "points.csv"), points.to_csv(index=False))
    plot = None
    if fit.n_points >= 2:
        color_key = cfg.sweep.color_by or (next(iter(specs[0].grid_values), None) if specs else None)
        color = None
        if color_key:
            import pandas as pd

            # a grid value (a curation round's strategy is one, not a config field), else the trial's config
            color = pd.Series({s.run_id: s.grid_values[color_key] if color_key in s.grid_values
                               else s.select(color_key) for s in specs})
        with tempfile.TemporaryDirectory(prefix="premem-plot-") as tmp:  # matplotlib writes local files
            local_plot = scatter_premem_vs_test(points, fit, tau, Path(tmp) / "premem_vs_test.png", color,
                                                color_key or "", {BASELINES[k]: f for k, f in baselines.items()})
            plot = io.write_bytes(analysis_file(paths, records_set, "premem_vs_test.png"), local_plot.read_bytes())
        values = {"premem_r2_identity": fit.r2_identity, "premem_r2": fit.r2, "premem_slope": fit.slope,
                  "premem_intercept": fit.intercept, "premem_n_points": fit.n_points,
                  "premem_n_missing": len(missing), "nll_threshold": tau,
                  "train_acc_r2_identity": baselines["train_acc"].r2_identity,
                  "train_acc_r2": baselines["train_acc"].r2, "train_nll_r2": baselines["ref_nll_mean"].r2}
        outbox.log_metrics(parent, {f"{k}{suffix}": v for k, v in values.items()},
                            fit_step(paths, specs, records_set))
        if missing:
            outbox.set_tags(parent, {f"premem.missing_checkpoints{suffix}": ", ".join(missing)[:4000]})
        outbox.log_artifacts(parent, [plot, points_file], "analysis" if records_set == ORIGINAL
                              else f"analysis/{records_set}")
    acc = points["test_acc"] if len(points) else table["test_acc"]
    summary = Summary(fit, tau, len(specs), (float(acc.min()), float(acc.max())), plot, failed,
                      ok=not missing, missing=missing, baselines=baselines, evicted=evicted, records_set=records_set)
    variant = robustness_set(cfg.sweep.robustness_variant, records_set) if cfg.sweep.robustness_variant else ""
    if variant and trial_record_files(paths, specs, variant):
        summary.robustness = robustness_table(paths, specs, tau, variant, outbox, parent, records_set)
    # the UI serves a run's artifacts at get-artifact, relative to its own address
    artifact = PLOT_ARTIFACT if records_set == ORIGINAL else PLOT_ARTIFACT.replace("/", f"/{records_set}/")
    image = f"get-artifact?path={artifact.replace('/', '%2F')}&run_uuid={parent}" if plot else None
    summary.store_bytes = store_bytes(paths)  # measured: after the robustness pass and every eviction
    outbox.log_metrics(parent, summary.store_bytes, fit_step(paths, specs, records_set))
    outbox.set_tags(parent, {NOTE_TAG: summary.description(paths, image)})
    outbox.end_run(parent, "FAILED" if failed else "FINISHED")
    return summary


def analysis_file(paths: SweepPaths, records_set: str, name: str) -> str:
    """Where a fit's file goes: <sweep>/analysis/ for the original records set, analysis/<set>/ for another."""
    return paths.file("analysis", name) if records_set == ORIGINAL else paths.file("analysis", records_set, name)


def fit_step(paths: SweepPaths, specs: list[TrialSpec], records_set: str = ORIGINAL) -> int:
    """The parent run's step for this fit's metrics: 0 for the sweep's first, one more each time a rerun fits
    another set of trials (a grown grid). MLflow shows a metric's newest step, and a step is written once, so
    rerunning the same command logs nothing twice. Each records set counts its own fits."""
    location = analysis_file(paths, records_set, "fits.json")
    fits = json.loads(io.read_text(location)) if io.is_file(location) else []
    trials = sorted(spec.run_id for spec in specs)
    if not fits or fits[-1] != trials:
        fits.append(trials)
        write_text_atomic(location, json.dumps(fits, indent=1))
    return len(fits) - 1


def trial_record_files(paths: SweepPaths, specs: list[TrialSpec], variant: str) -> list[str]:
    """The records of `variant` of these trials (a sweep dir may hold trials that the command no longer names)."""
    run_ids = {spec.run_id for spec in specs}
    return [f for f in paths.record_files(variant) if io.name(io.parent(f)) in run_ids]


def robustness_table(paths: SweepPaths, specs: list[TrialSpec], tau: float, variant: str, outbox: Outbox,
                     parent: str, records_set: str = ORIGINAL):
    """Accuracy under the variant binned by premem (of `records_set`), saved and logged on the parent run."""
    from analysis.curate import robustness

    files = trial_record_files(paths, specs, records_set) + trial_record_files(paths, specs, variant)
    table = robustness(prepare(load_records(files), records_set), tau)
    out = write_text_atomic(paths.file("analysis", f"robustness_{variant}.json"),
                            json.dumps(table.to_dict(orient="records"), indent=1))
    outbox.log_artifacts(parent, [out], "analysis")
    return table


def missing_checkpoints(paths: SweepPaths, specs: list[TrialSpec],
                        record_files: list[str]) -> tuple[list[str], list[str]]:
    """'run R step N' for each checkpoint Ray Train registered that has no records in `record_files`: those
    still with weights (missing: an evaluation that failed or never came back), and those store.keep evicted
    before these records were asked for (another records set's retention: they cannot be evaluated)."""
    from orchestrator.retention import evicted

    have = {(io.name(io.parent(f)), io.name(f).split(".")[0]) for f in record_files}
    lacking = [(spec.run_id, c) for spec in specs for c in paths.trial_checkpoints(spec.run_id)
               if (spec.run_id, io.name(c)) not in have]
    name = lambda run_id, c: f"run {run_id} step {int(io.name(c).removeprefix('step_'))}"  # noqa: E731
    return ([name(r, c) for r, c in lacking if not evicted(c)], [name(r, c) for r, c in lacking if evicted(c)])
