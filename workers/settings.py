"""Settings of the training worker and of the base-model stage: plain dataclasses (no torch import), so
the config schemas in orchestrator/config.py extend them instead of repeating their fields; and the step
arithmetic the trainer, the base stage and the planner share."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainSettings:
    lr: float = 1e-3
    epochs: int = 2
    micro_batch_size: int = 16
    global_batch_size: int = 16
    zero_stage: int = 2
    precision: str = "fp32"  # fp32 | bf16 | fp16
    warmup_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    save_every_steps: int = 0  # 0: checkpoints_per_epoch, evenly spaced
    checkpoints_per_epoch: int = 1  # 0: the final checkpoint only
    max_seq_len: int = 256
    # Memory, for models that do not fit whole on each GPU. Weights load in the precision's dtype (bf16 halves
    # an 8B model's load from 32 GB to 16 GB per worker).
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    zero_init: bool = True  # ZeRO-3: build the model already partitioned (deepspeed.zero.Init), never whole on a rank
    offload_optimizer: str = "none"  # none | cpu: optimizer state and step on the CPU (DeepSpeedCPUAdam)
    offload_param: str = "none"  # none | cpu: ZeRO-3 only, parameters on the CPU between their uses


@dataclass
class BaseStage:
    """A short pretraining of the tiny model on the task family, so the grid finetunes a model with some skill."""

    n_examples: int = 6000
    epochs: int = 4
    lr: float = 3e-3
    batch_size: int = 32
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 256
    seed: int = 1234
    final_answer: bool = False  # base text without '#### N': finetuning teaches the dataset's format



def save_interval(settings, steps_per_epoch: int) -> int:
    """Optimizer steps between checkpoints; 0 = one at the end of each epoch only (or, with
    checkpoints_per_epoch = 0, at the end of training only)."""
    if settings.save_every_steps:
        return int(settings.save_every_steps)
    per_epoch = int(settings.checkpoints_per_epoch)
    return max(1, steps_per_epoch // per_epoch) if per_epoch > 1 else 0


def steps_per_epoch(n_examples: int, micro_batch_size: int, world_size: int, accumulation: int) -> int:
    """Optimizer steps in one epoch, as the training loop takes them (the planner counts with this too): the
    DistributedSampler gives each rank ceil(n / world) examples, the loader ceil(that / micro) micro-batches,
    and an epoch ends on an optimizer-step boundary. 0: the data do not fill one global batch."""
    micro_batches = math.ceil(math.ceil(n_examples / world_size) / micro_batch_size)
    return micro_batches // accumulation


def linear_warmup_decay(total_steps: int, warmup_frac: float):
    """The learning-rate factor of an optimizer step (LambdaLR's): linear warm-up, then linear decay to 0 at
    total_steps (the trial's loop and the base stage both schedule with it)."""
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def cache_root(local_dir: str | None) -> str | None:
    """Where a node keeps its copies of store objects (base models, checkpoints to sample): store.local_dir."""
    return str(Path(local_dir) / "premem-cache") if local_dir else None
