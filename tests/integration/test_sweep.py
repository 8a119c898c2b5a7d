"""A 2-trial sweep through Ray Tune/Train + DeepSpeed (CPU) + the HF sampling pool, logging to a real
`mlflow server` subprocess on localhost; then re-evaluation of its checkpoints with a prompt variant."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pandas as pd
import requests
import pytest

from tests.conftest import REPO
from tests.integration.conftest import SMALL as SWEEP
from tests.integration.conftest import run_python as _run

pytestmark = pytest.mark.slow

# and the robustness pass: each trial's last checkpoint again with the answer forced to start "First,"
SMALL = [*SWEEP, "cluster.num_cpus=2", "sweep.robustness_variant=prefixed"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mlflow_server):
    store = tmp_path_factory.mktemp("store")
    result = _run(["-m", "orchestrator", f"store.root={store}", f"tracking.uri={mlflow_server}",
                   "tracking.experiment=integration", *SMALL], timeout=1200)
    sweep_dir = next((store / "sweeps").iterdir())
    return store, sweep_dir, result.stdout


def test_sweep_writes_records_for_every_checkpoint(sweep):
    from analysis.records import load_records

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
    assert "premem R² =" in stdout and f"store: {sweep_dir}" in stdout
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
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "plan.json", "analysis"} <= parent_artifacts
    assert "analysis/premem_vs_test.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    # the parent run tells the story: baselines beside the fit, a description with the table and the plot
    assert {"train_acc_r2", "train_nll_r2"} <= set(parent.data.metrics)
    note = parent.data.tags["mlflow.note.content"]
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


def test_reevaluation_with_a_prompt_variant(sweep, mlflow_server):
    store, sweep_dir, _ = sweep
    result = _run(["-m", "orchestrator.reeval", str(sweep_dir), "sampler.variant=first",
                   "sampler.answer_prefix=First", "sampler.k=2", f"tracking.uri={mlflow_server}",
                   "tracking.experiment=integration", "cluster.num_cpus=2"], timeout=900)
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


def test_curation_rounds_on_the_sweep(sweep, mlflow_server, tmp_path):
    """Two rounds of premem and i.i.d. curation from the sweep: follow-up runs train on its data plus new
    generated problems, are evaluated like any trial, and give curves, an efficiency ratio and MLflow runs
    nested curation -> round -> trial."""
    from mlflow import MlflowClient

    store, sweep_dir, _ = sweep
    out = tmp_path / "curation.json"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.curate", str(sweep_dir), "curation=small", "curation.budgets=[6]",
         "curation.seeds=[0]", f"tracking.uri={mlflow_server}", "tracking.experiment=integration",
         "cluster.num_cpus=2"], cwd=REPO, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "CURATION_OUT": str(out)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["seeds"] == [0] and report["rounds"] == 2 and report["similar"] == "generator"
    # the curves: the shared base run at 0, then +6 (round 1) and +12 (round 2) for both strategies
    assert {s: [p[0] for p in points] for s, points in report["curves"].items()} == {"iid": [0, 6, 12],
                                                                                  "premem": [0, 6, 12]}
    assert report["curves"]["iid"][0] == report["curves"]["premem"][0]
    assert all(0 <= acc <= 1 and std == 0 for points in report["curves"].values() for _, acc, std in points)
    assert report["efficiency"]["premem"]["budget"] == 12 and report["efficiency_ratio"] >= 0
    # each round is a sweep in the store; round 2's added data hold round 1's plus six more, all new questions
    rounds = sorted(p for p in (store / "sweeps").iterdir() if p.name.startswith("curation-small-"))
    assert [p.name[-3:] for p in rounds] == ["-r1", "-r2"]
    first = [json.loads(line) for line in (rounds[0] / "data" / "premem-s0-n6.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (rounds[1] / "data" / "premem-s0-n12.jsonl").read_text().splitlines()]
    assert second[:6] == first and len(second) == 12
    train_questions = set(pd.concat(pd.read_parquet(f) for f in (sweep_dir / "records").rglob("*.original.parquet"))
                          .example_id)
    assert all(row["similar_to"] in train_questions for row in first)  # round 1 resembles the sweep's examples
    assert {row["similar_to"] for row in second[6:]} <= {row["example_id"] for row in first} | train_questions
    # follow-up runs were evaluated on the grown train split: 48 + 6 train questions in round 1
    records = pd.concat(pd.read_parquet(f) for f in (rounds[0] / "records").rglob("*.original.parquet"))
    sizes = records[records.split == "train"].groupby("run_id").size()
    assert sorted(sizes.tolist()) == [48, 54, 54]
    assert (store / "curations" / report["curation_id"] / "curation.png").read_bytes()[:4] == b"\x89PNG"
    assert "efficiency vs i.i.d. (premem, +12)" in result.stdout
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("integration")
    parent = client.search_runs([exp.experiment_id], f"tags.`premem.curation` = '{report['curation_id']}'")[0]
    assert parent.info.status == "FINISHED" and "efficiency_ratio" in parent.data.metrics
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "test_acc_premem")] == [0, 6, 12]
    assert "curation/curation.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "curation")}
    assert "| premem |" in parent.data.tags["mlflow.note.content"]
    round_runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in round_runs) == [p.name for p in rounds]
    trials = [t for r in round_runs for t in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{r.info.run_id}'")]
    assert len(trials) == 3 + 2 and all(t.info.status == "FINISHED" for t in trials)
    assert {t.data.params["curation.strategy"] for t in trials} == {"base", "premem", "iid"}
