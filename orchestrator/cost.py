"""What a planned sweep will cost, before it runs (`python -m orchestrator ... --plan`): per trial its optimizer
steps and checkpoints, per checkpoint the questions, samples and tokens the pool generates, and the bytes the
store receives — from the configs and the model's parameter count alone (pure apart from reading the model's
config.json).

Bytes per checkpoint: the HF weights the sampler loads (2 bytes a parameter in bf16/fp16, 4 in fp32) and
DeepSpeed's engine state a restart resumes from (fp32 master weights and Adam's two moments, 12 bytes a
parameter, plus the module's weights under ZeRO stages 0-2). Measured on the tiny model (918,656 parameters,
bf16, ZeRO-3, 2 ranks; 2026-11-30): 1,830,616 bytes of safetensors (2.0 a parameter) and 11,086,496 bytes of
engine state (12.1 a parameter). What stays is store.keep's (kept_bytes); a sweep measures both at its end.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.config import ConfigError
from orchestrator.plan import TrialSpec
from orchestrator.retention import human_bytes
from workers.settings import save_interval, steps_per_epoch

OPTIMIZER_BYTES_PER_PARAM = 12  # fp32 master weights + Adam's first and second moments


@dataclass(frozen=True)
class TrialCost:
    steps: int
    checkpoints: int
    questions: int  # per checkpoint: train + test questions sampled
    samples: int  # per checkpoint: k per question
    new_tokens: int  # per checkpoint, at most: samples x max_new_tokens
    weight_bytes: int  # per checkpoint
    engine_bytes: int  # per checkpoint that keeps its engine state
    kept_engine_states: int


def train_examples(task: dict) -> int:
    """The train split's size as the trainer will see it (a JSONL task's n_train is a cap on its file)."""
    return max(1, round(task.n_train * task.train_fraction))


def trial_steps(spec: TrialSpec) -> tuple[int, int]:
    """(optimizer steps per epoch, checkpoints) of a trial, counted as workers/train.py takes them."""
    t = spec.config.train
    accumulation = max(1, t.global_batch_size // (t.micro_batch_size * t.num_workers))
    n = train_examples(spec.config.task)
    steps = steps_per_epoch(n, t.micro_batch_size, t.num_workers, accumulation)
    if steps == 0:
        raise ConfigError(f"trial {spec.index} ({spec.label}): train.global_batch_size={t.global_batch_size}: "
                          f"{n} train examples (task.n_train x task.train_fraction) do not fill one global batch")
    every = save_interval(t, steps)
    total = steps * t.epochs
    if every:
        checkpoints = total // every + (total % every != 0)  # the last step always saves
    else:
        checkpoints = t.epochs if t.checkpoints_per_epoch > 0 else 1
    return steps, checkpoints


def parameter_count(model: dict) -> int:
    """Parameters of the model a trial starts from: the tiny model's from its base-stage sizes, an HF model's
    from its config.json (built on the meta device: no weights are read or allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if model["path"] is None:
        stage = model["base_stage"]
        config = LlamaConfig(vocab_size=stage["vocab_size"], hidden_size=stage["hidden_size"],
                             intermediate_size=stage["hidden_size"] * 3, num_hidden_layers=stage["num_layers"],
                             num_attention_heads=stage["num_heads"], num_key_value_heads=stage["num_heads"],
                             max_position_embeddings=stage["max_positions"], tie_word_embeddings=True)
    elif (Path(model["path"]) / "config.json").is_file():
        config = AutoConfig.from_pretrained(model["path"])
    else:
        raise ConfigError(f"model.path={model['path']}: --plan reads the model's config.json, which is not there")
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in built.parameters())


def trial_cost(spec: TrialSpec, parameters: int) -> TrialCost:
    c = spec.config
    steps, checkpoints = trial_steps(spec)
    train = train_examples(c.task)
    questions = (min(train, c.sampler.train_subset) if c.sampler.train_subset else train) + c.task.n_test
    samples = questions * c.sampler.k
    weight_bytes = parameters * (4 if c.train.precision == "fp32" else 2)
    # ZeRO-3's model-states file holds no parameters (they are partitioned into the optimizer's files); stages
    # 0-2 save the module's weights there too (mp_rank_00_model_states.pt)
    module_bytes = 0 if c.train.zero_stage == 3 else weight_bytes
    return TrialCost(steps * c.train.epochs, checkpoints, questions, samples,
                     samples * c.sampler.max_new_tokens, weight_bytes,
                     parameters * OPTIMIZER_BYTES_PER_PARAM + module_bytes,
                     min(checkpoints, c.train.keep_engine_states))


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:.0f}"


def plan_text(specs: list[TrialSpec]) -> str:
    """The plan as a table, one trial a row, and the sweep's totals; nothing started, nothing written."""
    counts: dict[str, int] = {}
    costs = []
    for spec in specs:
        model = asdict(spec.config.model)
        key = json.dumps(model, sort_keys=True)
        if key not in counts:
            counts[key] = parameter_count(model)
        costs.append(trial_cost(spec, counts[key]))
    written = sum(c.checkpoints * (c.weight_bytes + c.engine_bytes) for c in costs)
    kept = sum(kept_bytes(c, spec.config.store.keep) for spec, c in zip(specs, costs))
    policies = sorted({spec.config.store.keep for spec in specs})
    lines = [f"plan: {len(specs)} trials, {sum(c.checkpoints for c in costs)} checkpoints, "
             f"{', '.join(_count(n) + ' parameters' for n in sorted(set(counts.values())))} "
             "(nothing started, nothing written)",
             f"  {'trial':<6}{'what varies':<46}{'steps':>7}{'ckpts':>6}{'questions':>10}{'samples':>9}"
             f"{'tokens<=':>10}{'weights/ckpt':>13}{'engine/ckpt':>12}"]
    for spec, c in zip(specs, costs):
        lines.append(f"  t{spec.index:02d}   {spec.label[:45]:<46}{c.steps:>7}{c.checkpoints:>6}{c.questions:>10}"
                     f"{c.samples:>9}{_count(c.new_tokens):>10}{human_bytes(c.weight_bytes):>13}{human_bytes(c.engine_bytes):>12}")
    lines.append(f"  total: {sum(c.steps for c in costs)} optimizer steps; "
                 f"{sum(c.checkpoints * c.samples for c in costs)} samples and at most "
                 f"{_count(sum(c.checkpoints * c.new_tokens for c in costs))} new tokens to generate; store: "
                 f"{human_bytes(written)} written, {human_bytes(kept)} kept (store.keep={','.join(policies)})")
    return "\n".join(lines)


def kept_bytes(c: TrialCost, keep: str) -> int:
    """A trial's bytes left in the store at the end under store.keep (orchestrator/retention.py): every
    checkpoint's weights and the newest engine states for `all`; the final (and the best, at most one more)
    checkpoint's weights and no engine state otherwise."""
    if keep == "all":
        return c.checkpoints * c.weight_bytes + c.kept_engine_states * c.engine_bytes
    return min(c.checkpoints, 1 if keep == "final" else 2) * c.weight_bytes
