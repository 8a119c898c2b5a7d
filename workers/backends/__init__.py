"""Sampling backends behind one narrow interface: load a checkpoint, sample k completions, score targets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class SamplingSettings:
    k: int = 5
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 96
    stop: str = "\nDone."
    seed: int = 0
    batch_tokens: int = 131072  # sampling: rows x (prompt + max_new_tokens) per batch
    score_batch_tokens: int = 16384  # reference scoring: padded tokens per forward batch


class Backend(Protocol):
    def load(self, checkpoint_dir: str) -> None: ...

    def sample(self, prompts: list[str], settings: SamplingSettings) -> list[list[str]]:
        """k completions per prompt (text after the prompt, cut before the stop string)."""

    def score(self, prompts: list[str], targets: list[str]) -> np.ndarray:
        """Mean per-token NLL of each target given its prompt."""


def cut_at_stop(text: str, stop: str) -> str:
    i = text.find(stop)
    return text if i < 0 else text[:i]


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
