"""python -m analysis {fit,curate,robustness,subset}: the paper's results from per-example records.

Exit code 2 with one line naming the file, column and row for bad input; nothing is written then.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.curate import curation_picks, robustness, write_jsonl
from analysis.fit import (DEFAULT_TAUS, PREDICTORS, bootstrap_r2, fit_report, leave_one_run_out, r2_curve,
                          subset_r2, train_example_codes)
from analysis.premem import PremState, example_table, prepare
from store.records import RecordsError, load_records
from analysis.sources import read_runs_table, records_from_mlflow


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    src = common.add_argument_group("records source (one of)")
    src.add_argument("--records", nargs="+", metavar="PATH", help="Parquet files and/or directories (recursive)")
    src.add_argument("--mlflow-parent-run", metavar="RUN_ID", help="a sweep's parent run: its trials' records")
    src.add_argument("--mlflow-experiment", metavar="NAME", help="every run in this experiment with records")
    common.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow tracking URI for the MLflow sources and --mlflow-run")
    common.add_argument("--nll-threshold", type=float, metavar="TAU",
                        help="memorization threshold τ on ref_nll; default: chosen by leave-one-run-out")
    common.add_argument("--mlflow-run", metavar="RUN_ID", help="log the numbers and plots on this MLflow run")

    fit = sub.add_parser("fit", parents=[common], help="R² of test accuracy on premem train accuracy")
    fit.add_argument("--json", required=True, metavar="OUT.json")
    fit.add_argument("--plots", metavar="DIR", help="write PNG figures here")
    fit.add_argument("--taus", type=float, nargs="+", help="threshold grid for the R²(τ) curve and the choice")
    fit.add_argument("--bootstrap", type=int, default=1000, help="run resamples for the R² interval (0: off)")
    fit.add_argument("--runs-table", help="run parameters (Parquet/CSV/JSONL with run_id) for colouring")
    fit.add_argument("--color-by", help="run parameter that colours the scatter (e.g. lr)")

    cur = sub.add_parser("curate", parents=[common], help="lowest-premem train examples as JSONL")
    cur.add_argument("--out", required=True, metavar="OUT.jsonl")
    how = cur.add_mutually_exclusive_group()
    how.add_argument("--count", type=int)
    how.add_argument("--fraction", type=float)
    cur.add_argument("--step", type=int, help="checkpoint step (default: each run's last)")
    cur.add_argument("--run", help="only this run_id (default: mean over runs)")
    cur.add_argument("--plots", metavar="DIR", help="write the per-example picture of --run (or the first run)")

    rob = sub.add_parser("robustness", parents=[common], help="accuracy under prompt variants, by premem bin")
    rob.add_argument("--json", required=True, metavar="OUT.json")

    subs = sub.add_parser("subset", parents=[common],
                          help="premem R² when each checkpoint is evaluated on n seeded train questions only")
    subs.add_argument("--json", required=True, metavar="OUT.json")
    subs.add_argument("--sizes", nargs="+", default=["250", "500", "1000", "2000", "all"], metavar="N",
                      help="train questions per checkpoint; 'all' for the whole train set")
    subs.add_argument("--draws", type=int, default=200, help="seeded subsets per size (the interval's resamples)")
    subs.add_argument("--seed", type=int, default=0)
    subs.add_argument("--bootstrap", type=int, default=1000,
                      help="run resamples for fit's interval on the full records, for comparison (0: off)")
    return parser


def _records_source(args: argparse.Namespace, workdir: Path) -> tuple[list, pd.DataFrame | None]:
    chosen = [bool(args.records), bool(args.mlflow_parent_run), bool(args.mlflow_experiment)]
    if sum(chosen) != 1:
        raise RecordsError("give exactly one of --records, --mlflow-parent-run, --mlflow-experiment")
    if args.records:
        return args.records, None
    if not args.tracking_uri:
        raise RecordsError("--tracking-uri (or MLFLOW_TRACKING_URI) is needed to read records from MLflow")
    return records_from_mlflow(args.tracking_uri, args.mlflow_parent_run, args.mlflow_experiment, str(workdir))


def _choose_tau(args: argparse.Namespace, state: PremState, taus: np.ndarray) -> tuple[float, dict]:
    if args.nll_threshold is not None:
        if not args.nll_threshold > 0:
            raise RecordsError(f"--nll-threshold: {args.nll_threshold} must be > 0")
        return args.nll_threshold, {}
    # τ is chosen by the identity line's R² (premem = test accuracy, the paper's measure and the one reported
    # first); the fitted line's choice and its out-of-sample figures stay beside it
    loro = leave_one_run_out(state, taus)
    return loro.tau_identity, {"threshold_choice": "leave_one_run_out", "oos_r2_identity": loro.oos_r2_identity,
                               "tau_identity": loro.tau_identity, "tau_by_run": loro.tau_by_run_identity,
                               "tau_fitted": loro.tau, "oos_r2": loro.oos_r2, "oos_mae": loro.oos_mae,
                               "oos_rmse": loro.oos_rmse, "tau_by_run_fitted": loro.tau_by_run}


def _atomic_json(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def run_fit(args: argparse.Namespace, state: PremState, params: pd.DataFrame | None, staging: Path) -> dict:
    taus = np.array(sorted(args.taus or DEFAULT_TAUS), dtype=float)
    tau, choice = _choose_tau(args, state, taus)
    points, fits = fit_report(state, tau)
    premem_fit = fits["premem_train_acc"]
    result = {"tau": tau, **premem_fit.to_dict(), **choice,  # r2_identity first: the paper's measure
              "baselines": {name: fits[name].to_dict() for name in PREDICTORS[1:]}}
    if args.bootstrap > 0 and points["run_id"].nunique() > 1:
        lo, hi = bootstrap_r2(points, n_boot=args.bootstrap)
        result["r2_ci95"] = [lo, hi]
    curve = r2_curve(state, taus)
    result["r2_by_tau"] = curve[["tau", "r2_identity", "r2"]].to_dict(orient="records")
    result["points"] = points[["run_id", "step", "epoch", "premem_train_acc", "test_acc", "train_acc",
                               "ref_nll_mean", "memorized_frac"]].to_dict(orient="records")
    if args.plots:
        color = None
        if args.runs_table:
            params = read_runs_table(args.runs_table)
        if args.color_by:
            if params is None or args.color_by not in params.columns:
                raise RecordsError(f"--color-by: no run parameter {args.color_by!r} (give --runs-table or an MLflow source)")
            color = params.drop_duplicates("run_id").set_index("run_id")[args.color_by]
        plots.scatter_premem_vs_test(points, premem_fit, tau, staging / "premem_vs_test.png", color, args.color_by or "",
                                     {name: fits[name] for name in ("train_acc", "ref_nll_mean")})
        plots.r2_vs_threshold(curve, staging / "r2_vs_tau.png", tau,
                              {name: fits[name].r2 for name in PREDICTORS[1:]})
    _atomic_json(result, staging / Path(args.json).name)
    return result


def run_curate(args: argparse.Namespace, state: PremState, staging: Path) -> dict:
    tau = args.nll_threshold if args.nll_threshold is not None else _choose_tau(args, state, np.array(DEFAULT_TAUS))[0]
    picks = curation_picks(state, tau, count=args.count, fraction=args.fraction, step=args.step, run_id=args.run)
    write_jsonl(picks, staging / Path(args.out).name)
    if args.plots:
        run_id = args.run or str(state.records.runs[state.checkpoints.run[0]])
        plots.example_picture(example_table(state, tau), run_id, staging / "examples.png")
    return {"tau": tau, "n_picked": len(picks)}


def run_robustness(args: argparse.Namespace, state: PremState, staging: Path) -> dict:
    tau = args.nll_threshold if args.nll_threshold is not None else _choose_tau(args, state, np.array(DEFAULT_TAUS))[0]
    table = robustness(state, tau)
    result = {"tau": tau, "bins": table.to_dict(orient="records")}
    _atomic_json(result, staging / Path(args.json).name)
    print(table.to_string(index=False))
    return result


def _subset_sizes(sizes: list[str]) -> list[int | None]:
    out: list[int | None] = []
    for size in sizes:
        if size == "all":
            out.append(None)
        elif size.isdigit() and int(size) >= 1:
            out.append(int(size))
        else:
            raise RecordsError(f"--sizes: {size!r} is not a positive integer or 'all'")
    return out


def run_subset(args: argparse.Namespace, state: PremState, staging: Path) -> dict:
    sizes = _subset_sizes(args.sizes)
    if args.draws < 1:
        raise RecordsError(f"--draws: {args.draws} must be >= 1")
    tau = _choose_tau(args, state, np.array(DEFAULT_TAUS))[0]  # checks a given --nll-threshold, as fit does
    table = subset_r2(state, tau, sizes, draws=args.draws, seed=args.seed)
    points, fits = fit_report(state, tau)
    result = {"tau": tau, "draws": args.draws, "seed": args.seed,
              "n_train_examples": len(train_example_codes(state)), "n_points": len(points),
              "full_r2": fits["premem_train_acc"].r2, "table": table.to_dict(orient="records")}
    if args.bootstrap > 0 and points["run_id"].nunique() > 1:
        result["full_r2_ci95_runs"] = list(bootstrap_r2(points, n_boot=args.bootstrap))
    _atomic_json(result, staging / Path(args.json).name)
    n_all = result["n_train_examples"]
    shown = table.assign(n=[f"all ({n})" if n == n_all else str(n) for n in table.n])
    print(f"premem R² at τ = {tau:g} over {len(points)} checkpoints with n train questions per checkpoint "
          f"({args.draws} seeded subsets per n; r2_lo, r2_hi: 2.5% and 97.5% over subsets):")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if "full_r2_ci95_runs" in result:
        lo, hi = result["full_r2_ci95_runs"]
        print(f"fit's interval on all questions, resampling runs: [{lo:.4f}, {hi:.4f}]")
    return result


def _publish(staging: Path, args: argparse.Namespace) -> list[Path]:
    """Move finished outputs from the staging directory to where the user asked for them."""
    moved = []
    targets = {Path(p).name: Path(p) for p in (getattr(args, "json", None), getattr(args, "out", None)) if p}
    for f in sorted(staging.iterdir()):
        dest = targets.get(f.name) or Path(args.plots) / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(f), dest)
        moved.append(dest)
    return moved


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="premem-analysis-") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        try:
            paths, params = _records_source(args, Path(tmp))
            state = prepare(load_records(paths))
            if args.command == "fit":
                result = run_fit(args, state, params, staging)
                print(f"R² against y = x (test acc = premem) = {result['r2_identity']:.4f}, fitted line R² = "
                      f"{result['r2']:.4f}, at τ = {result['tau']:g} over {result['n_points']} checkpoints"
                      + (f", τ chosen by y = x; out-of-sample R² (τ by leave-one-run-out): y = x "
                         f"{result['oos_r2_identity']:.4f}, fitted {result['oos_r2']:.4f} (its τ on all runs "
                         f"{result['tau_fitted']:g})" if "oos_r2" in result else ""))
                for name, fit in result["baselines"].items():
                    print(f"  baseline {name}: R² against y = x {fit['r2_identity']:.4f}, fitted line {fit['r2']:.4f}")
            elif args.command == "curate":
                result = run_curate(args, state, staging)
            elif args.command == "subset":
                result = run_subset(args, state, staging)
            else:
                result = run_robustness(args, state, staging)
        except (RecordsError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        outputs = _publish(staging, args)
        if args.mlflow_run:
            from analysis.tracking import log_analysis

            log_analysis(args.tracking_uri, args.mlflow_run, result, outputs)
        for path in outputs:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
