"""Fixtures the integration tests share: a real `mlflow server` subprocess, and running premem's entry points."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, wait_for_http

# The small sweep the integration tests run: 2 trials x 2 epochs on a briefly pretrained tiny model.
# what a driver prints at the end of a sweep: its fit, or the one sentence saying why there is none (a tiny
# sweep's checkpoints may all score one test accuracy, and an R² against that measures noise)
FIT_OR_WHY = re.compile(r"premem R² = |no fit: test accuracy spans only")
SMALL = ["sweep=small", "task.n_train=48", "task.n_test=48", "train.epochs=2", "sampler.k=3",
         "sampler.max_new_tokens=96", "model.base_stage.n_examples=600", "model.base_stage.epochs=1"]

N_TRAIN, N_TEST = 192, 48
# One trial, 96 optimizer steps, a checkpoint every 16: room to strike between checkpoints.
ONE_LONG_TRIAL = ["sweep=small", "sweep.grid.train.lr=[1e-3]", f"task.n_train={N_TRAIN}", f"task.n_test={N_TEST}",
                  "train.epochs=2", "train.micro_batch_size=4", "train.global_batch_size=4",
                  "train.save_every_steps=16", "sampler.k=2", "sampler.max_new_tokens=64",
                  "model.base_stage.n_examples=600", "model.base_stage.epochs=1"]


class Driver:
    """`python -m orchestrator ...` running in the background, its output in a file."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.started = time.time()
        self.seconds = float("nan")  # wall time, once it has ended
        self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 900) -> int:
        code = self.proc.wait(timeout=timeout)
        if self.seconds != self.seconds:
            self.seconds = time.time() - self.started
        return code

    @property
    def output(self) -> str:
        return self.log.read_text()


def wait_until(predicate, timeout: float = 600, what: str = "", interval: float = 0.1) -> None:
    """Poll `predicate` every `interval` s (short by default: the fault tests strike inside windows of a few
    seconds; a predicate that costs requests to a server polls less often)."""
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def newest_sweep(store: Path) -> Path:
    return max((store / "sweeps").iterdir(), key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="session")
def small_base_models(tmp_path_factory) -> Path:
    """The base model of SMALL and ONE_LONG_TRIAL (one model and task family: one cache key), built once for
    the session by the driver's own function. Stores that get a copy (with_small_base) reuse it; the build
    itself, local and uploaded, is what the HF, S3 and deployment sweeps still test."""
    from orchestrator.config import compose_config
    from orchestrator.sweep import ensure_base_model

    root = tmp_path_factory.mktemp("base-store")
    lines: list[str] = []
    try:
        ensure_base_model(compose_config([*SMALL, f"store.root={root}"]), log=lines.append)
    except Exception as exc:
        raise AssertionError(f"the session's base model did not build: {exc}\n" + "\n".join(lines[-40:])) from exc
    return root / "base_models"


def with_small_base(store: Path, base_models: Path) -> Path:
    """`store` (created if absent) holding a copy of the session's base model."""
    shutil.copytree(base_models, store / "base_models", dirs_exist_ok=True)
    return store


@contextlib.contextmanager
def mlflow_server_at(root: Path, artifacts: str, backend: str | None = None, port: int | None = None,
                     admin_password: str | None = None, env: dict | None = None):
    """`mlflow server` on a localhost port (free unless given) with its database at `backend` (default: a
    sqlite file in `root`) and artifacts at `artifacts`. With `admin_password`, behind MLflow's basic-auth app
    (user `admin`, its users in root/auth.db)."""
    port = port or free_port()
    env = {**os.environ, **(env or {})}
    auth = []
    if admin_password:
        (root / "auth.ini").write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'auth.db'}\n"
                                       "admin_username = admin\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(root / "auth.ini"), MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                   MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))  # signs its CSRF tokens
        auth = ["--app-name", "basic-auth"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend or f"sqlite:///{root / 'server.db'}", "--artifacts-destination", artifacts,
         "--workers", "1", *auth],
        stdout=open(root / "server.log", "a"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", proc, root / "server.log", "mlflow server")
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
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


@pytest.fixture(scope="session")
def local_ray() -> str:
    """`cluster.address=...` of one Ray on this host that the drivers of the sweep, Hydra, vLLM and tracking-server
    tests share: each would otherwise start and stop a Ray of its own (~6 s, and its daemons' CPU, a driver). Three
    CPUs: two trials at once beside the pool. The embedded default's own local Ray is under test where it is the
    subject (test_faults' killed driver: its Ray dies with it); tests whose cluster is the subject start theirs."""
    with ray_cluster_at([{"num_cpus": 3}]) as cluster:
        yield f"cluster.address={cluster.address}"


@contextlib.contextmanager
def ray_cluster_at(nodes: list[dict], env: dict | None = None, dashboard_port: int | None = None):
    """`ray start` a head and workers on this host; each node dict: num_cpus, optional num_gpus and resources. `env` is
    every node's environment on top of this one's (as a pod's env; Ray's token authentication stays off unless
    it sets RAY_AUTH_MODE); with `dashboard_port` the head serves the dashboard and its job API there.
    Stopped afterwards by killing only its own processes (`ray stop` would stop every Ray on the host)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    port = free_port()
    cluster = RayCluster(f"127.0.0.1:{port}")
    dashboard = [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1"] if dashboard_port else \
        ["--include-dashboard=false"]
    joining: list[subprocess.Popen] = []
    try:
        for i, node in enumerate(nodes):
            temp_dir = tempfile.mkdtemp(prefix="rayn", dir="/tmp")
            cluster.temp_dirs.append(temp_dir)
            role = ["--head", f"--port={port}", *dashboard] if i == 0 else [f"--address={cluster.address}"]
            args = [*ray, "start", *role, f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
                    f"--num-cpus={node['num_cpus']}", "--disable-usage-stats"]
            if node.get("num_gpus"):  # Ray schedules them; the processes still run on CPU
                args.append(f"--num-gpus={node['num_gpus']}")
            if node.get("resources"):
                args.append(f"--resources={json.dumps(node['resources'])}")
            if i == 0:
                subprocess.run(args, env=env, check=True, capture_output=True)
            else:  # the workers join the head at once, not one after another (each start takes seconds)
                joining.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for proc in joining:
            output = proc.communicate()[0]
            assert proc.returncode == 0, f"ray start of a worker node exited {proc.returncode}:\n{output.decode()[-3000:]}"
        yield cluster
    finally:  # SIGTERM first; Ray's GCS and raylets can sit in a graceful shutdown for good, then SIGKILL
        for proc in joining:
            if proc.poll() is None:
                proc.kill()
        for d in cluster.temp_dirs:
            subprocess.run(["pkill", "-f", d], capture_output=True)
        deadline = time.time() + 2  # nothing is asserted after a test's cluster: a short grace, then SIGKILL
        while time.time() < deadline and any(subprocess.run(["pgrep", "-f", d], capture_output=True).returncode == 0
                                             for d in cluster.temp_dirs):
            time.sleep(0.5)
        from orchestrator.reaper import session_processes

        for d in cluster.temp_dirs:
            subprocess.run(["pkill", "-9", "-f", d], capture_output=True)
            for pid in session_processes(d, {os.getpid()}):  # agents: their titles hide the temp dir
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def postgres_at(database: str = "mlflow"):
    """A PostgreSQL 15 server of its own (initdb'd in a temp dir, password auth, localhost only); yields its
    SQLAlchemy URI. initdb and pg_ctl refuse root: they run as the `postgres` system user."""
    import secrets

    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
    root = Path(tempfile.mkdtemp(prefix="premem-pg-", dir="/tmp"))
    password = secrets.token_hex(16)
    (root / "pw").write_text(password)
    shutil.chown(root, "postgres")
    shutil.chown(root / "pw", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "mlflow",
                    "--auth=scram-sha-256", f"--pwfile={root / 'pw'}"], check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True,
                   capture_output=True)
    try:
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", database],
                       check=True, capture_output=True, env={**os.environ, "PGPASSWORD": password})
        yield f"postgresql://mlflow:{password}@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
