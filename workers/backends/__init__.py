"""Sampling backends behind one narrow interface: load a checkpoint, sample k completions, score targets."""
from __future__ import annotations

from workers.backends.base import Backend, SamplingSettings, cut_at_stop

__all__ = ["Backend", "SamplingSettings", "cut_at_stop", "make_backend"]


def vllm_available() -> bool:
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def make_backend(name: str, threads: int = 1, vllm_options: dict | None = None) -> Backend:
    """`hf`, `vllm`, or `auto`: vLLM on GPUs, HF on CPU, where the HF pool samples faster than vLLM's CPU
    build (bench/evaluation.py measures both side by side)."""
    if name == "auto":
        name = "vllm" if vllm_available() else "hf"
    if name == "vllm":
        from workers.backends.vllm import VLLMBackend

        return VLLMBackend(threads=threads, **(vllm_options or {}))
    if name == "hf":
        from workers.backends.hf import HFBackend

        return HFBackend(threads=threads)
    raise ValueError(f"unknown sampler backend {name!r}")
