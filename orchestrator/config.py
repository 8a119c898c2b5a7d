"""Structured configs (registered in Hydra's ConfigStore) and the range checks types cannot express.

Hydra/OmegaConf reject unknown keys and wrong types while composing; `validate` checks values, one config group
after another, each group's checks beside its dataclass (`validate_train` after `TrainConfig`, ...). Both end in
one `ConfigError` line naming the field and the value, raised before anything is written.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import unquote

from hydra.core.config_store import ConfigStore
from omegaconf import II, DictConfig, OmegaConf, open_dict

from store.names import CURATION_STRATEGIES
from workers.settings import BaseStage, TrainSettings
from workers.backends import BACKENDS
from workers.tasks import TASKS, generated_tasks


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field and the value."""


def _check(ok: bool, field_name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(redact(f"{field_name}={value!r}: {rule}"))


def _one_of(names) -> str:
    """'a, b or c'."""
    names = list(names)
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def _check_resources(field_name: str, resources, prefix: str) -> None:
    for key, amount in resources.items():
        _check(amount > 0 and key.lower() not in ("cpu", "gpu", "memory"), f"{prefix}{field_name}.{key}", amount,
               "a custom resource with an amount > 0 (CPUs and GPUs have their own fields)")


@dataclass
class ModelConfig:
    name: str = "tiny"
    path: Optional[str] = None  # an HF directory or hub name; None builds the tiny default model
    base_stage: BaseStage = field(default_factory=BaseStage)


def validate_model(m: DictConfig, task: DictConfig, prefix: str = "") -> None:
    generated = generated_tasks()
    _check(task.name in generated or m.path is not None, f"{prefix}model.path", m.path,
           f"the built-in tiny model is only built for the built-in tasks ({', '.join(generated)}); give an HF "
           "model path")
    if m.path is not None:
        from workers.models import model_exists

        _check(model_exists(m.path), f"{prefix}model.path", m.path,
               "not an HF model directory (no config.json) or hub name")


@dataclass
class TaskConfig:
    name: str = "synthetic"  # a registered task (workers/tasks): synthetic, skills, choices (generated), gsm8k, math
    seed: int = 0
    train_fraction: float = 1.0
    n_train: int = 256
    n_test: int = 256
    min_steps: int = 2
    max_steps: int = 3
    max_number: int = 10
    path: Optional[str] = None  # local JSONL train file (gsm8k/math)
    test_path: Optional[str] = None
    # extra train examples joined to the train split (JSONL: example_id, question, solution, answer; a path or
    # store URI): the new data of a curation round (orchestrator.curate writes it)
    added_path: Optional[str] = None
    question_suffix: str = "\nAnswer:"
    stop: str = "\nDone."
    # τ: the reference NLL below which a train example counts as memorized, a property of the task's reference
    # solutions (Kang et al. 2024 use exp(-2.3) = 0.100259 on GSM8k and exp(-1.7) = 0.182684 on MATH); the sweep's
    # analysis uses it unless sweep.nll_threshold is set
    nll_threshold: float = 0.1


def validate_task(k: DictConfig, prefix: str = "") -> None:
    _check(0 < k.train_fraction <= 1, f"{prefix}task.train_fraction", k.train_fraction, "must be in (0, 1]")
    _check(k.name in TASKS, f"{prefix}task.name", k.name, f"must be {_one_of(TASKS)}")
    _check(k.n_train >= 1 and k.n_test >= 1, f"{prefix}task.n_train/n_test", (k.n_train, k.n_test), "must be >= 1")
    _check(1 <= k.min_steps <= k.max_steps, f"{prefix}task.min_steps", k.min_steps, "must be in [1, task.max_steps]")
    _check(k.max_number >= 2, f"{prefix}task.max_number", k.max_number, "must be >= 2")
    for name in ("path", "test_path"):
        path = k[name]
        _check(path is None or Path(path).is_file(), f"{prefix}task.{name}", path, "dataset file does not exist")
    if k.added_path is not None:
        from store import io

        _check(io.is_file(k.added_path), f"{prefix}task.added_path", k.added_path, "dataset file does not exist")
    _check(k.nll_threshold > 0, f"{prefix}task.nll_threshold", k.nll_threshold, "must be > 0")


@dataclass
class TrainConfig(TrainSettings):
    """The worker's TrainSettings plus how a trial is placed on the cluster."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # with use_gpu; below 1, a GPU shared with the sampling pool (a one-GPU box)
    # custom Ray resources each train worker holds, e.g. {trainer: 1} to train only on nodes started with
    # `ray start --resources='{"trainer": N}'`
    resources_per_worker: Dict[str, float] = field(default_factory=dict)
    keep_engine_states: int = 1  # newest checkpoints that keep DeepSpeed's engine state (what a restart needs)
    max_failures: int = 2  # worker-group restarts (a killed worker, a lost node), each from the last checkpoint
    # Ray's placement of a trial's workers: PACK (as few nodes as fit), STRICT_PACK (one node, e.g. to keep a
    # trial on one NVLink domain), SPREAD
    placement_strategy: str = "PACK"
    dist_backend: str = "auto"  # torch.distributed: auto = nccl with use_gpu, else gloo
    # environment of the train workers, e.g. {NCCL_SOCKET_IFNAME: eth0, NCCL_IB_HCA: mlx5} for multi-node trials
    env: Dict[str, str] = field(default_factory=dict)


def validate_train(t: DictConfig, prefix: str = "") -> None:
    _check(t.lr > 0, f"{prefix}train.lr", t.lr, "must be > 0")
    _check(t.epochs >= 1, f"{prefix}train.epochs", t.epochs, "must be >= 1")
    _check(t.micro_batch_size >= 1, f"{prefix}train.micro_batch_size", t.micro_batch_size, "must be >= 1")
    per_step = t.micro_batch_size * t.num_workers
    _check(t.global_batch_size >= per_step and t.global_batch_size % per_step == 0,
           f"{prefix}train.global_batch_size", t.global_batch_size,
           f"must be a multiple of micro_batch_size x num_workers = {per_step}")
    _check(t.zero_stage in (0, 1, 2, 3), f"{prefix}train.zero_stage", t.zero_stage, "must be 0, 1, 2 or 3")
    _check(t.precision in ("fp32", "bf16", "fp16"), f"{prefix}train.precision", t.precision,
           "must be fp32, bf16 or fp16")
    _check(0 <= t.warmup_frac < 1, f"{prefix}train.warmup_frac", t.warmup_frac, "must be in [0, 1)")
    _check(t.num_workers >= 1, f"{prefix}train.num_workers", t.num_workers, "must be >= 1")
    _check(t.keep_engine_states >= 1, f"{prefix}train.keep_engine_states", t.keep_engine_states, "must be >= 1")
    _check(t.max_failures >= 0, f"{prefix}train.max_failures", t.max_failures, "must be >= 0")
    _check_resources("train.resources_per_worker", t.resources_per_worker, prefix)
    _check(t.placement_strategy in ("PACK", "STRICT_PACK", "SPREAD"), f"{prefix}train.placement_strategy",
           t.placement_strategy, "must be PACK, STRICT_PACK or SPREAD")
    _check(t.dist_backend in ("auto", "nccl", "gloo"), f"{prefix}train.dist_backend", t.dist_backend,
           "must be auto, nccl or gloo")
    _check(t.dist_backend != "nccl" or t.use_gpu, f"{prefix}train.dist_backend", t.dist_backend,
           "nccl needs train.use_gpu=true")
    for name in ("offload_optimizer", "offload_param"):
        _check(t[name] in ("none", "cpu"), f"{prefix}train.{name}", t[name], "must be none or cpu")
    _check(t.offload_param == "none" or t.zero_stage == 3, f"{prefix}train.offload_param", t.offload_param,
           f"parameters are offloaded by ZeRO-3 only (train.zero_stage={t.zero_stage})")
    _check(t.offload_optimizer == "none" or t.zero_stage >= 1, f"{prefix}train.offload_optimizer",
           t.offload_optimizer, "the optimizer is offloaded by ZeRO stages 1-3 (train.zero_stage=0)")
    _check(t.save_every_steps >= 0, f"{prefix}train.save_every_steps", t.save_every_steps, "must be >= 0")
    _check(t.checkpoints_per_epoch >= 0, f"{prefix}train.checkpoints_per_epoch", t.checkpoints_per_epoch,
           "must be >= 0 (0: the final checkpoint only)")
    _check(0 < t.gpus_per_worker <= 1, f"{prefix}train.gpus_per_worker", t.gpus_per_worker,
           "must be in (0, 1]: one GPU per worker, or a share of one")


@dataclass
class SamplerConfig:
    backend: str = "auto"  # auto or a registered backend (workers/backends): hf, vllm
    k: int = 5
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    batch_tokens: int = 131072  # sampling: rows x (prompt + max_new_tokens) per batch
    score_batch_tokens: int = 16384  # reference scoring: padded tokens per forward batch
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    nice: int = 0  # CPU priority of sampler processes (0-19): above 0, training wins when they share cores
    # > 0: a trial waits to start while more checkpoints than this wait for the pool or are being evaluated, so
    # evaluation keeps up with training where the two share cores (0: training never waits)
    max_backlog: int = 0
    gpus_per_actor: float = 0.0
    resources_per_actor: Dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {sampler: 1}
    variant: str = "original"
    answer_prefix: str = ""
    # vLLM only: auto = bfloat16 on GPUs, float32 on CPU; one engine of tensor_parallel_size GPUs per actor
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = False
    grade_timeout_s: float = 5.0  # per answer (MATH's symbolic check): longer is graded wrong and counted
    grade_workers: int = 1  # MATH: math-verify processes per sampler actor
    # train questions sampled and scored per checkpoint (0: all): a seeded subset, the same for every run and
    # checkpoint of the sweep; `python -m analysis subset` shows how premem's R² depends on it
    train_subset: int = 0


def validate_sampler(s: DictConfig, prefix: str = "") -> None:
    _check_resources("sampler.resources_per_actor", s.resources_per_actor, prefix)
    _check(s.k >= 1, f"{prefix}sampler.k", s.k, "samples per question must be >= 1")
    _check(s.temperature >= 0, f"{prefix}sampler.temperature", s.temperature, "must be >= 0")
    _check(0 < s.top_p <= 1, f"{prefix}sampler.top_p", s.top_p, "must be in (0, 1]")
    _check(s.max_new_tokens >= 1, f"{prefix}sampler.max_new_tokens", s.max_new_tokens, "must be >= 1")
    _check(s.batch_tokens >= 1, f"{prefix}sampler.batch_tokens", s.batch_tokens, "must be >= 1")
    _check(s.score_batch_tokens >= 1, f"{prefix}sampler.score_batch_tokens", s.score_batch_tokens, "must be >= 1")
    _check(s.backend in ("auto", *BACKENDS), f"{prefix}sampler.backend", s.backend,
           f"must be {_one_of(['auto', *BACKENDS])}")
    _check(s.dtype in ("auto", "float32", "bfloat16", "float16"), f"{prefix}sampler.dtype", s.dtype,
           "must be auto, float32, bfloat16 or float16")
    _check(s.tensor_parallel_size >= 1, f"{prefix}sampler.tensor_parallel_size", s.tensor_parallel_size, "must be >= 1")
    shared_gpu = s.tensor_parallel_size == 1 and 0 < s.gpus_per_actor < 1
    _check(s.gpus_per_actor == 0 or s.gpus_per_actor == s.tensor_parallel_size or shared_gpu,
           f"{prefix}sampler.gpus_per_actor", s.gpus_per_actor,
           f"must be 0 (CPU), sampler.tensor_parallel_size = {s.tensor_parallel_size} (one engine's GPUs per "
           "sampler actor), or a share of one GPU below 1 with tensor_parallel_size 1")
    _check(0 < s.gpu_memory_utilization <= 1, f"{prefix}sampler.gpu_memory_utilization", s.gpu_memory_utilization,
           "must be in (0, 1]")
    _check(s.num_actors >= 1, f"{prefix}sampler.num_actors", s.num_actors, "must be >= 1")
    _check(s.train_subset >= 0, f"{prefix}sampler.train_subset", s.train_subset, "must be >= 0 (0: every train question)")
    _check(s.grade_workers >= 1, f"{prefix}sampler.grade_workers", s.grade_workers, "must be >= 1")
    _check(s.grade_timeout_s > 0, f"{prefix}sampler.grade_timeout_s", s.grade_timeout_s, "must be > 0")
    _check(0 <= s.nice <= 19, f"{prefix}sampler.nice", s.nice, "must be in 0..19")
    _check(s.max_backlog >= 0, f"{prefix}sampler.max_backlog", s.max_backlog, "must be >= 0 (0: no limit)")


@dataclass
class SweepConfig:
    name: str = "default"
    # {dotted.field: [values]}, nested or dotted: `train: {lr: [...]}` and `train.lr: [...]` are the same axis
    grid: Dict[str, Any] = field(default_factory=dict)
    max_concurrent_trials: int = 1
    nll_threshold: float = II("task.nll_threshold")  # τ of premem's analysis: the task's unless set here
    # After training, each trial's last checkpoint is evaluated again with the answer forced to start with
    # robustness_prefix (records variant robustness_variant; "" = no such pass), and the parent run gets the
    # accuracy under that perturbation binned by premem.
    robustness_variant: str = ""
    robustness_prefix: str = "First,"
    color_by: Optional[str] = None  # the config field that colours the runs in the scatter plot; None: the first axis
    # one driver per sweep (orchestrator/lease.py): a second driver of the same sweep waits this long for the first
    # (0: says who holds it and exits 1); a lease whose heartbeat is older than lease_stale_s is taken over
    lease_wait_s: float = 86400.0
    lease_stale_s: float = 120.0
    # a grid sized for CPUs (the demo's): refused beside train.use_gpu=true, so that a GPU cluster never runs it by
    # accident; a guard, not a setting, so it is not part of a sweep's address
    cpu_only: bool = False


def validate_sweep(cfg: DictConfig, prefix: str = "") -> None:
    """The sweep group's checks; with the whole config, whose fields color_by names."""
    w = cfg.sweep
    _check(not (cfg.train.use_gpu and w.cpu_only), f"{prefix}sweep.cpu_only", w.cpu_only,
           f"sweep={w.name} is a grid sized for CPUs, not for train.use_gpu=true: use sweep=gpu (the paper's "
           "settings), sweep=small, or set sweep.cpu_only=false beside a grid of your own")
    _check(w.lease_wait_s >= 0, f"{prefix}sweep.lease_wait_s", w.lease_wait_s, "must be >= 0")
    _check(w.lease_stale_s > 0, f"{prefix}sweep.lease_stale_s", w.lease_stale_s, "must be > 0")
    _check(w.nll_threshold > 0, f"{prefix}sweep.nll_threshold", w.nll_threshold, "must be > 0")
    _check(w.robustness_variant != "original", f"{prefix}sweep.robustness_variant", "original",
           "names the perturbed records: any name but 'original' ('' turns the pass off)")
    _check(not w.robustness_variant or bool(w.robustness_prefix.strip()),
           f"{prefix}sweep.robustness_prefix", w.robustness_prefix, "the perturbation: must not be empty")
    _check(w.color_by is None or OmegaConf.select(cfg, w.color_by, default="__missing__") != "__missing__",
           f"{prefix}sweep.color_by", w.color_by, "must name a config field (e.g. task.train_fraction)")
    _check(w.max_concurrent_trials >= 1, f"{prefix}sweep.max_concurrent_trials", w.max_concurrent_trials,
           "must be >= 1")


@dataclass
class CurationConfig:
    """Curation rounds (python -m orchestrator.curate SWEEP_DIR): from a finished sweep, pick train examples by
    each strategy, obtain new examples like them, and train follow-up runs on the sweep's data plus the new."""

    name: str = "curation"
    strategies: List[str] = field(default_factory=lambda: ["premem", "iid", "ifd", "longest"])
    budgets: List[int] = field(default_factory=lambda: [32, 64, 128])  # new examples per round: one run each
    # more budgets for the i.i.d. baseline only, so that its curve can reach what curated data reach (the
    # efficiency ratio reads where it crosses)
    iid_budgets: List[int] = field(default_factory=lambda: [256])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # each: selection ties, new data, training seed
    rounds: int = 1  # round r+1 picks from round r's largest-budget run of the same strategy and seed
    # how many train examples each strategy picks (its most wanted first): as many as have premem at most this
    # (the paper's rule: 0.75); null: select_fraction of them
    premem_at_most: Optional[float] = 0.75
    select_fraction: float = 0.25
    trial: Optional[int] = None  # the sweep trial whose config the follow-up runs repeat; None: best test acc
    similar: str = "auto"  # generator | neighbors | command; auto: generator (synthetic), else neighbors
    candidates: Optional[str] = None  # neighbors: a JSONL pool in the task's format
    command: Optional[str] = None  # command: argv with {selected} {out} {n} {seed}; writes JSONL
    command_timeout_s: float = 600.0
    checkpoints_per_epoch: int = 0  # of the follow-up runs: 0 = the final checkpoint only (what the curve reads)


SIMILAR = ("auto", "generator", "neighbors", "command")


def validate_curation(cfg: DictConfig) -> None:
    """Checks of the curation group against the sweep's task (before anything is written)."""
    c, task = cfg.curation, cfg.task
    for name in c.strategies:
        _check(name in CURATION_STRATEGIES, "curation.strategies", name,
               f"must be one of {', '.join(CURATION_STRATEGIES)}")
    _check(len(c.strategies) > 0 and len(set(c.strategies)) == len(c.strategies), "curation.strategies",
           list(c.strategies), "must be a non-empty list without repeats")
    for name in ("budgets", "iid_budgets"):
        values = list(c[name])
        _check(all(b >= 1 for b in values) and len(set(values)) == len(values), f"curation.{name}", values,
               "must be distinct example counts >= 1")
    _check(len(c.budgets) > 0, "curation.budgets", list(c.budgets), "must name at least one budget")
    _check(len(c.seeds) > 0 and len(set(c.seeds)) == len(c.seeds), "curation.seeds", list(c.seeds),
           "must be a non-empty list of distinct seeds")
    _check(c.rounds >= 1, "curation.rounds", c.rounds, "must be >= 1")
    _check(0 < c.select_fraction <= 1, "curation.select_fraction", c.select_fraction, "must be in (0, 1]")
    _check(c.premem_at_most is None or 0 <= c.premem_at_most <= 1, "curation.premem_at_most", c.premem_at_most,
           "must be in [0, 1] or null")
    _check(c.similar in SIMILAR, "curation.similar", c.similar, f"must be one of {', '.join(SIMILAR)}")
    _check(c.similar not in ("generator",) or task.name in generated_tasks(), "curation.similar", c.similar,
           f"the generator makes the built-in task's problems; task.name={task.name} takes neighbors or command")
    _check(c.similar != "neighbors" or c.candidates is not None, "curation.candidates", c.candidates,
           "neighbors needs a candidate pool: a JSONL file in the task's format")
    _check(c.candidates is None or Path(c.candidates).is_file(), "curation.candidates", c.candidates,
           "file does not exist")
    _check(c.similar != "command" or bool((c.command or "").strip()), "curation.command", c.command,
           "the command that writes new examples (argv with {selected} {out} {n} {seed})")
    _check(c.similar != "auto" or task.name in generated_tasks() or c.candidates is not None or bool(c.command),
           "curation.similar", c.similar, f"task.name={task.name}: give curation.candidates (a pool to pick "
           "neighbours from) or curation.command")
    _check(c.command_timeout_s > 0, "curation.command_timeout_s", c.command_timeout_s, "must be > 0")
    _check(c.checkpoints_per_epoch >= 0, "curation.checkpoints_per_epoch", c.checkpoints_per_epoch, "must be >= 0")


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # default: sqlite:///<store.root>/mlflow.db
    experiment: str = "premem"
    outage_wait_s: float = 600.0  # at the end, how long to wait for a tracking server that is down
    # a RUNNING sweep whose driver has not refreshed its heartbeat for this long was left by a driver that died;
    # the next premem command on the experiment ends it (and its trials) KILLED
    abandoned_after_s: float = 600.0


def validate_tracking(tracking: DictConfig, store_root: str, prefix: str = "") -> None:
    """The tracking group's checks; an object store's root needs a tracking server."""
    _check(tracking.outage_wait_s >= 0, "tracking.outage_wait_s", tracking.outage_wait_s, "must be >= 0")
    _check(tracking.abandoned_after_s > 0, "tracking.abandoned_after_s", tracking.abandoned_after_s,
           "must be > 0")
    uri = tracking.uri
    _check(uri is not None or "://" not in store_root or store_root.startswith("file://"), "tracking.uri",
           uri, f"give an MLflow server (http://...) when store.root is an object store ({store_root})")
    _check(uri is None or uri.startswith(("sqlite:///", "http://", "https://", "file:", "databricks")),
           f"{prefix}tracking.uri", uri, "must be sqlite:///..., http(s)://... or file:...")


@dataclass
class ClusterConfig:
    address: Optional[str] = None  # None starts a local Ray; "auto" or ray://... joins a cluster
    num_cpus: Optional[int] = None
    num_gpus: Optional[int] = None
    # refuse a pool or trial the cluster cannot hold before starting (off for an autoscaling cluster, whose
    # nodes join when requests wait)
    check_placement: bool = True


@dataclass
class StoreConfig:
    root: str = "./runs"
    # which checkpoints keep their HF weights once evaluated: all | final | final_and_best (orchestrator/retention.py);
    # final and final_and_best also drop a trial's DeepSpeed engine state when the trial has finished
    keep: str = "all"
    # node-local directory for checkpoints on their way to the store and copies fetched from it (workers'
    # staging, samplers' and restarts' downloads); None: the system's temp directory
    local_dir: Optional[str] = None


def validate_store(store: DictConfig) -> None:
    _check(store.keep in ("all", "final", "final_and_best"), "store.keep", store.keep,
           "must be all, final or final_and_best")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    seed: int = 0


def validate(cfg: DictConfig, prefix: str = "") -> None:
    """Range and existence checks on a composed config (the base config or one trial's), group by group; the
    first value refused raises ConfigError."""
    validate_train(cfg.train, prefix)
    validate_task(cfg.task, prefix)
    validate_model(cfg.model, cfg.task, prefix)
    validate_sampler(cfg.sampler, prefix)
    validate_sweep(cfg, prefix)
    validate_store(cfg.store)
    validate_tracking(cfg.tracking, cfg.store.root, prefix)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="premem_schema", node=Config)
    for group, node in [("model", ModelConfig), ("task", TaskConfig), ("train", TrainConfig),
                        ("sampler", SamplerConfig), ("sweep", SweepConfig), ("tracking", TrackingConfig),
                        ("cluster", ClusterConfig), ("curation", CurationConfig)]:
        cs.store(group=group, name=f"{group}_schema", node=node)


# ----------------------------------------------------------------------------------- presets
def preset_line(path: Path) -> str:
    """A preset's one-line description: the first sentence of its leading comment (`# @package` lines skipped)."""
    comment = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            comment.append(line.lstrip("#").strip())
    text, depth = " ".join(comment), 0
    for i, char in enumerate(text):  # the first ". " outside parentheses ends the sentence
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "." and depth == 0 and text[i + 1:i + 2] in (" ", ""):
            return text[:i]
    return text


def presets_text(config_dir: Path = CONF_DIR, width: int = 116) -> str:
    """conf/'s config groups, each preset on one line with its description; `*` marks the default."""
    defaults = {}
    for entry in OmegaConf.load(config_dir / "config.yaml").get("defaults", []):
        if isinstance(entry, (dict, DictConfig)):
            defaults.update({str(k): str(v) for k, v in entry.items()})
    lines = ["config groups (conf/GROUP/PRESET.yaml; choose with GROUP=PRESET, * = the default):"]
    for group in sorted(p for p in config_dir.iterdir() if p.is_dir()):
        lines.append(f"{group.name}:")
        for preset in sorted(group.glob("*.yaml")):
            mark = "*" if defaults.get(group.name) == preset.stem else " "
            line = f"  {mark} {preset.stem:<10} {preset_line(preset)}"
            lines.append(line if len(line) <= width else line[:width - 3].rstrip() + "...")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- composing
def compose_config(overrides: list[str], config_dir: Path = CONF_DIR, config_name: str = "config") -> DictConfig:
    """Compose conf/ with command-line overrides through Hydra; schema errors become ConfigError."""
    return compose_with_sweeper_params(overrides, config_dir, config_name)[0]


def compose_with_sweeper_params(overrides: list[str], config_dir: Path = CONF_DIR,
                                config_name: str = "config") -> tuple[DictConfig, dict]:
    """The composed config (Hydra's node dropped) and its `hydra.sweeper.params`: a grid that a preset declares in
    Hydra's spelling, which makes the run a Hydra sweep."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        params = dict(OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {})
        cfg = without_hydra(cfg)  # resolves: ${oc.env:...} of cluster groups, an unset one fails here
        return cfg, params
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(config_message(exc)) from None


def config_message(exc: BaseException) -> str:
    """One line from Hydra/OmegaConf's nested exceptions: the field and what is wrong with it."""
    from omegaconf.errors import OmegaConfBaseException

    seen = exc
    while seen is not None:
        if isinstance(seen, OmegaConfBaseException) and getattr(seen, "full_key", None):
            msg = (getattr(seen, "msg", None) or str(seen)).splitlines()[0]
            return f"{seen.full_key}: {msg}"
        seen = seen.__cause__ or seen.__context__
    return " ".join(str(exc).split())


def without_hydra(cfg: DictConfig) -> DictConfig:
    """A job's config as premem reads it: Hydra's own node dropped, interpolations resolved."""
    with open_dict(cfg):
        cfg.pop("hydra", None)
    OmegaConf.to_container(cfg, resolve=True)  # an unresolvable value (an unset ${oc.env:...}) named by its key
    OmegaConf.resolve(cfg)
    return cfg



# ----------------------------------------------------------------------------------- credentials
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*)(?::(?P<password>[^/@\s]*))?@")


def redact(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://user:***@host`, wherever it appears in `text`."""
    return re.sub(r"(\w+://[^/\s:@]+):[^@\s/]+@", r"\1:***@", text)


def take_credentials(cfg: DictConfig) -> None:
    """Credentials never travel in the config, which is written to the store, logged to MLflow and printed.

    A user and password in an http(s) `tracking.uri` move to MLflow's own variables (MLFLOW_TRACKING_USERNAME,
    MLFLOW_TRACKING_PASSWORD, read by its client) and leave the URI; `store.root` refuses them (the object
    store's credentials come from the AWS_* variables or a credentials file, as its SDK reads them)."""
    uri = cfg.tracking.uri
    found = _USERINFO.match(uri) if uri and uri.startswith(("http://", "https://")) else None
    if found:
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(found["user"])
        if found["password"] is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(found["password"])
        cfg.tracking.uri = found["scheme"] + uri[found.end():]
    _check(not _USERINFO.match(cfg.store.root), "store.root", cfg.store.root,
           "credentials do not belong in the store's URI: give them in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
           "or AWS_SHARED_CREDENTIALS_FILE")


def similar_source(cfg: DictConfig) -> str:
    """generator, neighbors or command: where a curation's new examples come from."""
    c = cfg.curation
    if c.similar != "auto":
        return c.similar
    if cfg.task.name in generated_tasks() and c.candidates is None and not c.command:
        return "generator"
    return "neighbors" if c.candidates is not None else "command"


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return f"sqlite:///{Path(cfg.store.root.removeprefix('file://')).expanduser().resolve() / 'mlflow.db'}"


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
