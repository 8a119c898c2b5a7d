"""Benchmark: issue 37's speed targets in one table, from the benches' own results and, with --fresh-clone, a
fresh clone of this repository timed from nothing.

- fixed cost per trial (start-up + setup, median) beside a bare TorchTrainer: bench_trial.json
  (`python -m bench.trial_overhead`);
- the default sweep over a cached base model (the command's wall time) and its checkpoint-to-records latency:
  bench.json (`python -m bench.evaluation`, its sweep part);
- --fresh-clone: `git clone` of HEAD into a new directory, then `make setup` (the install), `make sweep` (base
  model built, then the sweep: the first fit) and `make test`, each timed, and the test phases' own times from
  pytest's summary lines. pip's download cache is this machine's: a machine that never installed the packages
  also downloads them.
Prints the table and writes BENCH_TARGETS_OUT (default bench_targets.json).
    python -m bench.targets [--fresh-clone] [--bench bench.json] [--bench-trial bench_trial.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"fixed_seconds": 8.0, "sweep_minutes": 5.0, "first_fit_minutes": 10.0,
           "checkpoint_to_records_median_s": 60.0, "fresh_clone_test_minutes": 30.0}
PYTEST_SUMMARY = re.compile(r"^=*\s*(\d+) passed.* in ([\d.]+)s")
BASE_BUILD = re.compile(r"base model: step (\d+)/\1 loss [\d.]+ \((\d+)s\)")
SWEEP_ELAPSED = re.compile(r"^elapsed: ([\d.]+) min")


def timed(command: list[str], cwd: Path, log: Path) -> tuple[float, str]:
    """Run `command`, its output to `log` as well; its wall time and output (CalledProcessError if it fails)."""
    started = time.time()
    done = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    log.write_text(done.stdout)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout[-4000:])
    return time.time() - started, done.stdout


def fresh_clone(workdir: Path) -> dict:
    """Install, first fit and the whole suite in a fresh clone of HEAD, each timed."""
    clone = workdir / "premem"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():  # the paper's records, which some tests read from ../shared
        (workdir / "shared").symlink_to(shared, target_is_directory=True)
    setup_s, _ = timed(["make", "setup"], clone, workdir / "setup.log")
    sweep_s, sweep_out = timed(["make", "sweep", f"ARGS=store.root={workdir / 'store'}"], clone, workdir / "sweep.log")
    base = BASE_BUILD.search(sweep_out)
    elapsed = next((float(m.group(1)) for line in sweep_out.splitlines() if (m := SWEEP_ELAPSED.match(line))), None)
    test_s, test_out = timed(["make", "test"], clone, workdir / "test.log")
    phases = [(int(m.group(1)), float(m.group(2))) for line in test_out.splitlines()
              if (m := PYTEST_SUMMARY.match(line))]
    return {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, text=True,
                                     capture_output=True).stdout.strip(),
            "setup_seconds": setup_s, "first_fit_seconds": setup_s + sweep_s, "make_sweep_seconds": sweep_s,
            "base_build_seconds": float(base.group(2)) if base else None, "sweep_elapsed_minutes": elapsed,
            "make_test_seconds": test_s, "fresh_clone_test_seconds": setup_s + test_s,
            "test_phases": [{"passed": n, "seconds": s} for n, s in phases], "logs": str(workdir)}


def table(bench: dict, trial: dict, clone: dict | None) -> list[tuple[str, str, str]]:
    """(what, measured, target) rows."""
    rows = []
    if trial:
        now = trial["variants"].get("now") or next(iter(trial["variants"].values()))
        rows.append(("fixed cost per trial, median (start-up + setup)",
                     f"{now['fixed_seconds']:.1f} s ({now['fixed_over_bare']:.1f}x a bare TorchTrainer's "
                     f"{now['bare_seconds']:.1f} s)", f"<= {TARGETS['fixed_seconds']:.0f} s"))
    sweep = bench.get("sweep") or {}
    if sweep.get("command_seconds"):
        rows.append(("default sweep over its cached base model (the command)",
                     f"{sweep['command_seconds'] / 60:.1f} min", f"<= {TARGETS['sweep_minutes']:.0f} min"))
    if sweep.get("checkpoint_to_records_median_s") is not None:
        rows.append(("checkpoint-to-records, median (max)",
                     f"{sweep['checkpoint_to_records_median_s']:.0f} s ({sweep['checkpoint_to_records_max_s']:.0f} s)",
                     f"<= {TARGETS['checkpoint_to_records_median_s']:.0f} s"))
    if clone:
        base = f"{clone['base_build_seconds']:.0f} s" if clone["base_build_seconds"] is not None else "?"
        rows.append(("first fit from a fresh clone (install, base model, sweep)",
                     f"{clone['first_fit_seconds'] / 60:.1f} min (install {clone['setup_seconds'] / 60:.1f} min, "
                     f"make sweep {clone['make_sweep_seconds'] / 60:.1f} min: base model {base} inside its "
                     f"summary's elapsed {clone['sweep_elapsed_minutes']} min)",
                     f"<= {TARGETS['first_fit_minutes']:.0f} min"))
        rows.append(("fresh-clone make test (install included)",
                     f"{clone['fresh_clone_test_seconds'] / 60:.1f} min (" + ", ".join(
                         f"{p['passed']} passed in {p['seconds'] / 60:.1f} min" for p in clone["test_phases"]) + ")",
                     f"<= {TARGETS['fresh_clone_test_minutes']:.0f} min"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", type=Path, default=Path(os.environ.get("BENCH_OUT", "bench.json")))
    parser.add_argument("--bench-trial", type=Path, default=Path(os.environ.get("BENCH_TRIAL_OUT", "bench_trial.json")))
    parser.add_argument("--fresh-clone", action="store_true", help="also time install, first fit and make test "
                        "in a fresh clone of HEAD (about 45 minutes on 2 cores)")
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text()) if args.bench.is_file() else {}
    trial = json.loads(args.bench_trial.read_text()) if args.bench_trial.is_file() else {}
    clone = fresh_clone(Path(tempfile.mkdtemp(prefix="premem-fresh-clone-"))) if args.fresh_clone else None
    rows = table(bench, trial, clone)
    width = max(len(r[0]) for r in rows) if rows else 0
    for what, measured, target in rows:
        print(f"{what:<{width}}  {measured}   target {target}")
    out = Path(os.environ.get("BENCH_TARGETS_OUT", "bench_targets.json"))
    out.write_text(json.dumps({"rows": rows, "fresh_clone": clone, "bench": str(args.bench),
                               "bench_trial": str(args.bench_trial)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
