"""Fixtures the integration tests share: a real `mlflow server` subprocess, and running our entry points."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
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


@dataclass
class RayCluster:
    """A multi-node Ray cluster on this host: one raylet per node, each with its own temp dir (which its
    processes' open log files point into: how a test finds a process's node)."""

    address: str
    temp_dirs: list[str] = field(default_factory=list)  # head first

    def node_of(self, pid: int) -> str | None:
        """The temp dir of the node a Ray worker process belongs to."""
        links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir() if f.is_symlink()]
        return next((d for d in self.temp_dirs if any(link.startswith(d + "/") for link in links)), None)

    def kill_node(self, temp_dir: str) -> None:
        """SIGKILL a node's raylet and agents (its workers then exit: they lose their raylet)."""
        subprocess.run(["pkill", "-9", "-f", temp_dir], capture_output=True)


@contextlib.contextmanager
def ray_cluster_at(nodes: list[dict]):
    """`ray start` a head and workers on this host; each node dict: num_cpus and optional resources.
    Stopped afterwards by killing only its own processes (`ray stop` would stop every Ray on the host)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    port = free_port()
    cluster = RayCluster(f"127.0.0.1:{port}")
    try:
        for i, node in enumerate(nodes):
            temp_dir = tempfile.mkdtemp(prefix="rayn", dir="/tmp")
            cluster.temp_dirs.append(temp_dir)
            role = ["--head", f"--port={port}", "--include-dashboard=false"] if i == 0 else [f"--address={cluster.address}"]
            args = [*ray, "start", *role, f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
                    f"--num-cpus={node['num_cpus']}", "--disable-usage-stats"]
            if node.get("resources"):
                args.append(f"--resources={json.dumps(node['resources'])}")
            subprocess.run(args, env=env, check=True, capture_output=True)
        yield cluster
    finally:
        for d in cluster.temp_dirs:
            subprocess.run(["pkill", "-f", d], capture_output=True)
        for d in cluster.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
