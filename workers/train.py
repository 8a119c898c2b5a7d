"""The per-worker finetuning recipe: DeepSpeed engine, loop, HF checkpoints.

A trial's workers each run `train_loop_per_worker`; it reads top to bottom: load model and data, build the
engine, train with solution-only loss, save an HF checkpoint every epoch (or every N steps) and report it to
Ray Train, which routes it to the sampling pool.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from store import io
from store.names import ENGINE_DIR
from workers.settings import TrainSettings, cache_root, linear_warmup_decay, save_interval, steps_per_epoch
from workers.tasks import Example, PromptFormat, load_task
from workers.tokens import SupervisedData, collate

TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainJob:
    """Everything a training worker needs; built by the orchestrator from a trial spec."""

    run_id: str
    base_model: str
    task: dict  # keyword arguments of workers.tasks.load_task
    prompt: dict  # PromptFormat fields
    train: TrainSettings
    seed: int = 0
    threads_per_worker: int = 1
    local_dir: str | None = None  # node-local staging and download directory (store.local_dir)
    extra: dict = field(default_factory=dict)


def deepspeed_config(s: TrainSettings, world_size: int) -> dict:
    accumulation = s.global_batch_size // (s.micro_batch_size * world_size)
    zero: dict = {"stage": s.zero_stage}
    if s.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if s.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": s.offload_optimizer, "pin_memory": True}
    if s.offload_param != "none":
        zero["offload_param"] = {"device": s.offload_param, "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": s.micro_batch_size,
        "gradient_accumulation_steps": max(1, accumulation),
        "train_batch_size": s.micro_batch_size * world_size * max(1, accumulation),
        "gradient_clipping": s.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": s.precision == "bf16"},
        "fp16": {"enabled": s.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_for_training(path: str, s: TrainSettings, ds_config: dict):
    """The model as training needs it: in the precision's dtype; under ZeRO-3 with `zero_init`, built inside
    deepspeed.zero.Init so each rank only ever holds its partition (transformers does this while an
    HfDeepSpeedConfig is alive); with `gradient_checkpointing`, activations recomputed in the backward pass."""
    from transformers.integrations import HfDeepSpeedConfig

    from workers.models import load_model

    keep_alive = HfDeepSpeedConfig(ds_config) if s.zero_stage == 3 and s.zero_init else None
    model = load_model(path, DTYPES[s.precision])
    del keep_alive  # transformers holds it by weak reference: only this load is partitioned
    if s.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def make_optimizer(model, s: TrainSettings):
    """AdamW: torch's, or DeepSpeed's CPU Adam when the optimizer is offloaded (DeepSpeed refuses a client
    optimizer that is not, and it is the one that steps fast on CPU)."""
    if s.offload_optimizer == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)


ENGINE_TAG = "state"


@dataclass
class ResumePoint:
    """Where a trial continues after a restart: DeepSpeed's engine checkpoint (weights, optimizer moments, LR
    schedule) plus what DeepSpeed does not keep: the position in the data order and every RNG."""

    engine_dir: str | None = None
    step: int = 0
    epoch_index: int = 0  # the epoch in progress (its DistributedSampler order is fixed by seed and epoch)
    batches_done: int = 0  # micro-batches of that epoch already trained
    downloaded: str | None = None  # a node-local copy of a remote checkpoint: removed once loaded


def _resume_point(checkpoint, local_dir: str | None) -> ResumePoint:
    """The latest reported checkpoint Ray Train hands a restarted worker group (or none: a fresh start): read in
    place on a local or shared filesystem, else downloaded under `local_dir` (and removed once loaded)."""
    import pyarrow.fs

    if checkpoint is None:
        return ResumePoint()
    downloaded = None
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        path = Path(checkpoint.path)
    else:
        downloaded = tempfile.mkdtemp(prefix="premem-resume-", dir=local_dir)
        path = Path(checkpoint.to_directory(downloaded))
    if not (path / ENGINE_DIR).is_dir():
        raise RuntimeError(f"{checkpoint.path}: no DeepSpeed engine state ({ENGINE_DIR}/) to resume from")
    state = json.loads((path / ENGINE_DIR / "position.json").read_text())
    return ResumePoint(str(path / ENGINE_DIR), state["step"], state["epoch_index"], state["batches_done"], downloaded)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():  # dropout on GPUs draws from this process's CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_loop_per_worker(config: dict) -> None:
    """One worker of a trial's TorchTrainer: DeepSpeed finetuning with an HF checkpoint per save point."""
    from workers.lean_imports import skip_unused_optional_imports

    skip_unused_optional_imports()  # before deepspeed's and transformers' imports
    import deepspeed
    import ray.train
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    from workers.models import load_tokenizer
    from workers.placement import here

    entered_at = time.time()  # wall clock: the trial compares it with when its TorchTrainer started
    job = TrainJob(**{**config, "train": TrainSettings(**config["train"])})
    s = job.train
    torch.set_num_threads(job.threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(job.seed)
    random.seed(job.seed)
    np.random.seed(job.seed)

    # Model and data; after a restart the engine state below replaces the base weights.
    if job.local_dir:
        Path(job.local_dir).mkdir(parents=True, exist_ok=True)
    resume = _resume_point(ray.train.get_checkpoint(), job.local_dir)
    deepspeed.init_distributed()  # adopts Ray Train's process group; DeepSpeed's configs read its world size
    base_model = io.local_copy(job.base_model, cache_root(job.local_dir))  # this node's copy (object store)
    tokenizer = load_tokenizer(base_model)
    ds_config = deepspeed_config(s, world)
    model = load_for_training(base_model, s, ds_config)
    splits = load_task(**job.task)
    fmt = PromptFormat(**job.prompt)
    probe = probe_texts(splits.train, job.prompt)
    data = SupervisedData(splits.train, tokenizer, fmt, s.max_seq_len)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=job.seed)
    loader = DataLoader(data, batch_size=s.micro_batch_size, sampler=sampler, drop_last=False,
                        collate_fn=lambda b: collate(b, tokenizer.pad_token_id))

    # Engine: the optimizer and schedule are torch's; DeepSpeed owns ZeRO, precision and accumulation, and
    # saves and restores all three with the weights.
    accumulation = ds_config["gradient_accumulation_steps"]
    steps = steps_per_epoch(len(data), s.micro_batch_size, world, accumulation)
    if steps == 0:
        raise ValueError(f"{len(data)} train examples do not fill one global batch of {s.global_batch_size}")
    total_steps = steps * s.epochs
    every = save_interval(s, steps)
    optimizer = make_optimizer(model, s)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(total_steps, s.warmup_frac))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=ds_config, dist_init_required=False)
    if resume.engine_dir:
        engine.load_checkpoint(resume.engine_dir, tag=ENGINE_TAG)
        _set_rng_state(torch.load(Path(resume.engine_dir) / f"rng_rank{rank}.pt", weights_only=False))
        if resume.downloaded:  # loaded: the node's disk is not the store
            shutil.rmtree(resume.downloaded, ignore_errors=True)
    step = resume.step
    clock = PhaseClock(entered_at=entered_at, ready_at=time.time(), placement=here(engine.device))

    # Train: loss on solution tokens only; report a checkpoint at each save point.
    losses: list[tuple[int, float]] = []
    window: list[torch.Tensor] = []  # this optimizer step's micro-batch losses, on the engine's device
    for epoch in range(resume.epoch_index, s.epochs):
        sampler.set_epoch(epoch)
        engine.train()
        skip = resume.batches_done if epoch == resume.epoch_index else 0
        for micro_step, batch in enumerate(loader):
            if micro_step < skip:
                continue  # trained before the restart: same order, so the same batches
            if micro_step >= steps * accumulation:
                break  # every epoch ends on an optimizer-step boundary
            t_step = time.perf_counter()
            loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
            engine.backward(loss)
            engine.step()
            window.append(loss.detach())
            clock.compute_seconds += time.perf_counter() - t_step
            if len(window) == accumulation:
                step += 1
                losses.append((step, mean_across_ranks(torch.stack(window).mean(), dist)))
                window = []
                if every and step % every == 0 and step < total_steps:
                    position = {"step": step, "epoch_index": epoch, "batches_done": micro_step + 1}
                    _save_and_report(engine, tokenizer, job, position, step / steps, losses, clock,
                                     resume.step, probe)
                    losses = []
        if (not every and s.checkpoints_per_epoch > 0) or step == total_steps:
            position = {"step": step, "epoch_index": epoch + 1, "batches_done": 0}
            _save_and_report(engine, tokenizer, job, position, float(epoch + 1), losses, clock, resume.step, probe)
            losses = []


@dataclass
class PhaseClock:
    """Where a worker's time went, reported with every checkpoint: the trial turns it into its overhead."""

    entered_at: float  # the loop function started (wall clock)
    ready_at: float  # model, data and DeepSpeed engine ready (wall clock)
    placement: dict = field(default_factory=dict)  # where this worker runs (workers.placement.here)
    compute_seconds: float = 0.0  # forward/backward/step
    checkpoint_seconds: float = 0.0  # HF save and Ray Train report (checkpoint persisted to storage)

    def metrics(self) -> dict:
        return {"worker_entered_at": self.entered_at, "worker_ready_at": self.ready_at,
                "train_compute_seconds": self.compute_seconds, "checkpoint_seconds": self.checkpoint_seconds,
                "placement": self.placement}


def mean_across_ranks(value: torch.Tensor, dist) -> float:
    """The mean of a scalar tensor over the trial's ranks.

    The reduction runs on the tensor's own device (the engine's): on GPUs Ray Train opens the process group
    with NCCL only (ray/train/torch/config.py), which cannot reduce a CPU tensor."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value.item())
    total = value.detach().reshape(1).to(torch.float32).clone()
    dist.all_reduce(total)
    return float(total.item() / dist.get_world_size())


def probe_texts(train: list[Example], prompt: dict) -> tuple[list[str], list[str]]:
    """The first train examples as the pool scores them (its original format): workers/probe.py."""
    from workers.probe import PROBES

    original = PromptFormat(**{**prompt, "answer_prefix": ""})
    return [original.prompt(e.question) for e in train[:PROBES]], [original.target(e.solution) for e in train[:PROBES]]


def _save_and_report(engine, tokenizer, job: TrainJob, position: dict, epoch: float,
                     losses: list[tuple[int, float]], clock: PhaseClock, resumed_from_step: int,
                     probe: tuple[list[str], list[str]] | None = None) -> None:
    """Report one checkpoint to Ray Train: the HF directory the sampler loads (rank 0; ZeRO-3 gathers 16-bit
    weights first) and, under engine/, what a restart resumes from (every rank writes its own shard and RNG;
    Ray Train uploads all ranks' files into the one checkpoint directory)."""
    import ray.train

    started = time.perf_counter()
    step = position["step"]
    rank = ray.train.get_context().get_world_rank()
    state_dict = engine._zero3_consolidated_16bit_state_dict() if job.train.zero_stage == 3 else None
    if probe:  # every rank: a ZeRO-3 forward gathers parameters from all of them
        from workers.probe import trainer_probe_nll, write_probe

        probe_nll = trainer_probe_nll(engine.module, tokenizer, *probe)
    # train_losses: every optimizer step's loss since the last report; the driver logs them to MLflow from this
    # report (Tune hands it over), so they never depend on the checkpoint's evaluation
    metrics = {"step": step, "epoch": epoch, "train_loss": losses[-1][1] if losses else float("nan"),
               "train_losses": [[s, loss] for s, loss in losses], **clock.metrics()}
    with tempfile.TemporaryDirectory(prefix="premem-ckpt-", dir=job.local_dir) as tmp:  # gone once reported
        engine_dir = Path(tmp) / ENGINE_DIR
        engine.save_checkpoint(str(engine_dir), tag=ENGINE_TAG, save_latest=False)
        torch.save(_rng_state(), engine_dir / f"rng_rank{rank}.pt")
        if rank == 0:
            (engine_dir / "position.json").write_text(json.dumps(position))
            engine.module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if probe:  # the pool checks that it evaluates these weights (workers/probe.py)
                write_probe(tmp, *probe, probe_nll, job.train.precision)
            state = {"run_id": job.run_id, "step": step, "epoch": epoch, "train_loss": losses,
                     "resumed_from_step": resumed_from_step}  # > 0: this worker group restarted there
            Path(tmp, TRAINER_STATE).write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"step_{step:06d}")
    clock.checkpoint_seconds += time.perf_counter() - started
