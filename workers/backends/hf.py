"""HF-transformers backend: batched teacher-forced scoring and a batched sampler with a static KV cache.

Scoring sorts (prompt, target) pairs by length and packs them to a token budget small enough that a batch's
activations stay in cache (on CPU the forward is bound by memory traffic past a few thousand tokens), and
projects to the vocabulary only at the target positions.

Sampling prefills each prompt once, repeats its KV cache rows for the k samples, and decodes all rows of a
batch in lockstep against a preallocated cache. A row leaves the batch when it emits EOS or completes the stop
string, and the batch is compacted once enough rows have left, so finished samples stop costing compute.
`model.generate` recomputes the prompt k times, grows its cache by concatenation every step (quadratic
copying) and keeps computing finished rows until the longest one stops.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from workers.backends.base import SamplingSettings, cut_at_stop
from workers.tokens import IGNORE, collate, encode_pair

COMPACT_BELOW = 0.75  # compact the batch when fewer than this fraction of its cache rows are still sampling


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


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), every sequence ending in the last column (where generation continues)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s):] = 1
    return ids, mask


def draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator,
         candidates: int = 64) -> torch.Tensor:
    """One token per row: temperature, then nucleus (top-p) sampling.

    The nucleus is the shortest run of most likely tokens whose mass reaches top_p (a token is kept when the
    mass of the tokens above it is below top_p, as in transformers' TopPLogitsWarper). It is looked for among
    the `candidates` most likely tokens and only rows whose nucleus is wider fall back to the whole
    vocabulary, which spares a full sort of the vocabulary per row and step.
    """
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    width = min(candidates, scores.shape[-1]) if top_p < 1.0 else scores.shape[-1]
    top_scores, top_tokens = scores.topk(width, dim=-1)  # descending
    probs = (top_scores - scores.logsumexp(-1, keepdim=True)).exp()
    above = probs.cumsum(-1) - probs  # mass of the tokens more likely than each candidate
    keep = above < top_p
    wide = keep[:, -1] & (width < scores.shape[-1])  # the nucleus may extend past the candidates
    full = draw(logits[wide], temperature, top_p, generator, candidates=scores.shape[-1]) if wide.any() else None
    choice = torch.multinomial(probs * keep, 1, generator=generator).squeeze(1)
    tokens = top_tokens.gather(1, choice[:, None]).squeeze(1)
    if full is not None:
        tokens[wide] = full
    return tokens


class StopDetector:
    """Which rows just ended: EOS, or the stop string completed by the newest token.

    Only a token that can complete the stop string (it contains the stop's last character, or a partial
    UTF-8 byte) triggers a decode of that row's last few tokens, so the check costs little per step.
    """

    def __init__(self, tokenizer, stop: str, eos_id: int | None, vocab_size: int = 0):
        self.tokenizer, self.stop, self.eos_id = tokenizer, stop, eos_id
        # a model's vocabulary may be padded past the tokenizer's: those ids decode to nothing
        pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))] + [""] * (vocab_size - len(tokenizer))
        self.may_complete = torch.tensor([bool(stop) and (stop[-1] in p or "\ufffd" in p) for p in pieces])
        self.window = len(stop.encode()) + 1  # byte-level tokens: each holds at least one byte

    def ended(self, tokens: torch.Tensor, generated: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
        """tokens: the newest token of each live row; generated[rows, : step + 1] holds their samples so far."""
        done = tokens == self.eos_id if self.eos_id is not None else torch.zeros_like(tokens, dtype=torch.bool)
        start = max(0, step + 1 - self.window)
        for j in torch.nonzero(self.may_complete[tokens] & ~done).flatten().tolist():
            tail = self.tokenizer.decode(generated[rows[j], start: step + 1].tolist())
            done[j] = self.stop in tail
        return done


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

    def close(self) -> None:
        self.model = None

    def sample_and_score(self, prompts: list[str], settings: SamplingSettings, score_prompts: list[str],
                         score_targets: list[str]) -> tuple[list[list[str]], np.ndarray]:
        """Sampling, then scoring (two passes: the HF model has no shared request queue)."""
        return (self.sample(prompts, settings),
                self.score(score_prompts, score_targets, settings.score_batch_tokens))

    # ------------------------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def score(self, prompts: list[str], targets: list[str], batch_tokens: int = 1024) -> np.ndarray:
        """Mean NLL of each target's tokens given its prompt (the training loss's masking, per example)."""
        pairs = [encode_pair(self.tokenizer, p, t, 10**9) for p, t in zip(prompts, targets)]
        out = np.empty(len(pairs))
        pad = self.tokenizer.pad_token_id
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        for batch in length_batches([len(ids) for ids, _ in pairs], batch_tokens):
            padded = collate([pairs[i] for i in batch], pad)  # right padding, prompt positions IGNORE
            hidden = decoder(input_ids=padded["input_ids"].to(self.device),
                             attention_mask=padded["attention_mask"].to(self.device), use_cache=False).last_hidden_state
            labels = padded["labels"][:, 1:].to(self.device)
            scored = labels != IGNORE  # position t predicts token t + 1: project only where that is a target
            logits = head(hidden[:, :-1][scored]).float()
            nll = F.cross_entropy(logits, labels[scored], reduction="none")
            rows = torch.nonzero(scored)[:, 0]
            sums = torch.zeros(len(batch), dtype=torch.float64, device=self.device).index_add_(0, rows, nll.double())
            out[batch] = (sums / scored.sum(1).clamp(min=1)).cpu().numpy()
        return out

    # ------------------------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def sample(self, prompts: list[str], settings: SamplingSettings) -> list[list[str]]:
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        encoded = [bos + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        stop = StopDetector(tok, settings.stop, tok.eos_token_id,
                            self.model.config.get_text_config(decoder=True).vocab_size)
        generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        results: list[list[str]] = [[] for _ in prompts]
        for batch in length_batches([len(e) for e in encoded], settings.batch_tokens, settings.max_new_tokens,
                                    rows_per_item=settings.k):
            samples = self._sample_batch([encoded[i] for i in batch], settings, stop, generator)
            texts = [cut_at_stop(t, settings.stop) for t in tok.batch_decode(samples, skip_special_tokens=True)]
            for row, i in enumerate(batch):
                results[i] = texts[row * settings.k:(row + 1) * settings.k]
        return results

    def _sample_batch(self, prompts: list[list[int]], s: SamplingSettings, stop: StopDetector,
                      generator: torch.Generator) -> list[list[int]]:
        """k sampled continuations per prompt (token ids up to and including the ending token), row-major."""
        dev = self.device
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        width, k, n_rows = ids.shape[1], s.k, len(prompts) * s.k
        cache = prefix_cache(self.model.config, width + s.max_new_tokens)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev),
                            past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        # The k samples of a prompt share its prefill: repeat cache rows rather than recompute the prompt.
        _map_cache_rows(cache, lambda t: t.repeat_interleave(k, 0))
        logits = logits.repeat_interleave(k, 0)
        attention = torch.ones((n_rows, width + s.max_new_tokens), dtype=torch.long, device=dev)
        attention[:, :width] = mask.repeat_interleave(k, 0)
        next_position = mask.sum(-1).repeat_interleave(k, 0).to(dev)  # where each row's first sample goes

        generated = torch.full((n_rows, s.max_new_tokens), self.tokenizer.pad_token_id, dtype=torch.long)
        length = torch.full((n_rows,), s.max_new_tokens, dtype=torch.long)
        rows = torch.arange(n_rows)  # the output row of each cache row
        live = torch.ones(n_rows, dtype=torch.bool)  # cache rows still sampling
        for step in range(s.max_new_tokens):
            tokens = draw(logits, s.temperature, s.top_p, generator).cpu()
            generated[rows[live], step] = tokens[live]
            ended = torch.zeros_like(live)
            ended[live] = stop.ended(tokens[live], generated, rows[live], step)
            length[rows[ended]] = step + 1
            live &= ~ended
            if step + 1 == s.max_new_tokens or not live.any():
                break
            if live.sum() < COMPACT_BELOW * len(live):  # drop finished rows from the cache and the batch
                keep = torch.nonzero(live).flatten()
                keep_on_device = keep.to(dev)
                _map_cache_rows(cache, lambda t: t[keep_on_device])
                rows, tokens, live = rows[keep], tokens[keep], live[keep]
                attention, next_position = attention[keep_on_device], next_position[keep_on_device]
            logits = self.model(input_ids=tokens[:, None].to(dev), attention_mask=attention[:, : width + step + 1],
                                position_ids=(next_position + step)[:, None], past_key_values=cache,
                                use_cache=True).logits[:, -1]
        return [generated[r, : length[r]].tolist() for r in range(n_rows)]


def prefix_cache(config, max_len: int):
    """A preallocated KV cache (no per-step reallocation) whose attention reads only the filled prefix."""
    from transformers import Cache, StaticLayer

    class FilledPrefixLayer(StaticLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            end = int(self.cumulative_length)
            return keys[:, :, :end], values[:, :, :end]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return int(self.get_seq_length()) + query_length, 0

    layers = config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[FilledPrefixLayer(max_cache_len=max_len) for _ in range(layers)])


def _map_cache_rows(cache, fn) -> None:
    """Apply a batch-dimension operation (repeat, select) to every layer of a static KV cache."""
    for layer in cache.layers:
        layer.keys, layer.values = fn(layer.keys), fn(layer.values)
        layer.batch_size = layer.keys.shape[0]
