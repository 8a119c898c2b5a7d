"""Benchmark: per-example evaluation, measured side by side in one process run.

(1) reference-NLL tokens/s: the batched, length-bucketed scorer vs one forward pass per example (the paper's loop);
(2) sampled completions/s: batched HF sampling (k return sequences, left padding, token-budget batches)
    vs per-prompt `generate`;
(3) the default sweep: checkpoint-to-records latency and orchestration overhead per trial (trial wall time
    not spent in training steps) as a fraction of trial time;
(4) the vLLM engine vs the HF pool vs the per-example loop, tiny and ~100M-parameter models; vLLM cold start,
    in-place swap, swapped-vs-fresh greedy agreement, NLL difference from the HF scorer (bench/backends.py);
(5) MATH grading answers/s and its share of evaluation time, and the seconds one answer sympy cannot decide
    costs at the grader's time limit (bench/grading.py);
(6) the store's cost per checkpoint (upload, fetch, records write), local path vs S3 server (bench/store.py).
Medians of --repeats runs. Prints a table and writes BENCH_OUT (default bench.json).
    python -m bench.evaluation [--repeats 3] [--sweep-dir runs/sweeps/X | --no-sweep] [--no-vllm]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from orchestrator.config import compose_config
from orchestrator.sweep import ensure_base_model
from workers.backends import SamplingSettings
from workers.backends.hf import HFBackend
from workers.tasks import PromptFormat, load_task, task_args
from workers.tokens import encode_pair

from bench.baselines import naive_sample, naive_score, timed


def bench_scoring(backend: HFBackend, prompts, targets, batch_tokens: int, repeats: int) -> dict:
    labels = [encode_pair(backend.tokenizer, p, t, 10**9)[1] for p, t in zip(prompts, targets)]
    n_tokens = sum(len(lab) - lab.count(-100) for lab in labels)
    fast_s, fast_all, fast = timed(lambda: backend.score(prompts, targets, batch_tokens), repeats)
    slow_s, slow_all, slow = timed(lambda: naive_score(backend.model, backend.tokenizer, prompts, targets), repeats)
    return {"examples": len(prompts), "target_tokens": n_tokens, "batch_tokens": batch_tokens,
            "batched_s": fast_s, "loop_s": slow_s,
            "batched_tokens_per_s": n_tokens / fast_s, "loop_tokens_per_s": n_tokens / slow_s,
            "speedup": slow_s / fast_s, "max_rel_diff": float(np.max(np.abs(fast - slow) / np.abs(slow))),
            "batched_runs_s": fast_all, "loop_runs_s": slow_all}


def matmul_peak_gflops(hidden: int, out: int, rows: int = 8192, repeats: int = 20) -> float:
    """fp32 GFLOP/s of one large matmul shaped like the model's projections: this thread's ceiling."""
    x, w = torch.randn(rows, hidden), torch.randn(out, hidden)
    for _ in range(3):
        x @ w.T
    start = time.perf_counter()
    for _ in range(repeats):
        x @ w.T
    return 2 * rows * hidden * out * repeats / (time.perf_counter() - start) / 1e9


def scoring_roofline(model, scoring: dict, all_tokens: int) -> dict:
    """How far any fp32 scorer can go past the loop here: the loop's GFLOP/s against the matmul ceiling.

    FLOPs per token count the projections only (2 x weights of every Linear, the vocabulary head included),
    a lower bound: attention and the elementwise ops come on top.
    """
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    flops_per_token = 2 * sum(m.weight.numel() for m in linear)
    widest = max(linear, key=lambda m: m.weight.numel())
    peak = matmul_peak_gflops(widest.in_features, widest.out_features)
    loop = flops_per_token * all_tokens / scoring["loop_s"] / 1e9
    batched = flops_per_token * all_tokens / scoring["batched_s"] / 1e9
    return {"flops_per_token": flops_per_token, "matmul_peak_gflops": peak, "loop_gflops": loop,
            "batched_gflops": batched, "speedup_ceiling": peak / loop}


def bench_sampling(backend: HFBackend, prompts, settings: SamplingSettings, repeats: int) -> dict:
    n = len(prompts) * settings.k
    fast_s, fast_all, first = timed(lambda: backend.sample(prompts, settings), repeats)
    again = backend.sample(prompts, settings)
    slow_s, slow_all, _ = timed(lambda: naive_sample(backend, prompts, settings), repeats)
    return {"prompts": len(prompts), "k": settings.k, "batch_tokens": settings.batch_tokens,
            "completions": n, "batched_s": fast_s, "per_prompt_s": slow_s,
            "batched_completions_per_s": n / fast_s, "per_prompt_completions_per_s": n / slow_s,
            "speedup": slow_s / fast_s, "reproducible": first == again,
            "batched_runs_s": fast_all, "per_prompt_runs_s": slow_all}


def sweep_timings(sweep_dir: Path) -> dict:
    """Checkpoint-to-records latency and per-trial orchestration overhead from a finished sweep's files."""
    latencies = []
    for state in sweep_dir.glob("checkpoints/*/step_*/trainer_state.json"):
        run_id, step = state.parent.parent.name, state.parent.name
        records = sweep_dir / "records" / run_id / f"{step}.original.parquet"
        if records.is_file():
            latencies.append(records.stat().st_mtime - state.stat().st_mtime)
    timings = json.loads((sweep_dir / "analysis" / "timings.json").read_text())
    # Training compute over the trial's wall time as Tune saw it (trial actor start to completion).
    # (a wait for evaluation to catch up before the trial started, sampler.max_backlog, is not the trial's)
    fractions = {run: 1 - t["train_compute_seconds"] / (t.get("tune_trial_seconds", t["trial_seconds"])
                                                        - t.get("eval_wait_seconds", 0.0))
                 for run, t in timings.items()}
    phases = sorted({k for t in timings.values() for k in t})
    return {"sweep_dir": str(sweep_dir), "checkpoints": len(latencies),
            "checkpoint_to_records_median_s": statistics.median(latencies) if latencies else None,
            "checkpoint_to_records_max_s": max(latencies) if latencies else None,
            "overhead_fraction_median": statistics.median(fractions.values()),
            "phase_medians_s": {k: statistics.median(t[k] for t in timings.values() if k in t) for k in phases},
            "per_trial": {run: {**timings[run], "overhead_fraction": f} for run, f in fractions.items()}}


def run_default_sweep(store: Path, base_model: str) -> tuple[Path, float]:
    """The default sweep from scratch in a store of its own beside `store` (one with the sweep would resume it),
    over the cached base model, which it gets a copy of: its directory and the command's wall time."""
    import shutil

    root = store / "bench-sweeps" / time.strftime("%Y%m%d-%H%M%S")
    shutil.copytree(base_model, root / "base_models" / Path(base_model).name)
    started = time.time()
    subprocess.run([sys.executable, "-m", "orchestrator", f"store.root={root}"], check=True)
    return next((root / "sweeps").iterdir()), time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample-prompts", type=int, default=None,
                        help="prompts in the sampling comparison (default: the whole train split)")
    parser.add_argument("--sweep-dir", type=Path, help="a finished default sweep to read timings from")
    parser.add_argument("--no-sweep", action="store_true", help="skip (3): do not run the default sweep")
    parser.add_argument("--store", type=Path, default=Path("runs"))
    parser.add_argument("--no-vllm", action="store_true", help="skip (4)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # what one sampler actor gets in the default sweep

    cfg = compose_config([f"store.root={args.store}"])
    checkpoint = ensure_base_model(cfg)
    backend = HFBackend(threads=1)
    backend.load(checkpoint)
    splits = load_task(**task_args(cfg.task))
    fmt = PromptFormat(cfg.task.question_suffix, cfg.task.stop)
    prompts = [fmt.prompt(e.question) for e in splits.train]
    targets = [fmt.target(e.solution) for e in splits.train]
    settings = SamplingSettings(k=cfg.sampler.k, temperature=cfg.sampler.temperature, top_p=cfg.sampler.top_p,
                                max_new_tokens=cfg.sampler.max_new_tokens, stop=cfg.task.stop,
                                seed=cfg.sampler.seed, batch_tokens=cfg.sampler.batch_tokens,
                                score_batch_tokens=cfg.sampler.score_batch_tokens)

    result: dict = {"model": checkpoint, "threads": 1, "repeats": args.repeats}
    result["scoring"] = bench_scoring(backend, prompts, targets, settings.score_batch_tokens, args.repeats)
    all_tokens = sum(len(encode_pair(backend.tokenizer, p, t, 10**9)[0]) for p, t in zip(prompts, targets))
    result["scoring_roofline"] = scoring_roofline(backend.model, result["scoring"], all_tokens)
    result["sampling"] = bench_sampling(backend, prompts[: args.sample_prompts], settings, args.repeats)
    if not args.no_vllm:
        from bench.backends import bench_vllm

        result["vllm"] = bench_vllm(checkpoint, args.store / "bench", prompts, targets, settings, args.repeats)
    from bench.grading import bench_grading

    # evaluation seconds per completion, HF pool, one thread: the tiny model, and the ~100M one when measured
    per_completion = {"tiny": 1 / result["sampling"]["batched_completions_per_s"]}
    if "large" in result.get("vllm", {}):
        per_completion["large"] = 1 / result["vllm"]["large"]["completions_per_s"]["hf_pool"]
    result["grading"] = bench_grading(args.repeats, per_completion)
    from bench.store import bench_store

    result["store"] = bench_store(checkpoint)
    if not args.no_sweep:
        sweep_dir, wall = (args.sweep_dir, None) if args.sweep_dir else run_default_sweep(args.store, checkpoint)
        result["sweep"] = {**sweep_timings(sweep_dir), "command_seconds": wall}
    result["scoring_speedup"] = result["scoring"]["speedup"]
    result["sampling_speedup"] = result["sampling"]["speedup"]
    result["overhead_fraction"] = result.get("sweep", {}).get("overhead_fraction_median")

    sc, sa, roof = result["scoring"], result["sampling"], result["scoring_roofline"]
    print(f"\n{'measure':<44}{'fast':>14}{'naive':>14}{'ratio':>9}")
    print(f"{'ref-NLL scoring, tokens/s':<44}{sc['batched_tokens_per_s']:>14.0f}{sc['loop_tokens_per_s']:>14.0f}"
          f"{sc['speedup']:>8.1f}x   (max rel diff {sc['max_rel_diff']:.1e})")
    print(f"  scoring roofline: loop {roof['loop_gflops']:.0f} GFLOP/s, batched {roof['batched_gflops']:.0f}, fp32 "
          f"matmul peak {roof['matmul_peak_gflops']:.0f}: a scorer doing the same fp32 FLOPs tops out at "
          f"{roof['speedup_ceiling']:.1f}x the loop")
    print(f"{'sampling, completions/s':<44}{sa['batched_completions_per_s']:>14.1f}"
          f"{sa['per_prompt_completions_per_s']:>14.1f}{sa['speedup']:>8.1f}x   (reproducible: {sa['reproducible']})")
    if "sweep" in result:
        sw = result["sweep"]
        if sw["command_seconds"] is not None:
            print(f"default sweep over its cached base model: {sw['command_seconds'] / 60:.1f} min (the command)")
        print(f"default sweep: checkpoint-to-records median {sw['checkpoint_to_records_median_s']:.1f}s "
              f"(max {sw['checkpoint_to_records_max_s']:.1f}s); orchestration overhead per trial "
              f"median {sw['overhead_fraction_median']:.1%} of trial wall time")
        print("  trial phases, median seconds: " + ", ".join(
            f"{k.removesuffix('_seconds')} {v:.1f}" for k, v in sw["phase_medians_s"].items()))
    if "vllm" in result and "skipped" not in result["vllm"]:
        v = result["vllm"]
        for size in ("tiny", "large"):
            r = v[size]
            print(f"{size} model ({r['parameters'] / 1e6:.1f}M params), completions/s: " + ", ".join(
                f"{k} {x:.1f}" for k, x in r["completions_per_s"].items()) + "; scored tokens/s: " + ", ".join(
                f"{k} {x:.0f}" for k, x in r["scored_tokens_per_s"].items()))
        print(f"vLLM: cold start {v['vllm_cold_start_s']:.1f}s, swap {v['vllm_swap_s']:.2f}s "
              f"({v['swap_fraction_of_cold_start']:.1%} of cold start), greedy match after swap "
              f"{v['vllm_greedy_match']:.3f}, NLL mean |diff| vs HF {v['vllm_nll_mean_abs_diff']:.1e}, "
              f"vLLM/HF completions {v['vllm_vs_hf_completions']:.2f}")
    st = result["store"]
    if "skipped" not in st.get("s3", {}):
        print("store per checkpoint (upload / fetch / records write): " + "; ".join(
            f"{name} {st[name]['upload_s'] * 1e3:.0f} / {st[name]['fetch_s'] * 1e3:.0f} / "
            f"{st[name]['records_write_s'] * 1e3:.0f} ms" for name in ("local", "s3"))
            + f" ({st['checkpoint_bytes'] / 1e6:.1f} MB checkpoint)")
    g = result["grading"]
    print(f"MATH grading: {g['math_answers_per_s']:.0f} answers/s ({g['timeouts']} timeouts); share of a "
          "checkpoint's evaluation time: " + ", ".join(f"{m} model {x:.1%}" for m, x in g["grading_share_of_eval"].items()))
    p = g["pathological"]
    print(f"MATH grading: an answer sympy cannot decide costs {p['seconds']:.1f} s at timeout_s={p['timeout_s']:g} "
          f"(timed out: {p['timed_out']}, next answer graded correct: {p['next_answer_correct']})")
    out = Path(os.environ.get("BENCH_OUT", "bench.json"))
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
