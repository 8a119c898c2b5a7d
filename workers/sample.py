"""The sampling pool: takes a checkpoint directory, samples, grades and scores per example, writes records.

`evaluate_checkpoint` is the whole evaluation of one checkpoint and is plain Python; `SamplerActor` and
`SamplingPool` are its Ray edge: the pool is a named actor that accepts checkpoints from any trial while
training continues and hands them to its sampler actors (each on its own CPUs/GPU).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
import traceback
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from store import io
from store.names import ORIGINAL
from store.records import write_records
from workers.backends import Backend, SamplingSettings, make_backend
from workers.grading import Grader
from workers.probe import check_loaded_weights
from store.names import ENGINE_DIR
from workers.settings import cache_root
from workers.tasks import Example, PromptFormat, Splits, load_task

COMPLETIONS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("step", pa.int64()), ("split", pa.string()), ("variant", pa.string()),
    ("example_id", pa.string()), ("sample_index", pa.int64()), ("completion", pa.string()),
    ("extracted", pa.string()), ("correct", pa.bool_()), ("parsed", pa.bool_()),
])


@dataclass
class EvalJob:
    run_id: str
    step: int
    epoch: float
    checkpoint_dir: str
    records_path: str
    completions_path: str
    task: dict  # workers.tasks.load_task keyword arguments
    prompt: dict  # PromptFormat fields (answer_prefix set for a prompt variant)
    sampling: dict  # SamplingSettings fields
    variant: str = ORIGINAL
    grade_timeout_s: float = 5.0  # per answer: longer is graded wrong and counted (`*_grade_timeouts`)
    grade_workers: int = 1  # math-verify processes
    train_subset: int = 0  # train questions evaluated (0: all); the same ones for every run and checkpoint
    subset_seed: int = 0
    local_dir: str | None = None  # node-local directory for the checkpoint's copy (store.local_dir)
    # another records set's files of this checkpoint, sampled the same way: re-graded instead of sampled again
    # (a new grader version); no weights are loaded
    regrade_records: str = ""
    regrade_completions: str = ""


class EvaluationError(RuntimeError):
    """A checkpoint whose evaluation failed: `line` names it and the cause, `details` is the traceback."""

    def __init__(self, line: str, details: str):
        super().__init__(line, details)  # both in args, so the error pickles across Ray whole
        self.line, self.details = line, details

    def __str__(self) -> str:
        return self.line


def failure_line(job: "EvalJob", exc: BaseException) -> str:
    """One line for the driver's output: which checkpoint, and the cause's last line."""
    text = str(exc).strip()
    cause = text.splitlines()[-1] if text else ""
    return (f"run {job.run_id} step {job.step} (checkpoint {job.checkpoint_dir}): "
            f"{type(exc).__name__}{': ' + cause if cause else ''}")


@dataclass
class EvalResult:
    run_id: str
    step: int
    epoch: float
    variant: str
    records_path: str
    completions_path: str
    metrics: dict  # train_acc, test_acc, ref_nll_mean, unparsed fractions, timings


def _grade_all(examples: list[Example], completions: list[list[str]], grader: Grader, prefix: str):
    """(n_correct, n_unparsed, n_timed_out per example, completion rows for the completions file)."""
    owner = np.repeat(np.arange(len(examples)), [len(samples) for samples in completions])
    texts = [(prefix + " " + text) if prefix else text for samples in completions for text in samples]
    grades = grader.grade(texts, [examples[i].answer for i in owner])
    counts = [np.bincount(owner, [getattr(g, flag) for g in grades], len(examples)).astype(np.int64)
              for flag in ("correct", "parsed", "timed_out")]
    n_correct, n_parsed, n_timed_out = counts
    n_samples = np.array([len(samples) for samples in completions], np.int64)
    sample_index = [j for samples in completions for j in range(len(samples))]
    rows = [(examples[i].example_id, j, text, g.extracted, g.correct, g.parsed)
            for i, j, text, g in zip(owner, sample_index, texts, grades)]
    return n_correct, n_samples - n_parsed, n_timed_out, rows


def train_subset(examples: list[Example], n: int, seed: int) -> list[Example]:
    """The n train examples whose ids rank first under a seeded hash: the same questions for every run and
    checkpoint of a sweep (wherever a run trains on them), so premem stays comparable across runs; all for 0."""
    if n <= 0 or n >= len(examples):
        return examples
    rank = {e.example_id: hashlib.sha256(f"{seed}:{e.example_id}".encode()).hexdigest() for e in examples}
    chosen = set(sorted(rank, key=rank.get)[:n])
    return [e for e in examples if e.example_id in chosen]


def evaluate_checkpoint(backend: Backend, job: EvalJob, splits: Splits, grader: Grader) -> EvalResult:
    """k graded samples per train and test question, and ref NLL per train example, as records (with
    `train_subset`, of those train questions only)."""
    t0 = time.perf_counter()
    splits = Splits(train_subset(splits.train, job.train_subset, job.subset_seed), splits.test, splits.grader)
    settings = SamplingSettings(**job.sampling)
    fmt = PromptFormat(**job.prompt)
    original_fmt = PromptFormat(**{**job.prompt, "answer_prefix": ""})
    # A checkpoint in an object store is fetched to this node's disk for the backend, and dropped after.
    local_checkpoint = io.local_copy(job.checkpoint_dir, cache_root(job.local_dir), skip=(ENGINE_DIR,))
    try:
        backend.load(local_checkpoint)
        # the trainer's probe NLL against the loaded weights; a stale swap is rebuilt here (workers/probe.py)
        weight_check = check_loaded_weights(backend, local_checkpoint, settings)
    finally:
        io.drop_local_copy(job.checkpoint_dir, local_checkpoint)
    t_load = time.perf_counter()

    # One deduplicated prompt list for both splits: a question in train and test is sampled once.
    questions = [e.question for e in splits.train] + [e.question for e in splits.test]
    unique = list(dict.fromkeys(questions))
    prompts = [fmt.prompt(q) for q in unique]
    score_prompts = [original_fmt.prompt(e.question) for e in splits.train]
    score_targets = [original_fmt.target(e.solution) for e in splits.train]
    completions_unique, ref_nll = backend.sample_and_score(prompts, settings, score_prompts, score_targets)
    t_sample = time.perf_counter()
    by_question = dict(zip(unique, completions_unique))

    tables, completion_tables, metrics = [], [], {}
    for split, examples in (("train", splits.train), ("test", splits.test)):
        completions = [by_question[e.question] for e in examples]
        n_correct, n_unparsed, n_timed_out, rows = _grade_all(examples, completions, grader, fmt.answer_prefix)
        n = len(examples)
        tables.append(pa.table({
            "run_id": [job.run_id] * n, "step": [job.step] * n, "epoch": [float(job.epoch)] * n,
            "split": [split] * n, "example_id": [e.example_id for e in examples],
            "n_samples": [settings.k] * n, "n_correct": n_correct,
            "ref_nll": ref_nll if split == "train" else np.full(n, np.nan), "variant": [job.variant] * n,
        }))
        ids, sample_index, text, extracted, correct, parsed = zip(*rows) if rows else ([],) * 6
        completion_tables.append(pa.table({
            "run_id": [job.run_id] * len(rows), "step": [job.step] * len(rows), "split": [split] * len(rows),
            "variant": [job.variant] * len(rows), "example_id": list(ids), "sample_index": list(sample_index),
            "completion": list(text), "extracted": list(extracted), "correct": list(correct),
            "parsed": list(parsed),
        }, schema=COMPLETIONS_SCHEMA))  # explicit: a split where nothing parsed has no strings to infer from
        metrics[f"{split}_acc"] = float(n_correct.sum() / max(1, n * settings.k))
        metrics[f"{split}_unparsed_frac"] = float(n_unparsed.sum() / max(1, n * settings.k))
        metrics[f"{split}_grade_timeouts"] = int(n_timed_out.sum())
    t_grade = time.perf_counter()
    metrics["ref_nll_mean"] = float(np.mean(ref_nll)) if len(ref_nll) else float("nan")
    metrics.update(weight_check)

    io.write_parquet(pa.concat_tables(completion_tables), job.completions_path)
    write_records(pa.concat_tables(tables), job.records_path)  # last: its presence marks the checkpoint done
    t_end = time.perf_counter()
    metrics.update(eval_seconds=t_end - t0, load_seconds=t_load - t0, sample_score_seconds=t_sample - t_load,
                   grade_seconds=t_grade - t_sample, n_prompts=len(unique))
    return EvalResult(job.run_id, job.step, job.epoch, job.variant, job.records_path, job.completions_path,
                      metrics)


def regrade_checkpoint(job: EvalJob, splits: Splits, grader: Grader) -> EvalResult:
    """The records of `job.variant` from another set's stored completions of the same checkpoint, sampled with
    the same settings: every completion graded again by `grader`, reference NLLs and sample counts kept."""
    import pandas as pd

    t0 = time.perf_counter()
    records = io.read_parquet(job.regrade_records).to_pandas()
    completions = io.read_parquet(job.regrade_completions).to_pandas()
    gold = {(split, e.example_id): e.answer for split, examples in (("train", splits.train), ("test", splits.test))
            for e in examples}
    # stored completions carry the answer prefix already (_grade_all grades and stores the prefixed text)
    grades = grader.grade(completions.completion.tolist(),
                          [gold[key] for key in zip(completions.split, completions.example_id)])
    completions = completions.assign(variant=job.variant, extracted=[g.extracted for g in grades],
                                     correct=[g.correct for g in grades], parsed=[g.parsed for g in grades],
                                     timed_out=[g.timed_out for g in grades])
    n_correct = completions.groupby(["split", "example_id"]).correct.sum()
    keys = pd.MultiIndex.from_arrays([records.split, records.example_id])
    records = records.assign(n_correct=n_correct.reindex(keys, fill_value=0).to_numpy().astype(np.int64),
                             variant=job.variant)
    metrics = {}
    for split in ("train", "test"):
        samples = max(1, int(records.n_samples[records.split == split].sum()))
        graded = completions[completions.split == split]
        metrics[f"{split}_acc"] = int(graded.correct.sum()) / samples
        metrics[f"{split}_unparsed_frac"] = int((~graded.parsed).sum()) / samples
        metrics[f"{split}_grade_timeouts"] = int(graded.timed_out.sum())
    metrics["ref_nll_mean"] = float(records.ref_nll[records.split == "train"].mean())
    io.write_parquet(pa.Table.from_pandas(completions[COMPLETIONS_SCHEMA.names], schema=COMPLETIONS_SCHEMA,
                                          preserve_index=False), job.completions_path)
    write_records(pa.Table.from_pandas(records, preserve_index=False), job.records_path)  # last: marks it done
    metrics.update(eval_seconds=time.perf_counter() - t0, grade_seconds=time.perf_counter() - t0)
    return EvalResult(job.run_id, job.step, job.epoch, job.variant, job.records_path, job.completions_path, metrics)


# ---------------------------------------------------------------------------------------- Ray edge
class SamplerActor:
    """Holds one backend (one model in memory at a time) and evaluates checkpoints handed to it."""

    def __init__(self, backend: str, threads: int, nice: int = 0, vllm_options: dict | None = None):
        from workers.lean_imports import skip_unused_optional_imports
        from workers.placement import hide_unassigned_gpus

        skip_unused_optional_imports()  # before the backend imports transformers
        hide_unassigned_gpus()  # before the backend touches CUDA
        if nice:  # on a machine shared with training, sample with the cycles training leaves
            os.nice(nice)
        self.backend = make_backend(backend, threads, vllm_options)
        self._splits: dict[str, Splits] = {}
        self._graders: dict[tuple, Grader] = {}

    def ready(self) -> dict:
        """Where this actor runs (node, GPU ids, the device its backend samples on)."""
        from workers.placement import here

        return here(self.backend.device)

    def evaluate(self, job: EvalJob) -> EvalResult:
        key = repr(sorted(job.task.items()))
        if key not in self._splits:
            self._splits[key] = load_task(**job.task)
        splits = self._splits[key]
        grader_key = (splits.grader, job.grade_timeout_s, job.grade_workers)
        if grader_key not in self._graders:
            self._graders[grader_key] = Grader(*grader_key)
        try:
            if job.regrade_records:
                return regrade_checkpoint(job, splits, self._graders[grader_key])
            return evaluate_checkpoint(self.backend, job, splits, self._graders[grader_key])
        except Exception as exc:
            # An engine that failed mid-request may be wedged: the next checkpoint builds a fresh one.
            self.backend.close()
            raise EvaluationError(failure_line(job, exc), traceback.format_exc()) from None


class SamplingPool:
    """Named async actor: a FIFO of checkpoints served by a fixed set of sampler actors.

    A sampler actor that dies (killed, its node lost) is restarted by Ray, and the checkpoint it held is
    evaluated once more; a second loss, or an evaluation that fails by itself, is reported as failed.

    `max_backlog` > 0 bounds how far training runs ahead of evaluation: a trial waits to start (`room`) while
    more checkpoints than that wait for the pool or are being evaluated (sampler.max_backlog)."""

    RETRIES_AFTER_ACTOR_LOSS = 1

    def __init__(self, n_actors: int, actor_options: dict, backend: str, threads: int, nice: int = 0,
                 vllm_options: dict | None = None, max_backlog: int = 0):
        import ray

        remote_cls = ray.remote(SamplerActor)
        self.actors = [remote_cls.options(**actor_options).remote(backend, threads, nice, vllm_options)
                       for _ in range(n_actors)]
        self.max_backlog = max_backlog
        self.backlog = 0  # checkpoints submitted and not yet finished (evaluated or failed)
        self.backlog_fell = asyncio.Event()
        self.idle: asyncio.Queue | None = None
        self.finished: list[EvalResult] = []
        self.failed: list[tuple[dict, str, str]] = []  # (job, one line, traceback)
        self.retried: list[tuple[dict, str]] = []  # (job, why): evaluated again after losing its actor
        self.tasks: set = set()  # keeps the dispatch tasks referenced until they finish
        self.placements: list[dict] = []

    async def _ensure_idle(self) -> asyncio.Queue:
        if self.idle is None:
            self.idle = asyncio.Queue()
            for actor in self.actors:
                task = asyncio.get_running_loop().create_task(self._admit(actor))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return self.idle

    async def _admit(self, actor) -> None:
        """An actor takes checkpoints once it is up. One that cannot be placed (the cluster has fewer of its
        resources than sampler.num_actors asks) never holds one; the others do all the work."""
        try:
            self.placements.append(await actor.ready.remote())
        except Exception:  # it failed to start: its first evaluation reports why
            pass
        self.idle.put_nowait(actor)

    async def placement(self) -> list[dict]:
        """Where the sampler actors that are up run (workers.placement.here), in the order they came up."""
        await self._ensure_idle()
        return list(self.placements)

    async def submit(self, job: EvalJob) -> None:
        await self._ensure_idle()
        self.backlog += 1
        task = asyncio.get_running_loop().create_task(self._run(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def room(self) -> float:
        """Return once the backlog is at most `max_backlog` (at once without a limit): the seconds waited."""
        started = time.monotonic()
        while self.max_backlog and self.backlog > self.max_backlog:
            self.backlog_fell.clear()
            await self.backlog_fell.wait()
        return time.monotonic() - started

    async def _run(self, job: EvalJob) -> None:
        try:
            await self._evaluate(job)
        finally:
            self.backlog -= 1
            self.backlog_fell.set()

    async def _evaluate(self, job: EvalJob) -> None:
        idle = await self._ensure_idle()
        for attempt in range(1 + self.RETRIES_AFTER_ACTOR_LOSS):
            actor = await idle.get()
            try:
                result = await actor.evaluate.remote(job)  # await first: drain() swaps the list meanwhile
                self.finished.append(result)
                return
            except Exception as exc:  # reported to the driver, which marks the checkpoint failed
                cause = getattr(exc, "cause", None)  # a RayTaskError carries the actor's own exception
                if isinstance(cause, EvaluationError):
                    self.failed.append((asdict(job), cause.line, cause.details))
                    return
                # The actor itself died (killed, node lost): Ray restarts it; the checkpoint goes again.
                if attempt < self.RETRIES_AFTER_ACTOR_LOSS:
                    self.retried.append((asdict(job), failure_line(job, exc)))
                    await self._until_back(actor)
                    continue
                self.failed.append((asdict(job), failure_line(job, exc), str(exc)))
            finally:
                idle.put_nowait(actor)

    @staticmethod
    async def _until_back(actor, timeout_s: float = 900.0) -> None:
        """Wait while Ray restarts a lost sampler actor (calls meanwhile fail as 'unavailable')."""
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                await actor.ready.remote()
                return
            except ActorUnavailableError:
                await asyncio.sleep(1.0)
            except Exception:  # gone for good: the next call reports it
                return

    async def drain(self) -> tuple[list[EvalResult], list[tuple[dict, str, str]], list[tuple[dict, str]]]:
        """Results finished since the last drain, failures, and retries after a lost actor; handed over once."""
        finished, failed, retried = self.finished, self.failed, self.retried
        self.finished, self.failed, self.retried = [], [], []
        return finished, failed, retried
