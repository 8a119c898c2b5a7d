"""The one interface the sampling pool calls on a backend (HF transformers or vLLM), and what they share."""
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
    """What workers/sample.py calls, and nothing else; tests/unit/test_backend.py checks both backends have it."""

    device: str  # where it samples: "cuda" or "cpu" (the pool records it per sampler actor)

    def load(self, checkpoint_dir: str) -> None:
        """Make the checkpoint's weights the ones sampled from (vLLM swaps them into its running engine)."""

    def sample_and_score(self, prompts: list[str], settings: SamplingSettings, score_prompts: list[str],
                         score_targets: list[str]) -> tuple[list[list[str]], np.ndarray]:
        """k completions per prompt (text after the prompt, cut before the stop string), and the mean per-token
        NLL of each score target given its score prompt (the training loss's masking, per example)."""

    def close(self) -> None:
        """Free the model (and engine); the next `load` starts afresh. Called after a failed evaluation."""


def cut_at_stop(text: str, stop: str) -> str:
    i = text.find(stop)
    return text if i < 0 else text[:i]
