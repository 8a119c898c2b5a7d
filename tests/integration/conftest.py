"""Fixtures the integration tests share: a real `mlflow server` subprocess, and running our entry points."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, wait_for_http

# The small sweep the integration tests run: 2 trials x 2 epochs on a briefly pretrained tiny model.
SMALL = ["sweep=small", "task.n_train=48", "task.n_test=48", "train.epochs=2", "sampler.k=3",
         "sampler.max_new_tokens=96", "model.base_stage.n_examples=600", "model.base_stage.epochs=1"]


@contextlib.contextmanager
def mlflow_server_at(root: Path, artifacts: str):
    """`mlflow server` on a free localhost port (sqlite backend in `root`, artifacts at `artifacts`)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", artifacts,
         "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", proc, root / "server.log", "mlflow server")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a server with S3 artifacts can hang in shutdown: not ours to wait
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    with mlflow_server_at(root, str(root / "art")) as uri:
        yield uri


def run_python(args: list[str], timeout: int, expect: int = 0) -> subprocess.CompletedProcess:
    """`python ARGS` in the repository; fails the test unless it exits with `expect`."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == expect, f"{args} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result
