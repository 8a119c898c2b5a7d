"""A 2-trial sweep through Ray Tune/Train + DeepSpeed (CPU) + the HF sampling pool, logging to a real
`mlflow server` subprocess on localhost; then re-evaluation of its checkpoints with a prompt variant."""
from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import pandas as pd
import requests
import pytest

from tests.integration.conftest import FIT_OR_WHY
from tests.integration.conftest import SMALL as SWEEP
from tests.integration.conftest import run_python as _run
from workers.models import package_versions

pytestmark = pytest.mark.slow

# and the robustness pass: each trial's last checkpoint again with the answer forced to start "First,"
SMALL = [*SWEEP, "sweep.robustness_variant=prefixed"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mlflow_server, local_ray):
    store = tmp_path_factory.mktemp("store")
    result = _run(["-m", "orchestrator", f"store.root={store}", f"tracking.uri={mlflow_server}",
                   "tracking.experiment=integration", *SMALL, local_ray], timeout=1200)
    sweep_dir = next((store / "sweeps").iterdir())
    return store, sweep_dir, result.stdout


def test_sweep_writes_records_for_every_checkpoint(sweep):
    from store.records import load_records

    store, sweep_dir, stdout = sweep
    files = sorted((sweep_dir / "records").rglob("*.original.parquet"))
    assert len(files) == 4  # 2 trials x 2 epochs
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert list(frame.columns) == ["run_id", "step", "epoch", "split", "example_id", "n_samples", "n_correct",
                                   "ref_nll", "variant"]
    assert frame.groupby(["run_id", "step", "split"]).size().tolist() == [48] * 8
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    assert (train.ref_nll > 0).all() and test.ref_nll.isna().all()
    assert (frame.n_samples == 3).all() and frame.n_correct.between(0, 3).all()
    assert sorted(frame.epoch.unique()) == [1.0, 2.0]
    load_records(files)  # passes the analysis contract
    completions = pd.concat(pd.read_parquet(f) for f in (sweep_dir / "completions").rglob("*.original.parquet"))
    assert len(completions) == 4 * 96 * 3 and completions.completion.str.len().gt(0).mean() > 0.9
    # Checkpoints are HF directories a person (or vLLM) can load.
    ckpts = sorted((sweep_dir / "checkpoints").glob("*/step_*"))
    assert len(ckpts) == 4 and all((c / "config.json").is_file() and (c / "model.safetensors").is_file()
                                   for c in ckpts)
    assert FIT_OR_WHY.search(stdout) and f"store: {sweep_dir}" in stdout
    # the robustness pass: the last checkpoint of each trial, once more, under the perturbation
    prefixed = sorted((sweep_dir / "records").rglob("*.prefixed.parquet"))
    assert [f.name for f in prefixed] == ["step_000012.prefixed.parquet"] * 2
    assert "robustness (variant 'prefixed'" in stdout
    table = json.loads((sweep_dir / "analysis" / "robustness_prefixed.json").read_text())
    assert sum(row["n"] for row in table) == 2 * 48  # every train question of both last checkpoints, binned


def test_mlflow_has_parent_children_metrics_and_artifacts(sweep, mlflow_server):
    from mlflow import MlflowClient

    _, sweep_dir, stdout = sweep
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("integration")
    parent = client.search_runs([exp.experiment_id], filter_string=f"tags.`premem.sweep` = '{sweep_dir.name}'")[0]
    assert {"premem_r2", "premem_slope", "premem_intercept"} <= set(parent.data.metrics)
    assert parent.data.tags["git_commit"] and parent.info.status == "FINISHED"
    # the packages a rerun needs to give the same weights
    assert {k: v for k, v in parent.data.tags.items() if k.startswith("package.")} == {
        f"package.{k}": v for k, v in package_versions().items()}
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "plan.json", "analysis"} <= parent_artifacts
    assert "analysis/premem_vs_test.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    # the parent run tells the story: baselines beside the fit, a description with the table and the plot
    assert {"train_acc_r2", "train_nll_r2"} <= set(parent.data.metrics)
    note = parent.data.tags["mlflow.note.content"]
    if "no fit: test accuracy spans only" in note:  # the tiny sweep's checkpoints may all score one test accuracy
        assert "R² against y = x |" not in note
    else:
        assert "pre-memorization train accuracy" in note and "train accuracy |" in note and "train NLL" in note
    assert "**Robustness**" in note and "| premem bin |" in note
    assert "analysis/robustness_prefixed.json" in {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    image = re.search(r"!\[[^]]*\]\((get-artifact\?[^)]+)\)", note).group(1)
    response = requests.get(f"{mlflow_server}/{image}", timeout=30)  # the UI resolves it against its address
    assert response.status_code == 200 and response.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs, not GenAI
    url = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {"synthetic-train", "synthetic-test"}
    assert f"MLflow sweep run: {url}" in stdout
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["lr"] in ("0.001", "0.003")
        for name in ("train_loss", "train_acc", "test_acc", "ref_nll_mean", "memorized_frac", "premem_train_acc"):
            assert name in child.data.metrics, name
        # two sampler actors: a later checkpoint can finish (and be logged) first; MLflow plots by step
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "test_acc"))
        assert len(steps) == 2 and steps[0] < steps[1]
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) == max(steps)
        # the pool checked that it evaluated the weights the trainer saved (workers/probe.py), and nothing was rebuilt
        assert child.data.metrics["weight_check_rebuilds"] == 0 and child.data.metrics["probe_nll_max_abs_diff"] < 1e-3
        records = [a.path for a in client.list_artifacts(child.info.run_id, "records")]
        assert sorted(p.rsplit(".", 2)[1] for p in records) == ["original", "original", "prefixed"]
        assert "test_acc_prefixed" in child.data.metrics
        inputs = {d.tags[0].value: d.dataset for d in client.get_run(child.info.run_id).inputs.dataset_inputs}
        assert set(inputs) == {"train", "test"} and inputs["train"].name == "synthetic-train"
        assert json.loads(inputs["test"].profile)["num_rows"] == 48


def test_records_from_mlflow_feed_analysis(sweep, mlflow_server, tmp_path):
    from analysis.__main__ import main as analysis_main
    from mlflow import MlflowClient

    _, sweep_dir, _ = sweep
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("integration")
    parent = client.search_runs([exp.experiment_id], filter_string=f"tags.`premem.sweep` = '{sweep_dir.name}'")[0]
    out = tmp_path / "fit.json"
    code = analysis_main(["fit", "--mlflow-parent-run", parent.info.run_id, "--tracking-uri", mlflow_server,
                          "--nll-threshold", "0.1", "--json", str(out), "--plots", str(tmp_path / "p"),
                          "--color-by", "lr", "--bootstrap", "0"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n_points"] == 4
    assert result["r2"] == pytest.approx(parent.data.metrics["premem_r2"], abs=1e-9, nan_ok=True)


def test_reevaluation_with_a_prompt_variant(sweep, mlflow_server, local_ray):
    store, sweep_dir, _ = sweep
    result = _run(["-m", "orchestrator.reeval", str(sweep_dir), "sampler.variant=first",
                   "sampler.answer_prefix=First", "sampler.k=2", f"tracking.uri={mlflow_server}",
                   "tracking.experiment=integration", local_ray], timeout=900)
    files = sorted((sweep_dir / "records").rglob("*.first.parquet"))
    assert len(files) == 4
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert (frame.variant == "first").all() and (frame.n_samples == 2).all()
    completions = pd.concat(pd.read_parquet(f) for f in (sweep_dir / "completions").rglob("*.first.parquet"))
    assert completions.completion.str.startswith("First").all()
    assert "accuracy under variant 'first' by premem bin" in result.stdout
    assert (sweep_dir / "analysis" / "robustness_first.json").is_file()
    # Nothing was retrained: still the same four checkpoints.
    assert len(list((sweep_dir / "checkpoints").glob("*/step_*"))) == 4



# ------------------------------------------------------------------------- rerun is resume (docs/rerun.md)
def sweep_args(store, mlflow_server, local_ray, *extra: str) -> list[str]:
    return ["-m", "orchestrator", f"store.root={store}", f"tracking.uri={mlflow_server}",
            "tracking.experiment=integration", *SMALL, local_ray, *extra]


def stored_files(sweep_dir, what: str) -> dict:
    return {str(p.relative_to(sweep_dir)): p.read_bytes() for p in sorted((sweep_dir / what).rglob("*"))
            if p.is_file() and p.name != "checkpoint_manager_snapshot.json"}


def test_the_same_command_again_continues_the_sweep_and_trains_nothing(sweep, mlflow_server, local_ray):
    from tests.integration.exactly_once import assert_mlflow_exactly_once

    store, sweep_dir, _ = sweep
    records, checkpoints = stored_files(sweep_dir, "records"), stored_files(sweep_dir, "checkpoints")
    timings = json.loads((sweep_dir / "analysis" / "timings.json").read_text())
    assert len(timings) == 2
    result = _run(sweep_args(store, mlflow_server, local_ray), timeout=900)
    assert json.loads((sweep_dir / "analysis" / "timings.json").read_text()) == timings  # kept, not emptied
    assert [p.name for p in (store / "sweeps").iterdir()] == [sweep_dir.name]
    assert "0 of them new" in result.stdout and "2 of 2 trials finished" in result.stdout, result.stdout
    assert "0 of them to evaluate" in result.stdout, result.stdout
    fit = [line for line in result.stdout.splitlines() if line.startswith(("premem R²", "no fit"))]
    assert fit and fit[0] in sweep[2]  # the same fit as the first run's
    assert stored_files(sweep_dir, "records") == records  # byte-identical: nothing evaluated again
    assert stored_files(sweep_dir, "checkpoints") == checkpoints  # nothing trained again
    assert_mlflow_exactly_once(mlflow_server, "integration", sweep_dir.name, n_trials=2)  # one parent, found again


def test_a_grid_grown_by_one_point_started_twice_at_once_trains_only_that_point_once(sweep, mlflow_server, local_ray,
                                                                                   tmp_path):
    """Two drivers of the same grown command at once: one holds the sweep's lease and trains the new point in
    the same sweep under the same parent run; the other says who holds it, waits, then finds nothing to do. The
    end-of-sweep fit covers all three trials."""
    from tests.integration.conftest import Driver
    from tests.integration.exactly_once import assert_mlflow_exactly_once

    store, sweep_dir, _ = sweep
    checkpoints = stored_files(sweep_dir, "checkpoints")
    grown = sweep_args(store, mlflow_server, local_ray, "sweep.grid.train.lr=[1e-3,3e-3,1e-2]")
    first = Driver(grown, tmp_path / "first.log")
    time.sleep(2)
    second = Driver(grown, tmp_path / "second.log")
    assert first.wait() == 0, first.output
    assert second.wait() == 0, second.output
    waited = next(d for d in (first, second) if "lease: the sweep is held by driver pid" in d.output)
    trained = first if waited is second else second
    assert "3 trials, 1 of them new" in trained.output and "2 of 3 trials finished" in trained.output
    assert "3 of 3 trials finished" in waited.output and "0 of them new" in waited.output
    assert [p.name for p in (store / "sweeps").iterdir()] == [sweep_dir.name]
    new = sorted((sweep_dir / "checkpoints").glob("*-t02-lr0.01/step_*"))
    assert len(new) == 2  # the new point trained once
    assert {k: v for k, v in stored_files(sweep_dir, "checkpoints").items() if "-t02-" not in k} == checkpoints
    assert_mlflow_exactly_once(mlflow_server, "integration", sweep_dir.name, n_trials=3)
    points = pd.read_csv(sweep_dir / "analysis" / "points.csv")
    assert len(points) == 6 and points.run_id.nunique() == 3  # the fit covers every trial the command names


def test_other_evaluation_settings_evaluate_the_stored_checkpoints_into_a_set_of_their_own(sweep, mlflow_server,
                                                                                          local_ray):
    """`sampler.k` changed on the first command: the same sweep, nothing trained, every checkpoint of the trials
    it names evaluated again into records set `eval-<hash>` (the third trial, not named, is left alone); the fit
    reads that set only, under its own names in MLflow; the original records are untouched. A grader change
    re-grades those completions without sampling (workers.sample.regrade_checkpoint on the stored files)."""
    from tests.integration.exactly_once import assert_mlflow_exactly_once
    from mlflow import MlflowClient

    store, sweep_dir, _ = sweep
    records, checkpoints = stored_files(sweep_dir, "records"), stored_files(sweep_dir, "checkpoints")
    result = _run(sweep_args(store, mlflow_server, local_ray, "sampler.k=1"), timeout=900)
    assert [p.name for p in (store / "sweeps").iterdir()] == [sweep_dir.name]
    records_set = json.loads((sweep_dir / "evaluations.json").read_text())
    assert list(records_set)[0] == "original" and records_set["original"]["sampler.k"] == 3
    name = list(records_set)[-1]
    assert name.startswith("eval-") and records_set[name]["sampler.k"] == 1
    assert f"records set {name}: new evaluation settings (sampler.k 3 -> 1)" in result.stdout, result.stdout
    assert "0 of them new" in result.stdout and "4 of them to evaluate" in result.stdout, result.stdout
    assert stored_files(sweep_dir, "checkpoints") == checkpoints  # nothing trained
    assert {k: v for k, v in stored_files(sweep_dir, "records").items() if k in records} == records
    new = sorted((sweep_dir / "records").rglob(f"*.{name}.parquet"))
    assert len(new) == 4 and not any("-t02-" in str(f) for f in new)
    frame = pd.concat(pd.read_parquet(f) for f in new)
    assert (frame.variant == name).all() and (frame.n_samples == 1).all()
    points = pd.read_csv(sweep_dir / "analysis" / name / "points.csv")
    assert len(points) == 4 and points.run_id.nunique() == 2  # this set's fit: its own points, no other set's
    assert FIT_OR_WHY.search(result.stdout)
    curves = assert_mlflow_exactly_once(mlflow_server, "integration", sweep_dir.name, n_trials=3)
    fitted = {run: c for run, c in curves.items() if run != "parent" and "-t02-" not in run}
    assert all(len(c[f"test_acc_{name}"]) == 2 and len(c["test_acc"]) == 2 for c in fitted.values())
    assert all(f"premem_train_acc_{name}" in c for c in fitted.values())

    # the same command again: the set is found, nothing evaluated again
    again = _run(sweep_args(store, mlflow_server, local_ray, "sampler.k=1"), timeout=900)
    assert "0 of them to evaluate" in again.stdout and "new evaluation settings" not in again.stdout, again.stdout
    assert len(list((sweep_dir / "records").rglob(f"*.{name}.parquet"))) == 4

    # a new grader version re-grades the stored completions: the same grader gives the same verdicts
    from orchestrator.jobs import trial_jobs
    from orchestrator.sweep import stored_specs
    from store.layout import open_sweep
    from workers.grading import Grader
    from workers.sample import regrade_checkpoint
    from workers.tasks import load_task

    paths = open_sweep(str(sweep_dir))
    spec = stored_specs(paths)[0]
    _, template = trial_jobs(spec, paths, "unused")
    template = replace(template, prototype=replace(template.prototype, variant="regraded"))
    source = next(f for f in new if f.parent.name == spec.run_id)
    step = int(source.name.split(".")[0].removeprefix("step_"))
    job = replace(template.job(step, 1.0, "no weights: not loaded"), regrade_records=str(source),
                  regrade_completions=paths.completions_file(spec.run_id, step, name))
    splits = load_task(**job.task)
    evaluated = regrade_checkpoint(job, splits, Grader(splits.grader, job.grade_timeout_s, 1))
    regraded, sampled = pd.read_parquet(evaluated.records_path), pd.read_parquet(source)
    pd.testing.assert_frame_equal(regraded.drop(columns="variant"), sampled.drop(columns="variant"))
    assert (regraded.variant == "regraded").all() and evaluated.metrics["test_acc"] == pytest.approx(
        sampled[sampled.split == "test"].n_correct.mean())
