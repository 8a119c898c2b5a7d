"""vLLM backend (GPU): one `generate` over all prompts with n=k; reference NLL from prompt logprobs.

Imported only when chosen; vllm is the optional `gpu` extra.
"""
from __future__ import annotations

import gc

import numpy as np

from workers.backends import SamplingSettings, cut_at_stop
from workers.train import IGNORE, encode_pair


class VLLMBackend:
    def __init__(self, gpu_memory_utilization: float = 0.85, dtype: str = "bfloat16"):
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.llm = None
        self.tokenizer = None

    def load(self, checkpoint_dir: str) -> None:
        import torch
        from vllm import LLM

        # Each checkpoint is a new set of weights: drop the previous engine before building the next.
        self.llm = None
        gc.collect()
        torch.cuda.empty_cache()
        self.llm = LLM(model=checkpoint_dir, dtype=self.dtype, gpu_memory_utilization=self.gpu_memory_utilization,
                       enforce_eager=False)
        self.tokenizer = self.llm.get_tokenizer()

    def _ids(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        return bos + tok(prompt, add_special_tokens=False)["input_ids"]

    def sample_and_score(self, prompts: list[str], settings: SamplingSettings,
                         score_prompts: list[str], score_targets: list[str]) -> tuple[list[list[str]], np.ndarray]:
        """Sampling requests and scoring requests in one engine pass (one `generate` call)."""
        from vllm import SamplingParams

        sample_params = SamplingParams(n=settings.k, temperature=settings.temperature, top_p=settings.top_p,
                                       max_tokens=settings.max_new_tokens, stop=[settings.stop], seed=settings.seed)
        score_params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        pairs = [encode_pair(self.tokenizer, p, t, 10**9) for p, t in zip(score_prompts, score_targets)]
        requests = [{"prompt_token_ids": self._ids(p)} for p in prompts]
        requests += [{"prompt_token_ids": ids} for ids, _ in pairs]
        params = [sample_params] * len(prompts) + [score_params] * len(pairs)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions = [[cut_at_stop(c.text, settings.stop) for c in o.outputs] for o in outputs[: len(prompts)]]
        nll = np.empty(len(pairs))
        for j, (o, (ids, labels)) in enumerate(zip(outputs[len(prompts):], pairs)):
            token_nll = [-lp[ids[pos]].logprob for pos, lp in enumerate(o.prompt_logprobs)
                         if lp is not None and labels[pos] != IGNORE]
            nll[j] = float(np.mean(token_nll)) if token_nll else float("nan")
        return completions, nll

    def sample(self, prompts: list[str], settings: SamplingSettings) -> list[list[str]]:
        return self.sample_and_score(prompts, settings, [], [])[0]

    def score(self, prompts: list[str], targets: list[str], batch_tokens: int = 0) -> np.ndarray:
        return self.sample_and_score([], SamplingSettings(), prompts, targets)[1]
