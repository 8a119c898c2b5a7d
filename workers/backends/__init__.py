"""Sampling backends behind one narrow interface: load a checkpoint, sample k completions, score targets."""
from __future__ import annotations

from collections.abc import Callable

from workers.backends.base import Backend, SamplingSettings, cut_at_stop

__all__ = ["BACKENDS", "Backend", "SamplingSettings", "cut_at_stop", "make_backend", "register_backend"]

# name -> factory(threads, vllm_options) -> Backend; each factory imports its backend's module only when called
# (vLLM's is heavy and GPU-bound), so reading the names (config validation) imports no backend
BACKENDS: dict[str, Callable[[int, dict], Backend]] = {}


def register_backend(name: str):
    """Decorator: `factory(threads, vllm_options) -> Backend` as sampler backend `name`."""
    def register(factory: Callable[[int, dict], Backend]) -> Callable[[int, dict], Backend]:
        BACKENDS[name] = factory
        return factory

    return register


@register_backend("hf")
def _hf(threads: int, vllm_options: dict) -> Backend:
    from workers.backends.hf import HFBackend

    return HFBackend(threads=threads)


@register_backend("vllm")
def _vllm(threads: int, vllm_options: dict) -> Backend:
    from workers.backends.vllm import VLLMBackend

    return VLLMBackend(threads=threads, **vllm_options)


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
    """A registered backend by name, or `auto`: vLLM on GPUs, HF on CPU, where the HF pool samples faster than
    vLLM's CPU build (bench/evaluation.py measures both side by side)."""
    if name == "auto":
        name = "vllm" if vllm_available() else "hf"
    if name not in BACKENDS:
        raise ValueError(f"unknown sampler backend {name!r}")
    return BACKENDS[name](threads, vllm_options or {})
