"""Did the pool evaluate the checkpoint's weights? A few fixed probe examples, scored on both sides.

The trainer scores PROBES train examples with the weights it saves and writes their reference NLL into the
checkpoint (PROBE_FILE); the pool scores the same texts after loading or swapping the checkpoint in. A swap that
left old or partial weights in the engine (vLLM's in-place `reload_weights` has open reports of stale weights:
vllm-project/vllm#32718) shows as a difference beyond the dtypes' tolerance: the pool then builds its engine
afresh from the checkpoint and records the event with the checkpoint's metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROBE_FILE = "probe_nll.json"
PROBES = 4
# max |NLL(trainer) - NLL(pool)| per probe, nats per token: fp32 on both sides differs only by batching; 16-bit
# weights or kernels on either side by up to a few hundredths (bench/gpu_smoke.py measures bf16 against fp32)
TOLERANCE = {"fp32": 1e-3, "16bit": 0.1}


def tolerance(*dtypes: str) -> float:
    """The looser tolerance of the two sides' dtypes ("bf16", "torch.bfloat16", "float32", ...)."""
    return TOLERANCE["16bit"] if any("16" in str(d) for d in dtypes) else TOLERANCE["fp32"]


def trainer_probe_nll(model, tokenizer, prompts: list[str], targets: list[str]) -> list[float]:
    """Mean NLL of each target's tokens given its prompt, as the pool's scoring masks it, from the model being
    trained (eval mode, no gradients). Under ZeRO-3 every rank must call it: the forward gathers parameters."""
    import torch
    import torch.nn.functional as F

    from workers.tokens import IGNORE, collate, encode_pair

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            out = []
            for prompt, target in zip(prompts, targets):  # one at a time: no padding in the probes' numbers
                batch = collate([encode_pair(tokenizer, prompt, target, 10**9)], tokenizer.pad_token_id)
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits[0, :-1].float()
                labels = batch["labels"][0, 1:].to(device)
                scored = labels != IGNORE
                out.append(float(F.cross_entropy(logits[scored], labels[scored]).item()))
    finally:
        model.train(was_training)
    return out


def write_probe(checkpoint_dir: str | Path, prompts: list[str], targets: list[str], ref_nll: list[float],
                dtype: str) -> None:
    Path(checkpoint_dir, PROBE_FILE).write_text(json.dumps(
        {"prompts": prompts, "targets": targets, "ref_nll": ref_nll, "dtype": dtype}))


def read_probe(checkpoint_dir: str | Path) -> dict | None:
    """The trainer's probe, or None for a checkpoint without one (a base model, an older checkpoint)."""
    path = Path(checkpoint_dir, PROBE_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


def probe_difference(backend, probe: dict, settings) -> float:
    """max |NLL| difference between the trainer's probe and the backend's loaded weights."""
    _, nll = backend.sample_and_score([], settings, probe["prompts"], probe["targets"])
    return float(np.max(np.abs(np.asarray(nll) - np.asarray(probe["ref_nll"]))))


def check_loaded_weights(backend, checkpoint_dir: str, settings) -> dict:
    """After `backend.load(checkpoint_dir)`: the probe's difference, and on a mismatch the engine rebuilt from
    the checkpoint (close, then load afresh). Returns the checkpoint's metrics: `probe_nll_max_abs_diff` (after
    any rebuild), `weight_check_rebuilds` and, when rebuilt, `probe_nll_max_abs_diff_before_rebuild`. A fresh
    load is what the checkpoint's weights give in this backend: a difference that survives it is numerics, not a
    stale swap, and stays in the metrics."""
    probe = read_probe(checkpoint_dir)
    if probe is None:
        return {}
    limit = tolerance(probe["dtype"], getattr(backend, "dtype", "fp32"))
    difference = probe_difference(backend, probe, settings)
    metrics = {"probe_nll_max_abs_diff": difference, "weight_check_rebuilds": 0, "probe_nll_tolerance": limit}
    if not difference <= limit:  # NaN counts as a mismatch
        backend.close()
        backend.load(checkpoint_dir)
        metrics.update(probe_nll_max_abs_diff=probe_difference(backend, probe, settings), weight_check_rebuilds=1,
                       probe_nll_max_abs_diff_before_rebuild=difference)
    return metrics
