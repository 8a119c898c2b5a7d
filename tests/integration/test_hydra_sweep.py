"""`python -m orchestrator -m ...` on the real CLI: Hydra's sweep over two fields runs as ONE premem sweep (one
plan, one Tune experiment, one MLflow parent run with a child per trial), and `resume` finds it whole."""
from __future__ import annotations

import json

import pytest

from tests.integration.conftest import run_python, with_small_base

pytestmark = pytest.mark.slow

TINY = ["sweep=small", "task.n_train=16", "task.n_test=8", "train.epochs=1", "sampler.k=1", "sampler.max_new_tokens=16",
        "model.base_stage.n_examples=600", "model.base_stage.epochs=1",  # SMALL's base: the session's copy
        "sweep.max_concurrent_trials=2"]  # two trials at once beside the pool (local_ray has 3 CPUs)


def test_a_multirun_over_two_fields_is_one_sweep(tmp_path, mlflow_server, small_base_models, local_ray):
    from mlflow.tracking import MlflowClient

    store = with_small_base(tmp_path / "store", small_base_models)
    result = run_python(["-m", "orchestrator", "-m", "train.lr=1e-3,3e-3", "seed=0,1", *TINY, local_ray, f"store.root={store}",
                         f"tracking.uri={mlflow_server}", "tracking.experiment=hydra-multirun"], timeout=900)
    (sweep_dir,) = (store / "sweeps").iterdir()  # one sweep, not one per Hydra job
    plan = json.loads((sweep_dir / "plan.json").read_text())
    assert [t["grid_values"] for t in plan] == [{"train.lr": 1e-3, "seed": 0}, {"train.lr": 1e-3, "seed": 1},
                                                {"train.lr": 3e-3, "seed": 0}, {"train.lr": 3e-3, "seed": 1}]
    records = list((sweep_dir / "records").rglob("*.original.parquet"))
    assert len(records) == 4  # one checkpoint per trial
    from orchestrator.sweep import expected_checkpoints
    from orchestrator.plan import TrialSpec

    assert expected_checkpoints([TrialSpec.from_dict(t) for t in plan]) == len(records)  # --plan counted what trained
    assert len(list((sweep_dir / "tune").glob("trainable_*"))) == 4  # one Tune experiment holds the 4 trials
    assert "sweep small-" in result.stdout and "4 trials" in result.stdout
    assert not (tmp_path / "multirun").exists() and not list(tmp_path.glob("**/.hydra"))  # no Hydra job dirs

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("hydra-multirun")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 5
    assert {r.data.tags["mlflow.parentRunId"] for r in runs if r not in parents} == {parents[0].info.run_id}

    resumed = run_python(["-m", "orchestrator.resume", str(sweep_dir), f"tracking.uri={mlflow_server}"], timeout=600)
    assert "4 of 4 trials finished" in resumed.stdout
