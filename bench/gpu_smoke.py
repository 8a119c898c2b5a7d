"""The GPU acceptance run: one offline call of at most 8 minutes, figures and pass/fail in one JSON file.

On the lent GPU machine (docs/gpu.md: Python 3.12 with its own CUDA torch, no network), from the working tree:

    tar -xJf .device-bundle/device-site.tar.xz -C /tmp/site && PYTHONPATH=/tmp/site:. python3 -m bench.gpu_smoke --out $OUT

(`make device-bundle` builds the bundle here; `mkdir -p /tmp/site` first.) Each stage runs in its own process
under a hard timeout, writing its figures as it goes, so gpu_smoke.json is always written:

  installed  versions, the GPUs, every module the sweep imports (deepspeed, ray.train.torch, mlflow, ...);
  train      without Ray: a single-rank NCCL process group; train=gpu's DeepSpeed config (bf16, ZeRO-3, zero.Init,
             gradient checkpointing) on a ~1B-parameter Llama built from a config with random weights: optimizer
             steps, tokens/s, model FLOP utilisation against 790 TFLOP/s; the engine checkpoint saved and reloaded
             with the next loss equal; the CUDA RNG state saved and restored (the same dropout draws); the
             trained model gathered to an HF directory;
  sample     the HF backend on cuda on that directory: greedy and seeded sampling equal across a fresh load and a
             reload, completions/s, reference NLL in bf16 against fp32;
  sweep      the whole sweep (sweep=small-sized, local Ray, train=gpu sampler=hf, trainer and sampler sharing the
             GPU by fractional GPU resources, MLflow on SQLite): every checkpoint evaluated, records exactly once,
             where each worker and actor ran;
  vllm       only where vLLM imports (not on the lent machine: it cannot travel): the swap against a fresh engine,
             and with 3+ GPUs a tensor-parallel-2 re-evaluation.

The store is under /tmp (--store); under --out: gpu_smoke.json and one log per stage (at most 6 files, flat).
Extra arguments are Hydra overrides for the sweep. `--cpu-dry-run` runs the same stages on CPU (gloo, a tiny
model, a CPU sweep) to check the code paths on a machine without a GPU. Exits 2 with one line where no GPU is
visible (or on bad arguments), 1 when a check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SMALL = ["sweep=small", "task.n_train=256", "task.n_test=128", "train.epochs=2", "train.global_batch_size=64",
         "train.micro_batch_size=8", "sampler.k=4", "sampler.max_new_tokens=128", "model.base_stage.n_examples=2000",
         "model.base_stage.epochs=2"]
# the CPU dry run's sweep: the same stages and checks, sized for two cores
DRY_SWEEP = ["sweep=small", "train=cpu", "task.n_train=32", "task.n_test=16", "train.epochs=1",
             "train.global_batch_size=16", "train.micro_batch_size=16", "sampler.k=2", "sampler.max_new_tokens=16",
             "model.base_stage.n_examples=200", "model.base_stage.epochs=1", "sampler.num_actors=1",
             "cluster.num_cpus=2"]
# Seconds per stage: 475 in all with the precompile, inside the 8 minutes the call may take (vllm: never there).
TIMEOUTS = {"installed": 40, "train": 150, "sample": 65, "sweep": 200, "vllm": 240}
PRECOMPILE_TIMEOUT = 20  # the bundle ships no .pyc: compiled on 16 cores first, not by each stage's imports
H200_BF16_FLOPS = 790e12  # dense bf16, no sparsity
# ~1B parameters, Llama-3.2-1B's body (2048 wide, 16 layers, GQA 32/8, MLP 8192); the vocabulary is the
# tokenizer's, built here from the synthetic task (no download).
GPU_MODEL = {"hidden_size": 2048, "num_layers": 16, "num_heads": 32, "num_kv_heads": 8, "intermediate_size": 8192,
             "seq_len": 1024, "micro_batch_size": 8, "steps": 6}
DRY_MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
             "seq_len": 64, "micro_batch_size": 2, "steps": 2}
NLL_BF16_TOLERANCE = 0.1  # max |NLL(bf16) - NLL(fp32)| per example, nats per token


@dataclass(frozen=True)
class GpuPlan:
    """How the smoke run splits the box's GPUs between training and the sampling pool."""

    train_workers: int
    gpus_per_worker: float
    sampler_actors: int
    gpus_per_actor: float
    tensor_parallel_2: bool  # evaluate again with an engine over two GPUs

    def overrides(self, gpus: int, vllm: bool = True) -> list[str]:
        shared = self.gpus_per_actor < 1
        return [f"train.num_workers={self.train_workers}", f"train.gpus_per_worker={self.gpus_per_worker:g}",
                f"sampler.num_actors={self.sampler_actors}", f"sampler.gpus_per_actor={self.gpus_per_actor:g}",
                f"cluster.num_gpus={gpus}",
                # a shared GPU: vLLM takes its share of the memory, training the rest
                *(["sampler.gpu_memory_utilization=0.4"] if shared and vllm else [])]


def gpu_plan(gpus: int) -> GpuPlan:
    """Training gets the largest power of two that leaves a GPU to sample (so the global batch divides)."""
    if gpus < 1:
        raise ValueError("gpu-smoke needs a GPU; none visible")
    if gpus == 1:
        return GpuPlan(1, 0.5, 1, 0.5, False)
    workers = 1
    while workers * 2 <= gpus - 1:
        workers *= 2
    return GpuPlan(workers, 1.0, gpus - workers, 1.0, gpus >= 3)


class Facts(dict):
    """A stage's figures, rewritten to its JSON file at every update: a stage killed at its timeout leaves what
    it had measured."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.path.write_text(json.dumps(self, indent=1, default=str))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- installed
REQUIRED_IMPORTS = ("torch", "transformers", "deepspeed", "ray", "ray.tune", "ray.train.torch", "hydra", "omegaconf",
                    "mlflow", "sqlalchemy", "alembic", "math_verify", "pyarrow", "pandas", "matplotlib", "sklearn",
                    "workers.train", "workers.sample", "workers.backends.hf", "orchestrator.schedule",
                    "orchestrator.sweep", "orchestrator.tracking", "analysis.plots")


def stage_installed(facts: Facts, store: Path, dry: bool) -> bool:
    import importlib
    import importlib.metadata as md

    errors = {}
    for name in REQUIRED_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # recorded, not raised: the JSON says which import failed and why
            errors[name] = f"{type(exc).__name__}: {exc}"[:500]
    facts["import_errors"] = errors
    versions = {}
    for package in ("torch", "transformers", "accelerate", "deepspeed", "ray", "mlflow-skinny", "hydra-core",
                    "math-verify", "numpy", "vllm"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    facts["versions"] = versions
    import torch

    facts["python"] = sys.version.split()[0]
    facts["torch_cuda"] = torch.version.cuda
    facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    facts["bf16_supported"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return not errors and (dry or bool(facts["gpus"]))


# ----------------------------------------------------------------------------------------------- train
def train_settings(dry: bool, model: dict):
    """train=gpu's settings (conf/train/gpu.yaml) for one rank: the config under test, with the batch sized to
    the model; the CPU dry run keeps ZeRO-3, zero.Init and checkpointing but trains in fp32 (CPU bf16 is slow)."""
    from omegaconf import OmegaConf

    from workers.settings import TrainSettings

    fields = set(TrainSettings.__dataclass_fields__)
    gpu = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "train" / "gpu.yaml"))
    settings = TrainSettings(**{k: v for k, v in gpu.items() if k in fields})
    settings.micro_batch_size = settings.global_batch_size = model["micro_batch_size"]
    settings.max_seq_len = model["seq_len"]
    settings.warmup_frac = 0.0
    if dry:
        settings.precision = "fp32"
    return settings


def build_model_dir(path: Path, model: dict, dry: bool) -> Path:
    """An HF directory: the synthetic task's BPE tokenizer and a Llama of `model`'s shape with random weights,
    initialised on the GPU (seconds for 1B) and saved in bf16. Attention dropout is on, so that the loss after
    a checkpoint reload equals the first only if the RNG state came back too."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.models import build_tokenizer, save_pretrained_atomic
    from workers.tasks import PromptFormat
    from workers.tasks.synthetic import make_examples

    if (path / "config.json").is_file():
        return path
    fmt = PromptFormat()
    examples = make_examples(7, 500, "gpu-smoke-base")
    tokenizer = build_tokenizer([fmt.prompt(e.question) + fmt.target(e.solution) for e in examples], 512)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=model["hidden_size"],
                         intermediate_size=model["intermediate_size"], num_hidden_layers=model["num_layers"],
                         num_attention_heads=model["num_heads"], num_key_value_heads=model["num_kv_heads"],
                         max_position_embeddings=model["seq_len"] * 2, tie_word_embeddings=True,
                         attention_dropout=0.1, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cpu" if dry else "cuda"):
        net = LlamaForCausalLM(config).to(torch.float32 if dry else torch.bfloat16)
    save_pretrained_atomic(net, tokenizer, path)
    return path


def model_flops_per_token(n_params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token of the model alone (no recomputation): 6N for the weights' products, forward and
    backward, plus attention's scores and values, 12 x layers x width x sequence length (PaLM's appendix B)."""
    return 6 * n_params + 12 * layers * hidden * seq_len


def stage_train(facts: Facts, store: Path, dry: bool) -> bool:
    import deepspeed
    import torch
    import torch.distributed as dist

    from workers.train import (ENGINE_TAG, _rng_state, _set_rng_state, deepspeed_config, load_for_training,
                               make_optimizer)

    model_shape = DRY_MODEL if dry else GPU_MODEL
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    if dry:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=0, world_size=1)
    else:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    probe = torch.ones(1, device=device)
    dist.all_reduce(probe)  # the collective runs on the group's backend
    facts["process_group"] = {"backend": dist.get_backend(), "world_size": dist.get_world_size(),
                              "all_reduce": float(probe.item())}
    deepspeed.init_distributed()  # adopts the group, as under Ray Train

    started = time.perf_counter()
    model_dir = build_model_dir(store / "model", model_shape, dry)
    facts["model_build_s"] = round(time.perf_counter() - started, 1)
    s = train_settings(dry, model_shape)
    ds_config = deepspeed_config(s, 1)
    facts["deepspeed_config"] = ds_config
    facts["train_settings"] = asdict(s)
    model = load_for_training(str(model_dir), s, ds_config)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    facts["parameters"] = n_params
    facts["zero3_partitioned"] = all(hasattr(p, "ds_numel") for p in model.parameters())
    optimizer = make_optimizer(model, s)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config,
                                           dist_init_required=False)
    engine.train()

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def batch() -> torch.Tensor:
        return torch.randint(4, vocab, (s.micro_batch_size, s.max_seq_len), generator=generator).to(engine.device)

    def step(ids: torch.Tensor) -> float:
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        return float(loss.item())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    losses = [step(batch())]  # the first step allocates and warms the kernels: not timed
    sync()
    started = time.perf_counter()
    for _ in range(model_shape["steps"]):
        losses.append(step(batch()))
    sync()
    elapsed = time.perf_counter() - started
    tokens = model_shape["steps"] * s.micro_batch_size * s.max_seq_len
    flops = model_flops_per_token(n_params, model_shape["num_layers"], model_shape["hidden_size"], s.max_seq_len)
    facts["losses"] = losses
    facts["step_s"] = elapsed / model_shape["steps"]
    facts["tokens_per_s"] = tokens / elapsed
    facts["model_tflops_per_s"] = tokens * flops / elapsed / 1e12
    facts["mfu"] = tokens * flops / elapsed / H200_BF16_FLOPS
    if device.type == "cuda":
        facts["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30

    # Engine checkpoint and RNG: the step after a reload draws the same dropout and gives the same loss.
    engine_dir = store / "engine"
    started = time.perf_counter()
    engine.save_checkpoint(str(engine_dir), tag=ENGINE_TAG, save_latest=False)
    rng = _rng_state()
    facts["checkpoint_save_s"] = time.perf_counter() - started
    next_batch = batch()
    next_loss = step(next_batch)
    started = time.perf_counter()
    engine.load_checkpoint(str(engine_dir), tag=ENGINE_TAG)
    _set_rng_state(rng)
    facts["checkpoint_load_s"] = time.perf_counter() - started
    reloaded_loss = step(next_batch)
    facts["next_loss"], facts["next_loss_after_reload"] = next_loss, reloaded_loss
    facts["next_loss_equal"] = next_loss == reloaded_loss

    state = _rng_state()
    first = torch.nn.functional.dropout(torch.ones(1 << 20, device=device), 0.5)
    _set_rng_state(state)
    again = torch.nn.functional.dropout(torch.ones(1 << 20, device=device), 0.5)
    facts["rng_restored_same_dropout"] = bool(torch.equal(first, again))
    facts["rng_state_has_cuda"] = "cuda" in state

    # The HF directory a checkpoint report writes (ZeRO-3 gathers the 16-bit weights): the sample stage's input.
    started = time.perf_counter()
    state_dict = engine._zero3_consolidated_16bit_state_dict()
    from workers.models import load_tokenizer, save_pretrained_atomic

    engine.module.config.attention_dropout = 0.0
    save_pretrained_atomic(_Saver(engine.module, state_dict), load_tokenizer(str(model_dir)), store / "trained")
    facts["hf_save_s"] = time.perf_counter() - started
    dist.destroy_process_group()
    return (facts["next_loss_equal"] and facts["rng_restored_same_dropout"] and facts["zero3_partitioned"]
            and all(map(_finite, losses)) and (dry or facts["rng_state_has_cuda"]))


class _Saver:
    """save_pretrained of a module with the gathered state dict (what _save_and_report passes)."""

    def __init__(self, module, state_dict):
        self.module, self.state_dict = module, state_dict

    def save_pretrained(self, path, **kwargs) -> None:
        self.module.save_pretrained(path, state_dict=self.state_dict, **kwargs)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


# ---------------------------------------------------------------------------------------------- sample
def stage_sample(facts: Facts, store: Path, dry: bool) -> bool:
    import numpy as np
    import torch

    from workers.backends import SamplingSettings
    from workers.backends.hf import HFBackend
    from workers.tasks import PromptFormat
    from workers.tasks.synthetic import make_examples

    model_dir = store / "trained"
    if not (model_dir / "config.json").is_file():  # the train stage failed before its save: sample the base
        model_dir = build_model_dir(store / "model", DRY_MODEL if dry else GPU_MODEL, dry)
    facts["checkpoint"] = str(model_dir)
    device = "cpu" if dry else "cuda"
    fmt = PromptFormat()
    examples = make_examples(11, 16 if dry else 128, "gpu-smoke")
    prompts, targets = [fmt.prompt(e.question) for e in examples], [fmt.target(e.solution) for e in examples]
    new = 16 if dry else 64
    greedy = SamplingSettings(k=1, temperature=0.0, top_p=1.0, max_new_tokens=new, batch_tokens=1 << 18)
    seeded = SamplingSettings(k=4, temperature=0.8, top_p=0.95, max_new_tokens=new, seed=3, batch_tokens=1 << 18)

    def run(backend: HFBackend) -> tuple[list, list]:
        return backend.sample(prompts, greedy), backend.sample(prompts, seeded)

    backend = HFBackend(device=device, dtype=torch.bfloat16)
    started = time.perf_counter()
    backend.load(str(model_dir))
    facts["load_s"] = time.perf_counter() - started
    first = run(backend)
    started = time.perf_counter()
    completions = backend.sample(prompts, seeded)
    facts["completions_per_s"] = sum(map(len, completions)) / (time.perf_counter() - started)
    backend.load(str(model_dir))  # a reload into the same backend
    reloaded = run(backend)
    nll_bf16 = backend.score(prompts, targets)
    backend.close()
    fresh_backend = HFBackend(device=device, dtype=torch.bfloat16)
    fresh_backend.load(str(model_dir))
    fresh = run(fresh_backend)
    fresh_backend.close()
    fp32 = HFBackend(device=device, dtype=torch.float32)
    fp32.load(str(model_dir))
    nll_fp32 = fp32.score(prompts, targets)
    fp32.close()
    facts["greedy_equal_reload"] = first[0] == reloaded[0]
    facts["greedy_equal_fresh"] = first[0] == fresh[0]
    facts["seeded_equal_reload"] = first[1] == reloaded[1]
    facts["seeded_equal_fresh"] = first[1] == fresh[1]
    facts["seeded_distinct_samples"] = float(np.mean([len(set(c)) for c in first[1]]))
    facts["ref_nll_mean_bf16"] = float(np.mean(nll_bf16))
    facts["ref_nll_max_abs_diff_bf16_vs_fp32"] = float(np.max(np.abs(nll_bf16 - nll_fp32)))
    return (facts["greedy_equal_reload"] and facts["greedy_equal_fresh"] and facts["seeded_equal_reload"]
            and facts["seeded_equal_fresh"] and facts["ref_nll_max_abs_diff_bf16_vs_fp32"] < NLL_BF16_TOLERANCE)


# ----------------------------------------------------------------------------------------------- sweep
def sweep_overrides(gpus: int, dry: bool, store: Path, extra: list[str]) -> list[str]:
    if dry:
        return [*DRY_SWEEP, "sampler=hf", f"store.root={store / 'sweep'}", *extra]
    plan = gpu_plan(gpus)
    return ["train=gpu", "sampler=hf", *SMALL, *plan.overrides(gpus, vllm=False), f"store.root={store / 'sweep'}",
            *extra]


def check_sweep(sweep_dir: Path) -> dict:
    """Every checkpoint Ray Train registered has its records, each (run, step, split, example) once, as many as
    the task's splits; the MLflow parent and children FINISHED; where each train worker and sampler ran."""
    import pandas as pd
    from mlflow import MlflowClient

    from store.layout import open_sweep

    paths = open_sweep(str(sweep_dir))
    plan = json.loads((sweep_dir / "plan.json").read_text())
    frame = pd.concat(pd.read_parquet(f) for f in sorted((sweep_dir / "records").rglob("*.original.parquet")))
    key = ["run_id", "step", "split", "example_id", "variant"]
    out: dict = {"records": len(frame), "duplicated_records": int(frame.duplicated(key).sum()), "trials": {}}
    for trial in plan:
        steps = sorted(int(Path(c).name.removeprefix("step_")) for c in paths.trial_checkpoints(trial["run_id"]))
        got = frame[frame.run_id == trial["run_id"]]
        counts = got.groupby(["step", "split"]).size().unstack("split")  # rows per checkpoint and split
        out["trials"][trial["run_id"]] = {
            "checkpoints": steps, "evaluated": sorted(map(int, got.step.unique())),
            "rows_per_split": {split: sorted(map(int, counts[split].dropna().unique())) for split in counts},
            "every_step_both_splits": bool(set(counts) == {"train", "test"} and not counts.isna().any().any())}
    # the trainer's probe in every checkpoint kept: the pool checked each swap against it (workers/probe.py)
    kept = [p for p in (sweep_dir / "checkpoints").glob("*/step_*") if (p / "config.json").is_file()]
    out["checkpoints_kept_with_probe"] = [sum((p / "probe_nll.json").is_file() for p in kept), len(kept)]
    placement = sweep_dir / "analysis" / "placement"
    out["placement"] = {p.stem: json.loads(p.read_text()) for p in sorted(placement.glob("*.json"))}
    uri = f"sqlite:///{sweep_dir.parents[1] / 'mlflow.db'}"  # tracking.uri null: the store's SQLite file
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    out["mlflow"] = {"uri": uri, "runs": len(runs), "statuses": sorted({r.info.status for r in runs})}
    out["every_checkpoint_evaluated"] = all(t["checkpoints"] and t["checkpoints"] == t["evaluated"]
                                            for t in out["trials"].values())
    # no key twice, and every checkpoint has the same number of rows per split (all its examples, once)
    out["records_exactly_once"] = out["duplicated_records"] == 0 and all(
        t["every_step_both_splits"] and all(len(n) == 1 for n in t["rows_per_split"].values())
        for t in out["trials"].values())
    out["mlflow_ok"] = len(runs) == len(plan) + 1 and out["mlflow"]["statuses"] == ["FINISHED"]
    return out


def stage_sweep(facts: Facts, store: Path, dry: bool, extra: list[str]) -> bool:
    import torch

    gpus = torch.cuda.device_count()
    # a machine kept warm between calls still has the last call's store: the same command would continue that
    # sweep (rerun is resume) and this stage would check the old one's records and MLflow runs
    shutil.rmtree(store / "sweep", ignore_errors=True)
    args = [sys.executable, "-m", "orchestrator", *sweep_overrides(gpus, dry, store, extra)]
    facts["command"] = " ".join(args[1:])
    started = time.perf_counter()
    code = subprocess.call(args)
    facts["exit_code"], facts["wall_s"] = code, time.perf_counter() - started
    sweeps = store / "sweep" / "sweeps"
    newest = max(sweeps.iterdir(), key=lambda p: p.stat().st_mtime) if sweeps.is_dir() else None
    facts["sweep_dir"] = str(newest) if newest else None
    if code != 0 or newest is None:
        return False
    checks = check_sweep(newest)
    for key, value in checks.items():
        facts[key] = value
    workers = [w for name, ws in checks["placement"].items() if name != "samplers" for w in ws]
    samplers = checks["placement"].get("samplers", [])
    want = "cpu" if dry else "cuda"
    facts["placement_ok"] = bool(workers and samplers) and all(
        str(p.get("device", "")).startswith(want) and (dry or p.get("gpu_ids")) for p in [*workers, *samplers])
    with_probe, kept = checks["checkpoints_kept_with_probe"]
    return (checks["every_checkpoint_evaluated"] and checks["records_exactly_once"] and checks["mlflow_ok"]
            and facts["placement_ok"] and with_probe == kept > 0)


# ------------------------------------------------------------------------------------------------ vllm
def stage_vllm(facts: Facts, store: Path, dry: bool) -> bool:
    """Where vLLM imports: the in-place swap against a fresh engine on the sweep's checkpoints, throughput, and
    with 3+ GPUs the checkpoints evaluated again by a tensor-parallel-2 engine."""
    import numpy as np
    import torch

    from workers.backends import SamplingSettings
    from workers.backends.vllm import VLLMBackend
    from workers.tasks import PromptFormat
    from workers.tasks.synthetic import make_examples

    sweeps = store / "sweep" / "sweeps"
    sweep_dir = max(sweeps.iterdir(), key=lambda p: p.stat().st_mtime)
    checkpoints = sorted(str(p) for p in (sweep_dir / "checkpoints").glob("*/step_*") if (p / "config.json").is_file())
    first, last = checkpoints[0], checkpoints[-1]
    fmt = PromptFormat()
    examples = make_examples(11, 256, "gpu-smoke")
    prompts, targets = [fmt.prompt(e.question) for e in examples], [fmt.target(e.solution) for e in examples]
    greedy = SamplingSettings(k=1, temperature=0.0, top_p=1.0, max_new_tokens=128)
    sampled = SamplingSettings(k=8, temperature=0.8, top_p=0.95, max_new_tokens=128)
    engine = VLLMBackend(gpu_memory_utilization=0.4)
    started = time.perf_counter()
    engine.load(first)
    facts["cold_start_s"] = time.perf_counter() - started
    swaps = []
    for i in range(3):
        started = time.perf_counter()
        engine.load(last if i % 2 == 0 else first)
        swaps.append(time.perf_counter() - started)
    engine.load(last)
    swapped = engine.sample_and_score(prompts, greedy, prompts, targets)
    started = time.perf_counter()
    completions = engine.sample(prompts, sampled)
    facts["completions_per_s"] = sum(len(c) for c in completions) / (time.perf_counter() - started)
    facts["engine_builds"] = engine.builds
    engine.close()
    fresh_engine = VLLMBackend(gpu_memory_utilization=0.4)
    fresh_engine.load(last)
    fresh = fresh_engine.sample_and_score(prompts, greedy, prompts, targets)
    fresh_engine.close()
    facts["swap_s"] = statistics.median(swaps)
    facts["greedy_match_swapped_vs_fresh"] = float(np.mean([a == b for a, b in zip(swapped[0], fresh[0])]))
    facts["ref_nll_max_abs_diff_swapped_vs_fresh"] = float(np.nanmax(np.abs(swapped[1] - fresh[1])))
    ok = (facts["engine_builds"] == 1 and facts["greedy_match_swapped_vs_fresh"] >= 0.95
          and facts["ref_nll_max_abs_diff_swapped_vs_fresh"] < 0.05)
    if torch.cuda.device_count() >= 3:
        args = [sys.executable, "-m", "orchestrator.reeval", str(sweep_dir), "sampler.variant=tp2",
                "sampler.tensor_parallel_size=2", "sampler.gpus_per_actor=2", "sampler.num_actors=1"]
        facts["tensor_parallel_2_exit_code"] = subprocess.call(args)
        ok = ok and facts["tensor_parallel_2_exit_code"] == 0
    return ok


# -------------------------------------------------------------------------------------------- driver
STAGES = {"installed": stage_installed, "train": stage_train, "sample": stage_sample, "sweep": stage_sweep,
          "vllm": stage_vllm}


def run_stage(name: str, out: Path, store: Path, dry: bool, extra: list[str], timeout_s: float) -> dict:
    """The stage in a child process (its own process group: a timeout kills Ray and DeepSpeed's children too);
    its figures as far as it got, with ok, exit code, seconds and whether it timed out."""
    facts_path = store / f"stage_{name}.json"
    facts_path.unlink(missing_ok=True)
    command = [sys.executable, "-u", "-m", "bench.gpu_smoke", "--stage", name, "--out", str(out), "--store",
               str(store), *(["--cpu-dry-run"] if dry else []), *extra]
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code, timed_out = child.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            code, timed_out = child.wait(), True
    facts = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
    return {**facts, "ok": code == 0, "exit_code": code, "timed_out": timed_out,
            "wall_s": round(time.perf_counter() - started, 1)}


def child_main(name: str, store: Path, dry: bool, extra: list[str]) -> int:
    """One stage, in the child: exit 0 when its checks passed, 1 when not (its figures are in its JSON)."""
    facts = Facts(store / f"stage_{name}.json")
    try:
        ok = STAGES[name](facts, store, dry, extra) if name == "sweep" else STAGES[name](facts, store, dry)
    except Exception as exc:  # the figures so far stay; the error joins them
        import traceback

        traceback.print_exc()
        facts["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        ok = False
    return 0 if ok else 1


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_smoke", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="where gpu_smoke.json and the stage logs go (default $OUT, else "
                                      "/tmp/premem-gpu-smoke/out)")
    parser.add_argument("--store", default="/tmp/premem-gpu-smoke/store", help="models, checkpoints, the sweep")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same stages on CPU (gloo, tiny sizes)")
    parser.add_argument("--stages", default="installed,train,sample,sweep,vllm", help="comma-separated subset")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)  # a child's one stage
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        parser.error(f"unknown option {unknown[0]} (other arguments are Hydra overrides for the sweep)")
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES):
        parser.error(f"--stages: {','.join(sorted(set(stages) - set(STAGES)))} is not one of {','.join(STAGES)}")
    args.stages = stages
    return args, extra


def main(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    store = Path(args.store)
    store.mkdir(parents=True, exist_ok=True)
    if args.stage:
        return child_main(args.stage, store, args.cpu_dry_run, extra)
    out = Path(args.out or os.environ.get("OUT") or "/tmp/premem-gpu-smoke/out")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpu_dry_run": args.cpu_dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "stages": {}}
    path = out / "gpu_smoke.json"
    report["precompile"] = precompile_bundle()
    for name in args.stages:
        if name == "vllm" and (args.cpu_dry_run or not _vllm_importable()):
            report["stages"][name] = {"ok": True, "skipped": "vllm does not import here (it cannot travel to the "
                                                               "lent machine: docs/gpu.md)"}
            continue
        print(f"gpu-smoke: stage {name} (at most {TIMEOUTS[name]}s)", flush=True)
        report["stages"][name] = result = run_stage(name, out, store, args.cpu_dry_run, extra, TIMEOUTS[name])
        path.write_text(json.dumps(report, indent=1, default=str))
        print(f"gpu-smoke: stage {name}: {'passed' if result['ok'] else 'FAILED'} in {result['wall_s']:.0f}s"
              + (" (timed out)" if result["timed_out"] else ""), flush=True)
        if name == "installed" and not args.cpu_dry_run and not result.get("gpus"):
            report["ok"] = False
            path.write_text(json.dumps(report, indent=1, default=str))
            print("error: gpu-smoke needs a GPU: torch sees no CUDA device (no GPU here, or a CPU build of torch); "
                  "--cpu-dry-run checks the code paths without one", file=sys.stderr)
            return 2
    report["ok"] = all(stage["ok"] for stage in report["stages"].values())
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu-smoke: {'PASSED' if report['ok'] else 'FAILED'}; wrote {path}", flush=True)
    return 0 if report["ok"] else 1


def precompile_bundle() -> dict:
    """Byte-compile the PYTHONPATH folders outside the repo (the unpacked bundle) on all cores, within a limit:
    what it leaves is compiled by the imports that need it, as without it."""
    repo = Path(__file__).resolve().parents[1]
    folders = [p for p in os.environ.get("PYTHONPATH", "").split(":") if p and Path(p).resolve() != repo
               and Path(p).is_dir()]
    if not folders:
        return {"folders": []}
    started = time.perf_counter()
    try:
        code = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *folders],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=PRECOMPILE_TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        code = None
    return {"folders": folders, "exit_code": code, "wall_s": round(time.perf_counter() - started, 1)}


def _vllm_importable() -> bool:
    from importlib.util import find_spec

    return find_spec("vllm") is not None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
