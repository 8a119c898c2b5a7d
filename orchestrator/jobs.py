"""A trial spec as the jobs Ray runs: the TrainJob its workers train, and the EvalJobs of its checkpoints (the
template RouteCheckpoints fills in as they are written, or the stored ones evaluated again). Pure: no Ray."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

from orchestrator.config import SamplerConfig
from orchestrator.plan import TrialSpec
from orchestrator.retention import EVICTED, evicted
from store import io
from store.layout import SweepPaths
from workers.sample import EvalJob
from workers.tasks import task_args
from workers.train import TrainJob, TrainSettings


@dataclass
class EvalTemplate:
    """What the pool needs for a trial's checkpoints: an EvalJob with every field but the checkpoint's own."""

    paths: SweepPaths
    prototype: EvalJob  # step, epoch, checkpoint and its files filled in by job()

    @property
    def run_id(self) -> str:
        return self.prototype.run_id

    @property
    def variant(self) -> str:
        return self.prototype.variant

    def job(self, step: int, epoch: float, checkpoint_dir: str) -> EvalJob:
        run_id, variant = self.prototype.run_id, self.prototype.variant
        return replace(self.prototype, step=step, epoch=epoch, checkpoint_dir=checkpoint_dir,
                       records_path=self.paths.records_file(run_id, step, variant),
                       completions_path=self.paths.completions_file(run_id, step, variant))


def trial_jobs(spec: TrialSpec, paths: SweepPaths, base_model: str | dict[str, str]) -> tuple[TrainJob, EvalTemplate]:
    """The training job and the evaluation template of one trial, from its resolved config (`base_model`: the
    sweep's starting model, or one per run_id where the sweep varies the model)."""
    if isinstance(base_model, dict):
        base_model = base_model[spec.run_id]
    c = spec.config
    task = task_args(c.task)
    prompt = {"question_suffix": c.task.question_suffix, "stop": c.task.stop}
    train_fields = {k: getattr(c.train, k) for k in TrainSettings.__dataclass_fields__}
    job = TrainJob(run_id=spec.run_id, base_model=base_model, task=task, prompt=prompt,
                   train=TrainSettings(**train_fields), seed=c.seed,
                   threads_per_worker=max(1, int(c.train.cpus_per_worker)), local_dir=c.store.local_dir)
    s = c.sampler
    sampling = {"k": s.k, "temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
                "stop": c.task.stop, "seed": s.seed, "batch_tokens": s.batch_tokens,
                "score_batch_tokens": s.score_batch_tokens}
    prototype = EvalJob(run_id=spec.run_id, step=-1, epoch=float("nan"), checkpoint_dir="", records_path="",
                        completions_path="", task=task, prompt={**prompt, "answer_prefix": s.answer_prefix},
                        sampling=sampling, variant=s.variant, grade_timeout_s=s.grade_timeout_s,
                        grade_workers=s.grade_workers, train_subset=s.train_subset, subset_seed=s.seed,
                        local_dir=c.store.local_dir)
    return job, EvalTemplate(paths, prototype)


def jobs_for(paths: SweepPaths, specs: list[TrialSpec], sampler: dict, last_only: bool = False,
             logged=None) -> list[EvalJob]:
    """Evaluation jobs of the trials' stored checkpoints (or each trial's last) with these sampler settings (whose
    `variant` names the records); checkpoints that already have those records are left out, unless
    `logged(run_id, step)` says their values are not in MLflow yet (then they are evaluated again)."""
    jobs = []
    for spec in specs:
        with_sampler = replace(spec, config=replace(spec.config, sampler=SamplerConfig(**sampler)))
        _, template = trial_jobs(with_sampler, paths, "")
        checkpoints = paths.trial_checkpoints(spec.run_id)
        for ckpt in checkpoints[-1:] if last_only else checkpoints:
            state = json.loads(io.read_text(io.join(ckpt, "trainer_state.json")))
            if (io.is_file(paths.records_file(spec.run_id, state["step"], sampler["variant"]))
                    and (logged is None or logged(spec.run_id, state["step"]))):
                continue  # done by an earlier, interrupted pass
            if evicted(ckpt):
                continue  # its weights were deleted under store.keep; evicted_line says which
            jobs.append(template.job(state["step"], state["epoch"], ckpt))
    return jobs


def evicted_line(paths: SweepPaths, specs: list[TrialSpec]) -> str | None:
    """One line naming the checkpoints whose weights store.keep deleted (they cannot be evaluated again)."""
    gone = [c for spec in specs for c in paths.trial_checkpoints(spec.run_id) if evicted(c)]
    if not gone:
        return None
    reason = json.loads(io.read_text(io.join(gone[0], EVICTED)))["reason"]
    names = [f"{io.name(io.parent(c))}/{io.name(c)}" for c in gone]
    return (f"evicted: {len(gone)} checkpoint(s) have no weights any more ({reason}), so are not re-evaluated: "
            + ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else ""))
