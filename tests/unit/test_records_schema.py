"""What the pool writes for one checkpoint: the records schema, atomically, and the raw completions."""
from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq

from store.records import RECORDS_SCHEMA, load_records
from workers.backends import SamplingSettings
from workers.backends.hf import HFBackend
from workers.grading import Grader
from workers.sample import COMPLETIONS_SCHEMA, EvalJob, evaluate_checkpoint
from workers.tasks import load_task

TASK = dict(name="synthetic", seed=0, train_fraction=1.0, n_train=12, n_test=8, min_steps=2, max_steps=2,
            max_number=10, path=None, test_path=None)


def _evaluate(model_dir, tmp_path, variant="original", prefix=""):
    job = EvalJob("run-a", 7, 0.5, str(model_dir), str(tmp_path / "rec" / f"step_7.{variant}.parquet"),
                  str(tmp_path / "comp" / f"step_7.{variant}.parquet"), TASK, {"answer_prefix": prefix},
                  asdict(SamplingSettings(k=3, max_new_tokens=12, batch_tokens=4096)), variant)
    backend = HFBackend(threads=1)
    splits = load_task(**TASK)
    return evaluate_checkpoint(backend, job, splits, Grader(splits.grader)), job


def test_records_schema_and_contents(tiny_model_dir, tmp_path):
    result, job = _evaluate(tiny_model_dir, tmp_path)
    table = pq.read_table(job.records_path)
    assert table.schema.equals(RECORDS_SCHEMA)
    frame = table.to_pandas()
    assert len(frame) == 20 and (frame.split == "train").sum() == 12
    assert (frame.run_id == "run-a").all() and (frame.step == 7).all() and (frame.epoch == 0.5).all()
    assert (frame.n_samples == 3).all() and frame.n_correct.between(0, 3).all()
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    assert np.isfinite(train.ref_nll).all() and (train.ref_nll > 0).all() and test.ref_nll.isna().all()
    assert (frame.variant == "original").all()
    load_records([job.records_path])  # passes analysis validation
    assert not [p for p in (tmp_path / "rec").iterdir() if p.name.startswith(".")]  # no temp files left
    completions_table = pq.read_table(job.completions_path)
    assert completions_table.schema.equals(COMPLETIONS_SCHEMA)  # typed even where nothing parsed
    completions = completions_table.to_pandas()
    assert len(completions) == 60
    assert set(completions.columns) >= {"example_id", "sample_index", "completion", "extracted", "correct", "parsed"}
    assert result.metrics["train_acc"] == train.n_correct.sum() / 36


def test_prompt_variant_scores_the_same_reference(tiny_model_dir, tmp_path):
    original, job_o = _evaluate(tiny_model_dir, tmp_path)
    variant, job_v = _evaluate(tiny_model_dir, tmp_path, "first", "First")
    a, b = pq.read_table(job_o.records_path).to_pandas(), pq.read_table(job_v.records_path).to_pandas()
    assert (b.variant == "first").all()
    np.testing.assert_allclose(a.ref_nll, b.ref_nll, rtol=1e-6)  # ref NLL uses the original prompt
    completions = pq.read_table(job_v.completions_path).to_pandas()
    assert completions.completion.str.startswith("First ").all()


def test_analysis_never_imports_the_orchestrator():
    """analysis/ is the lower layer: it reads records and returns tables and figures."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "analysis"
    offenders = [str(p) for p in root.rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+orchestrator\b", p.read_text(), re.MULTILINE)]
    assert not offenders, offenders
