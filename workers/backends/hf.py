"""HF-transformers backend: batched sampling with k return sequences and batched teacher-forced scoring.

Both paths sort by length and pack batches to a token budget, so a batch holds sequences of similar
length (little padding) and as many of them as the budget allows.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from workers.backends import SamplingSettings, cut_at_stop
from workers.train import IGNORE, collate, encode_pair


def length_batches(lengths: list[int], budget: int, extra: int = 0, rows_per_item: int = 1) -> list[list[int]]:
    """Indices grouped by ascending length so that rows x (longest + extra) stays within `budget`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i] + extra  # sorted ascending: the newest item is the longest
        if current and (len(current) + 1) * rows_per_item * width > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class HFBackend:
    def __init__(self, threads: int = 1, device: str | None = None, dtype: torch.dtype | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or (torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.threads = threads
        self.model = None
        self.tokenizer = None

    def load(self, checkpoint_dir: str) -> None:
        from workers.models import load_model, load_tokenizer

        torch.set_num_threads(self.threads)
        self.tokenizer = load_tokenizer(checkpoint_dir, padding_side="left")
        self.model = load_model(checkpoint_dir, self.dtype, self.device).eval()

    # ------------------------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score(self, prompts: list[str], targets: list[str], batch_tokens: int = 16384) -> np.ndarray:
        pairs = [encode_pair(self.tokenizer, p, t, 10**9) for p, t in zip(prompts, targets)]
        out = np.empty(len(pairs))
        pad = self.tokenizer.pad_token_id
        for batch in length_batches([len(ids) for ids, _ in pairs], batch_tokens):
            padded = collate([pairs[i] for i in batch], pad)  # the same masking as the training loss
            logits = self.model(input_ids=padded["input_ids"].to(self.device),
                                attention_mask=padded["attention_mask"].to(self.device)).logits
            shifted = padded["labels"][:, 1:].to(self.device)
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=IGNORE,
                                  reduction="none")
            counts = (shifted != IGNORE).sum(1).clamp(min=1)
            out[batch] = (nll.sum(1) / counts).double().cpu().numpy()
        return out

    # ------------------------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def sample(self, prompts: list[str], settings: SamplingSettings) -> list[list[str]]:
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        encoded = [bos + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        results: list[list[str]] = [[] for _ in prompts]
        torch.manual_seed(settings.seed)
        batches = length_batches([len(e) for e in encoded], settings.batch_tokens, settings.max_new_tokens,
                                 rows_per_item=settings.k)
        for batch in batches:
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            generated = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), do_sample=True,
                temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                max_new_tokens=settings.max_new_tokens, num_return_sequences=settings.k,
                stop_strings=[settings.stop], tokenizer=tok, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, use_cache=True,
            )
            texts = tok.batch_decode(generated[:, width:], skip_special_tokens=True)
            for row, i in enumerate(batch):
                results[i] = [cut_at_stop(t, settings.stop) for t in texts[row * settings.k:(row + 1) * settings.k]]
        return results
