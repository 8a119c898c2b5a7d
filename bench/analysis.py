"""Benchmark: `python -m analysis fit` on generated record sets of 2M..20M rows.

Runs the real CLI in a subprocess per size (a fixed τ, and once with leave-one-run-out τ choice on the
largest), repeats each 3 times, and reports median wall time and peak RSS. Writes BENCH_OUT (default
bench_analysis.json).
    python -m bench.analysis [--sizes 2 5 10 20] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_RUNS, N_CKPTS = 50, 10


def generate(path: Path, n_rows: int, seed: int = 0) -> None:
    """50 runs x 10 checkpoints x (n_rows / 500) examples, half train and half test, one file per run."""
    per_ckpt = n_rows // (N_RUNS * N_CKPTS)
    n_train = per_ckpt // 2
    n_test = per_ckpt - n_train
    rng = np.random.default_rng(seed)
    example_ids = pa.array([f"train-{i}" for i in range(n_train)] + [f"test-{i}" for i in range(n_test)])
    split = pa.array(["train"] * n_train + ["test"] * n_test).dictionary_encode()
    path.mkdir(parents=True, exist_ok=True)
    for r in range(N_RUNS):
        speed = rng.uniform(0.2, 1.5)
        skill = rng.uniform(0.05, 0.7, per_ckpt)
        chunks = []
        for c in range(N_CKPTS):
            p = np.clip(skill * (1 + 0.08 * c * speed), 0, 1)
            nll = rng.gamma(2.0, 0.3, n_train) * np.exp(-0.3 * speed * c)
            chunks.append(pa.table({
                "run_id": pa.array(np.full(per_ckpt, f"run{r:03d}")).dictionary_encode(),
                "step": np.full(per_ckpt, (c + 1) * 100, np.int64),
                "epoch": np.full(per_ckpt, float(c + 1)),
                "split": split,
                "example_id": example_ids.dictionary_encode(),
                "n_samples": np.full(per_ckpt, 5, np.int64),
                "n_correct": rng.binomial(5, p).astype(np.int64),
                "ref_nll": np.concatenate([nll, np.full(n_test, np.nan)]),
                "variant": pa.array(np.full(per_ckpt, "original")).dictionary_encode(),
            }))
        pq.write_table(pa.concat_tables(chunks), path / f"run{r:03d}.parquet")


def measure(records: Path, out: Path, tau: float | None, repeats: int) -> dict:
    walls, peaks = [], []
    for _ in range(repeats):
        cmd = [sys.executable, "-m", "analysis", "fit", "--records", str(records), "--json", str(out),
               "--bootstrap", "1000"] + (["--nll-threshold", str(tau)] if tau is not None else [])
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        if status:
            raise RuntimeError(proc.stderr.read().decode())
        peaks.append(usage.ru_maxrss / 1024**2)  # KiB -> GiB
    return {"median_s": statistics.median(walls), "runs_s": walls, "peak_rss_gb": max(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10, 20], help="millions of rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="premem-bench-") as tmp:
        for millions in args.sizes:
            records = Path(tmp) / f"r{millions}"
            t0 = time.perf_counter()
            generate(records, millions * 1_000_000)
            gen = time.perf_counter() - t0
            fixed = measure(records, Path(tmp) / "fit.json", 0.1, args.repeats)
            results[f"{millions}M"] = {"rows": millions * 1_000_000, "generate_s": gen, "fit_fixed_tau": fixed}
            print(f"{millions:>3}M rows: fit (τ=0.1) median {fixed['median_s']:.2f}s, peak RSS "
                  f"{fixed['peak_rss_gb']:.2f} GB", flush=True)
            if millions == max(args.sizes):
                loro = measure(records, Path(tmp) / "fit.json", None, args.repeats)
                results[f"{millions}M"]["fit_loro_tau"] = loro
                print(f"{millions:>3}M rows: fit (τ by leave-one-run-out, 41 thresholds) median "
                      f"{loro['median_s']:.2f}s, peak RSS {loro['peak_rss_gb']:.2f} GB", flush=True)
            import shutil

            shutil.rmtree(records)
    out = Path(os.environ.get("BENCH_OUT", "bench_analysis.json"))
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
