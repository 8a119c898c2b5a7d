"""The KubeRay RayJob's own entrypoint, submitted with `ray job submit` to a local three-node Ray cluster set up
the way docker/kuberay/ sets up its pods: Ray's token authentication on, the store on S3 (moto), MLflow behind
its basic-auth app, and every credential in the nodes' environment only. The tracking URI even carries the
password in it (as a careless user might write it). The sweep must finish, and no credential may be found
anywhere afterwards: not in the bucket (store and MLflow artifacts), not in any node's Ray logs (the job's
driver output included), not in the tracking server's databases or log."""
from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import yaml
from mlflow import MlflowClient

from store import io
from tests.conftest import REPO, free_port, make_bucket
from tests.integration.conftest import FIT_OR_WHY, SMALL, mlflow_server_at, ray_cluster_at

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# what the entrypoint adds on this CPU machine: the RayJob names the GPU grid (train=gpu sampler=vllm_gpu sweep=gpu)
# and later choices on the command line win. One trial: what is under test is the deployment (token auth, S3,
# basic-auth MLflow, no leaked credential), not the grid.
CPU = ["train=cpu", "sampler=hf", *SMALL, "sweep.grid.train.lr=[1e-3]"]


def ray_cli(*args: str, env: dict, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def where(data: bytes, name: str, secret_values: dict[str, str]) -> list[str]:
    """`WHAT in NAME: ...context...` for each secret value in `data` (the value itself masked)."""
    found = []
    for what, value in secret_values.items():
        at = data.find(value.encode())
        if at >= 0:
            context = data[max(0, at - 120):at + len(value) + 40].replace(value.encode(), b"***")
            found.append(f"{what} in {name}: {context.decode(errors='replace')!r}")
    return found


def files_holding(secret_values: dict[str, str], roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found += where(path.read_bytes(), str(path), secret_values)
    return found


@pytest.fixture(scope="module")
def deployed(s3_server, tmp_path_factory, small_base_models):
    secret_values = {"AWS_SECRET_ACCESS_KEY": secrets.token_hex(20), "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
                     "MLflow password": secrets.token_hex(16), "Ray token": secrets.token_hex(24)}
    bucket = make_bucket("premem-deploy")
    # the session's base model in the bucket's store (building one into a bucket is test_object_store's)
    for model in small_base_models.iterdir():
        io.upload_dir(model, f"{bucket}/store/base_models/{model.name}")
    aws = {"AWS_ACCESS_KEY_ID": secret_values["AWS_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": secret_values["AWS_SECRET_ACCESS_KEY"]}
    mlflow_root = tmp_path_factory.mktemp("mlflow-auth")
    job = yaml.safe_load((REPO / "docker/kuberay/rayjob.yaml").read_text())["spec"]
    with mlflow_server_at(mlflow_root, f"{bucket}/mlartifacts", admin_password=secret_values["MLflow password"],
                          env=aws) as mlflow_uri:
        host = mlflow_uri.removeprefix("http://")
        pod_env = {  # what the manifests' env and KubeRay's authOptions give every pod
            **aws, "PREMEM_STORE_ROOT": f"{bucket}/store",
            "MLFLOW_TRACKING_URI": f"http://admin:{secret_values['MLflow password']}@{host}",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secret_values["Ray token"],
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        dashboard = free_port()
        # One `sampler` unit for the pool's two actors: the one that cannot be placed must never hold a checkpoint.
        nodes = [{"num_cpus": 1}, {"num_cpus": 2, "resources": {"trainer": 1}},
                 {"num_cpus": 2, "resources": {"sampler": 1}}]
        with ray_cluster_at(nodes, env=pod_env, dashboard_port=dashboard) as cluster:
            address = f"http://127.0.0.1:{dashboard}"
            submitter = {**os.environ, "RAY_AUTH_TOKEN": secret_values["Ray token"], "RAY_AUTH_MODE": "token"}
            for _ in range(60):  # the dashboard's job API comes up a little after `ray start` returns
                if ray_cli("job", "list", f"--address={address}", env=submitter, timeout=120).returncode == 0:
                    break
                time.sleep(1)
            # Ray's token authentication is on: without the token the job API refuses
            stranger = {k: v for k, v in submitter.items() if k != "RAY_AUTH_TOKEN"}
            stranger["HOME"] = str(tmp_path_factory.mktemp("home"))  # no ~/.ray/auth_token either
            refused = ray_cli("job", "list", f"--address={address}", env=stranger, timeout=120)
            entrypoint = f"{job['entrypoint']} {shlex.join(CPU)}"
            for _ in range(30):  # the job API answers before the head's job agent is up (slower on a loaded host)
                submitted = ray_cli("job", "submit", f"--address={address}", "--submission-id=premem-deploy", "--",
                                    *shlex.split(entrypoint), env=submitter)
                if "No available agent to submit job" not in submitted.stderr:
                    break
                time.sleep(1)
            status = ray_cli("job", "status", f"--address={address}", "premem-deploy", env=submitter, timeout=120)
            client = MlflowClient(mlflow_uri)
            os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=secret_values["MLflow password"])
            try:
                experiment = client.get_experiment_by_name("premem")
                runs = client.search_runs([experiment.experiment_id]) if experiment else []
            finally:
                for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    os.environ.pop(name, None)
            s3, name = boto3.client("s3"), bucket.removeprefix("s3://")
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name)
                    for o in page.get("Contents", [])]
            objects = {key: s3.get_object(Bucket=name, Key=key)["Body"].read() for key in keys}
            ray_logs = [Path(d) for d in cluster.temp_dirs]
            found = files_holding(secret_values, [mlflow_root, *ray_logs])
            found += [line for key, data in objects.items() for line in where(data, f"{bucket}/{key}", secret_values)]
        yield dict(refused=refused, submitted=submitted, status=status, runs=runs, objects=objects,
                   found=found, mlflow_uri=mlflow_uri)


def test_the_rayjob_entrypoint_finishes_the_sweep_on_a_token_auth_cluster(deployed):
    submitted = deployed["submitted"]
    assert submitted.returncode == 0, submitted.stdout[-5000:] + submitted.stderr[-3000:]
    assert "premem-deploy' succeeded" in deployed["status"].stdout + deployed["status"].stderr
    assert FIT_OR_WHY.search(submitted.stdout)
    assert "base model: reusing s3://premem-deploy/store/base_models/" in submitted.stdout  # the seeded one
    records = [k for k in deployed["objects"] if k.startswith("store/sweeps/") and "/records/" in k]
    assert len(records) == 2  # 1 trial x 2 epochs, in the bucket
    runs = deployed["runs"]
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


def test_the_cluster_refuses_a_client_without_the_token(deployed):
    refused = deployed["refused"]
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()


def test_no_credential_anywhere_in_store_logs_or_tracking_database(deployed):
    assert deployed["found"] == []
    # the stored config names the tracking server without its user (the driver took it out of the URI)
    stored = [yaml.safe_load(data) for key, data in deployed["objects"].items()
              if key.startswith("store/sweeps/") and key.endswith("/config.yaml")]
    assert len(stored) == 1 and stored[0]["tracking"]["uri"] == deployed["mlflow_uri"]


def test_the_mlflow_images_entrypoint_serves_behind_basic_auth(s3_server, tmp_path):
    """docker/mlflow.Dockerfile's entrypoint, run here as the image runs it: the secrets from files,
    PostgreSQL for runs and users, artifacts in the object store; a client needs the password."""
    import requests

    from tests.integration.conftest import postgres_at

    bucket = make_bucket("premem-mlflow-image")
    password = secrets.token_hex(12)
    (tmp_path / "admin").write_text(password)
    (tmp_path / "flask").write_text(secrets.token_hex(16))
    port = free_port()
    with postgres_at("mlflow") as database:
        db = re.match(r"postgresql://(\w+):(\w+)@([\d.]+):(\d+)/(\w+)", database)
        (tmp_path / "pg").write_text(db.group(2))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "PGHOST": db.group(3), "PGPORT": db.group(4), "PGUSER": db.group(1), "PGDATABASE": db.group(5),
               "PGPASSWORD_FILE": str(tmp_path / "pg"), "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
               "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(tmp_path / "admin"),
               "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(tmp_path / "flask"),
               "MLFLOW_ARTIFACTS_DESTINATION": f"{bucket}/mlartifacts"}
        log = tmp_path / "server.log"
        server = subprocess.Popen(["sh", REPO / "docker/entrypoint.sh", "sh", REPO / "docker/mlflow-server.sh",
                                   "--port", str(port), "--workers", "1"], env=env, stdout=open(log, "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
        try:
            from tests.conftest import wait_for_http

            uri = f"http://127.0.0.1:{port}"
            wait_for_http(f"{uri}/health", server, log, "the image's mlflow server")
            api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
            assert requests.get(api, timeout=30).status_code == 401
            assert requests.get(api, auth=("admin", password), timeout=30).status_code == 200
            os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
            try:  # a run with an artifact: it lands in the bucket through the server
                client = MlflowClient(uri)
                run = client.create_run(client.create_experiment("image"))
                (tmp_path / "a.txt").write_text("artifact")
                client.log_artifact(run.info.run_id, str(tmp_path / "a.txt"))
            finally:
                for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    os.environ.pop(name, None)
            keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="premem-mlflow-image").get("Contents", [])]
            assert any(k.endswith("/a.txt") for k in keys)
            assert password not in log.read_text() and db.group(2) not in log.read_text()
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
