"""A real tracking server as on a cluster: `mlflow server` on its own PostgreSQL 15, two trials logging at once,
and the server stopped and restarted mid-sweep: training goes on, every metric lands once."""
from __future__ import annotations

import time

import pytest

from tests.conftest import free_port
from tests.integration.conftest import (N_TEST, N_TRAIN, ONE_LONG_TRIAL, Driver, mlflow_server_at,
                                        newest_sweep, postgres_at, wait_until, with_small_base)
from tests.integration.exactly_once import assert_mlflow_exactly_once, assert_records_exactly_once, report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    with postgres_at() as uri:
        yield uri


def test_concurrent_trials_log_through_a_server_outage_and_lose_nothing(postgres, tmp_path, small_base_models,
                                                                         local_ray):
    """Two trials at once log to `mlflow server` on PostgreSQL; the server is stopped once the first records are
    written and started again: training goes on, the driver says the server is back, and every metric of both
    trials lands once (one sweep carries both claims: each sweep here costs a minute of the suite)."""
    import psycopg

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server_at(tmp_path, str(tmp_path / "art"), backend=postgres, port=port)
    server.__enter__()
    store = with_small_base(tmp_path / "store", small_base_models)
    driver = Driver(["-m", "orchestrator", f"store.root={store}", f"tracking.uri={uri}", "tracking.experiment=pg",
                     *ONE_LONG_TRIAL, "sweep.grid.train.lr=[1e-3,3e-3]", "sweep.max_concurrent_trials=2",
                     local_ray], tmp_path / "driver.log")
    try:
        # records only: a walk through checkpoints/ races the engine states the sweep deletes as it goes
        wait_until(lambda: list((store / "sweeps").glob("*/records/**/*.original.parquet")), what="the first records")
        server.__exit__(None, None, None)  # the server goes away mid-sweep
        stopped = time.time()
        wait_until(lambda: "MLflow: cannot write" in driver.output, timeout=300, what="the driver to notice")
        time.sleep(10)
        down_for = time.time() - stopped
        server = mlflow_server_at(tmp_path, str(tmp_path / "art"), backend=postgres, port=port)
        server.__enter__()
        assert driver.wait() == 0, driver.output
        assert "is back after" in driver.output
        sweep = newest_sweep(store)
        assert_records_exactly_once(sweep, N_TRAIN, N_TEST)
        curves = assert_mlflow_exactly_once(uri, "pg", sweep.name, n_trials=2)
        children = [c for k, c in curves.items() if k != "parent"]
        assert len(children) == 2
        assert all(len(c["test_acc"]) == 6 and len(c["train_loss"]) == 96 for c in children)
        report(f"MLflow server (PostgreSQL) stopped for {down_for:.0f} s mid-sweep, 2 trials at once",
               driver.seconds, float("nan"))
    finally:
        server.__exit__(None, None, None)
        if driver.proc.poll() is None:
            driver.proc.kill()
    with psycopg.connect(postgres) as db, db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                       "JOIN experiments e ON r.experiment_id = e.experiment_id WHERE e.name = 'pg'")
        assert cursor.fetchone()[0] > 0  # the values live in PostgreSQL
