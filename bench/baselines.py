"""The loops premem's batched evaluation is measured against (the paper's per-example passes), and the timer."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from workers.backends import SamplingSettings, cut_at_stop
from workers.backends.hf import HFBackend
from workers.tokens import encode_pair


def naive_score(model, tokenizer, prompts: list[str], targets: list[str]) -> np.ndarray:
    """One forward pass per example, as the paper's pipeline did."""
    out = []
    with torch.inference_mode():
        for p, t in zip(prompts, targets):
            ids, labels = encode_pair(tokenizer, p, t, 10**9)
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            nll = torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=-100)
            out.append(nll.item())
    return np.array(out)


def naive_sample(backend: HFBackend, prompts: list[str], s: SamplingSettings) -> list[list[str]]:
    """`generate` one prompt at a time (k return sequences each)."""
    tok, model = backend.tokenizer, backend.model
    torch.manual_seed(s.seed)
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]])
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=s.temperature, top_p=s.top_p, top_k=0, max_new_tokens=s.max_new_tokens,
                                 num_return_sequences=s.k, stop_strings=[s.stop], tokenizer=tok,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            out.append([cut_at_stop(t, s.stop) for t in tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)])
    return out


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result
