"""A whole small sweep with store.root=s3://... on a local S3 server (moto) and a two-node Ray cluster
(two raylets, each with its own temp dir), MLflow's artifacts in the same bucket: nothing crosses between
processes except through the bucket, nothing of the sweep stays on local disk outside temp dirs, and the
analysis CLI on the S3 sweep gives the fit the driver printed. Then its re-evaluation, and two curation
rounds from it (their new data in the bucket too)."""
from __future__ import annotations

import json
import os
import re
import tempfile

import pandas as pd

import pytest

from store import io
from tests.conftest import REPO, make_bucket
from tests.integration.conftest import FIT_OR_WHY, SMALL, mlflow_server_at, ray_cluster_at, run_python

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(s3_server):
    return make_bucket("premem-sweeps")


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """Head and worker raylets on this host, two logical CPUs each (a trial worker takes a whole one while
    half-CPU samplers sit on either node), separate temp dirs; stopped afterwards."""
    with ray_cluster_at([{"num_cpus": 2}, {"num_cpus": 2}]) as cluster:
        yield cluster.address


@pytest.fixture(scope="module")
def s3_mlflow(bucket, tmp_path_factory):
    """An mlflow server whose artifacts live in the bucket (its database is the server's own)."""
    with mlflow_server_at(tmp_path_factory.mktemp("mlflow-s3"), f"{bucket}/mlartifacts") as uri:
        yield uri


@pytest.fixture(scope="module")
def s3_sweep(bucket, ray_cluster, s3_mlflow):
    env_before = set(os.listdir(REPO))
    result = run_python(["-m", "orchestrator", f"store.root={bucket}/store", f"tracking.uri={s3_mlflow}",
                         f"cluster.address={ray_cluster}", "tracking.experiment=s3", *SMALL,
                         "sweep.grid.train.lr=[1e-3]"], timeout=1500)  # one trial: curation follows one up
    sweeps = io.list_dirs(f"{bucket}/store/sweeps")
    assert len(sweeps) == 1
    assert set(os.listdir(REPO)) == env_before  # no ./runs or anything else beside the code
    return sweeps[0], result.stdout


def test_sweep_on_s3_writes_everything_to_the_bucket(s3_sweep, bucket):
    sweep, stdout = s3_sweep
    records = io.list_files(f"{sweep}/records", suffix=".original.parquet")
    assert len(records) == 2  # 1 trial x 2 epochs
    assert len(io.list_files(f"{sweep}/completions", suffix=".parquet")) == 2
    checkpoints = [c for run in io.list_dirs(f"{sweep}/checkpoints") for c in io.list_dirs(run)]
    assert len(checkpoints) == 2 and all(io.is_file(f"{c}/model.safetensors") for c in checkpoints)
    for name in ("config.yaml", "plan.json", "analysis/points.csv", "analysis/premem_vs_test.png",
                 "analysis/timings.json"):
        assert io.is_file(f"{sweep}/{name}"), name
    assert io.list_files(f"{bucket}/store/base_models", suffix="config.json")
    assert io.list_files(f"{bucket}/mlartifacts", suffix=".parquet")  # MLflow's artifacts, same bucket
    assert f"store: {sweep}" in stdout and FIT_OR_WHY.search(stdout)


def test_nothing_of_the_sweep_on_local_disk_outside_temp_dirs(s3_sweep):
    sweep_id = io.name(s3_sweep[0])
    temp = os.path.realpath(tempfile.gettempdir())
    for top in (REPO.parent, os.path.expanduser("~")):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d not in (".venv", ".git", "node_modules", ".cache")]
            if os.path.realpath(dirpath).startswith(temp):
                continue
            assert not any(sweep_id in n for n in dirnames + filenames), f"{dirpath} holds part of {sweep_id}"


def test_analysis_on_the_s3_sweep_gives_the_drivers_fit(s3_sweep, tmp_path):
    sweep, stdout = s3_sweep
    out = tmp_path / "fit.json"
    run_python(["-m", "analysis", "fit", "--records", f"{sweep}/records", "--nll-threshold", "0.1",
                "--json", str(out), "--bootstrap", "0"], timeout=300)
    result = json.loads(out.read_text())
    assert result["n_points"] == 2
    printed = re.search(r"premem R² = (-?[\d.]+|nan) against y = x", stdout)
    if printed:
        assert result["r2_identity"] == pytest.approx(float(printed.group(1)), abs=5e-4, nan_ok=True)
    else:  # the small sweep's base model is barely trained: both checkpoints may score one test accuracy
        lo, hi = (float(x) for x in re.search(r"test accuracy spans only ([\d.]+) \.\. ([\d.]+)", stdout).groups())
        assert hi - lo < 0.05


def test_reevaluation_reads_and_writes_the_s3_sweep(s3_sweep, ray_cluster, s3_mlflow):
    sweep, _ = s3_sweep
    run_python(["-m", "orchestrator.reeval", sweep, "sampler.variant=first", "sampler.answer_prefix=First",
                "sampler.k=2", f"tracking.uri={s3_mlflow}", "tracking.experiment=s3",
                f"cluster.address={ray_cluster}"], timeout=900)
    assert len(io.list_files(f"{sweep}/records", suffix=".first.parquet")) == 2
    assert io.is_file(f"{sweep}/analysis/robustness_first.json")


def test_curation_rounds_from_the_s3_sweep(s3_sweep, ray_cluster, s3_mlflow, tmp_path):
    """Two rounds of premem and i.i.d. curation: follow-up runs train on the sweep's data plus new generated
    problems (a JSONL file in the bucket), are evaluated like any trial, and give the curves, the efficiency
    ratio and MLflow runs nested curation -> round -> trial. Its driver is SIGKILLed once round 2 is planned;
    the same command again finds the curation by its address and finishes it without training round 1's runs
    again (`curate --resume DIR` shares that path: tests/unit/test_curation.py)."""
    from mlflow import MlflowClient

    from tests.integration.conftest import Driver, wait_until

    sweep, _ = s3_sweep
    store = io.parent(io.parent(sweep))
    out = tmp_path / "curation.json"
    os.environ["CURATION_OUT"] = str(out)  # the drivers' (Driver inherits this process's environment)
    command = ["-m", "orchestrator.curate", sweep, "curation=small", "curation.budgets=[6]", "curation.seeds=[0]",
               f"tracking.uri={s3_mlflow}", "tracking.experiment=s3", f"cluster.address={ray_cluster}"]
    try:
        driver = Driver(command, tmp_path / "curate.log")

        def round_two_planned() -> bool:
            return any(r.endswith("-r2") and io.is_file(f"{r}/plan.json") for r in io.list_dirs(f"{store}/sweeps"))

        wait_until(lambda: round_two_planned() or driver.proc.poll() is not None, timeout=1500, what="round 2",
                   interval=0.5)  # each poll lists the bucket
        assert driver.proc.poll() is None, driver.output[-4000:]
        driver.proc.kill()
        driver.wait()
        (curation,) = io.list_dirs(f"{store}/curations")
        resumed = run_python(command, timeout=1500)  # the same command: no new curation
        assert io.list_dirs(f"{store}/curations") == [curation]
    finally:
        del os.environ["CURATION_OUT"]
    assert "(resumed)" in resumed.stdout
    # round 1 had ended: its three runs are finished trials the resumed driver does not train again
    assert re.search(r"resuming curation-small-\S+-r1: 3 of 3 trials finished", resumed.stdout), resumed.stdout
    result = resumed
    report = json.loads(out.read_text())
    assert report["seeds"] == [0] and report["rounds"] == 2 and report["similar"] == "generator"
    # the curves: the shared base run at 0, then +6 (round 1) and +12 (round 2) for both strategies
    assert {s: [p[0] for p in points] for s, points in report["curves"].items()} == {"iid": [0, 6, 12],
                                                                                  "premem": [0, 6, 12]}
    assert report["curves"]["iid"][0] == report["curves"]["premem"][0]
    assert all(0 <= acc <= 1 and std == 0 for points in report["curves"].values() for _, acc, std in points)
    assert report["efficiency"]["premem"]["budget"] == 12 and report["efficiency_ratio"] >= 0
    assert "efficiency vs i.i.d. (premem, +12)" in result.stdout
    # each round is a sweep in the bucket; round 2's new data hold round 1's and six more, all new questions
    rounds = sorted(r for r in io.list_dirs(f"{store}/sweeps") if "curation-small-" in r)
    assert [r[-3:] for r in rounds] == ["-r1", "-r2"]
    first = [json.loads(line) for line in io.read_text(f"{rounds[0]}/data/premem-s0-n6.jsonl").splitlines()]
    second = [json.loads(line) for line in io.read_text(f"{rounds[1]}/data/premem-s0-n12.jsonl").splitlines()]
    assert second[:6] == first and len(second) == 12
    sweep_records = pd.concat(io.read_parquet(f).to_pandas()
                              for f in io.list_files(f"{sweep}/records", suffix=".original.parquet"))
    train_ids = set(sweep_records[sweep_records.split == "train"].example_id)
    assert all(row["similar_to"] in train_ids for row in first)  # round 1 resembles the sweep's examples
    assert {row["similar_to"] for row in second[6:]} <= {row["example_id"] for row in first} | train_ids
    questions = {row["question"] for row in second}
    assert len(questions) == 12  # (the sweep's questions are excluded by construction: unit-tested)
    # follow-up runs were evaluated on the grown train split: 48 + 6 train questions in round 1
    records = pd.concat(io.read_parquet(f).to_pandas()
                        for f in io.list_files(f"{rounds[0]}/records", suffix=".original.parquet"))
    assert sorted(records[records.split == "train"].groupby("run_id").size().tolist()) == [48, 54, 54]
    assert io.read_bytes(f"{store}/curations/{report['curation_id']}/curation.png")[:4] == b"\x89PNG"
    client = MlflowClient(s3_mlflow)
    exp = client.get_experiment_by_name("s3")
    parent = client.search_runs([exp.experiment_id], f"tags.`premem.curation` = '{report['curation_id']}'")[0]
    assert parent.info.status == "FINISHED" and "efficiency_ratio" in parent.data.metrics
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "test_acc_premem")) == [0, 6, 12]
    assert "curation/curation.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "curation")}
    assert "| premem |" in parent.data.tags["mlflow.note.content"]
    round_runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in round_runs) == [io.name(r) for r in rounds]
    trials = [t for r in round_runs for t in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{r.info.run_id}'")]
    assert len(trials) == 3 + 2 and all(t.info.status == "FINISHED" for t in trials)
    assert {t.data.params["curation.strategy"] for t in trials} == {"base", "premem", "iid"}
