"""The tiny default model and its tokenizer, built offline; loading any HF causal-LM directory or name."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
# The packages whose versions can change what a seed trains, samples or scores: one seed gives the same base model
# bit for bit on one set of them, and another model on another set (docs/results.md, 2026-12-03).
WEIGHT_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "deepspeed", "ray", "vllm")


def package_versions() -> dict[str, str]:
    """The installed versions of WEIGHT_PACKAGES (those installed), read from their metadata."""
    from importlib import metadata

    versions = {}
    for name in WEIGHT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def package_changes(built_with: dict[str, str], now: dict[str, str]) -> list[str]:
    """'name old -> new' for each package whose version differs between a model's build and now."""
    return [f"{name} {built_with.get(name, 'none')} -> {now.get(name, 'none')}"
            for name in sorted(set(built_with) | set(now)) if built_with.get(name) != now.get(name)]


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `corpus`, digits split one per token (lossless round trip)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def build_tiny_model(tokenizer, hidden_size: int, num_layers: int, num_heads: int, max_positions: int, seed: int):
    """A small Llama-architecture causal LM sized to the tokenizer (HF and vLLM both load it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def without_progress_bars() -> None:
    """transformers draws a bar per save ("Writing model shards") and per load ("Loading weights"): stray lines
    in the driver's terminal (the base build, curation's IFD scores) and one per checkpoint in worker logs."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def save_pretrained_atomic(model, tokenizer, path: str | Path) -> Path:
    """Save an HF directory (config, safetensors, tokenizer) under a temp name, then rename into place."""
    without_progress_bars()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def load_tokenizer(name_or_path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    without_progress_bars()
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    return model.to(device)


def model_exists(name_or_path: str) -> bool:
    """A local HF directory with a config.json, or a hub-style name (checked when loaded, not here)."""
    p = Path(name_or_path)
    if p.exists():
        return (p / "config.json").is_file()
    return "/" in name_or_path and not name_or_path.startswith(("/", ".", "~"))
