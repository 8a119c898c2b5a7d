"""A simulated GPU cluster on this host with the compose/KubeRay groups' shape: a GPU-less head, a node that
advertises 6 GPUs and `trainer: 6`, one that advertises 2 GPUs and `sampler: 2` (`ray start --num-gpus`: Ray
schedules by the count, the processes run on CPU). The driver refuses up front, in one line, a plan the cluster
cannot hold, and places a feasible one exactly as configured."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import SMALL, ray_cluster_at, with_small_base

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

NODES = [{"num_cpus": 2},  # head: the driver, the trials' controllers, the pool's router; no GPU
         {"num_cpus": 24, "num_gpus": 6, "resources": {"trainer": 6}},
         {"num_cpus": 8, "num_gpus": 2, "resources": {"sampler": 2}}]


@pytest.fixture(scope="module")
def gpu_cluster():
    with ray_cluster_at(NODES) as cluster:
        yield cluster


def nodes_by_resource(address: str) -> dict[str, str]:
    """node id -> 'head' | 'trainer' | 'sampler', read from the cluster itself."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps([(n['NodeID'], n['Resources']) for n in ray.nodes() if n['Alive']]))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return {node_id: next((k for k in ("trainer", "sampler") if k in res), "head")
            for node_id, res in json.loads(out.stdout.strip().splitlines()[-1])}


def compose_driver(cluster, store: Path, *overrides: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PREMEM_STORE_ROOT": str(store),
           "MLFLOW_TRACKING_URI": f"sqlite:///{store.parent / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-m", "orchestrator", "cluster=compose", "train=gpu", "sampler=vllm_gpu",
                           "sweep=gpu", f"cluster.address={cluster.address}",
                           *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_trial_the_cluster_cannot_hold_is_refused_in_one_line(gpu_cluster, tmp_path):
    """docs/cluster.md's compose command asks 8 training GPUs of a cluster with 6 (a silent hang before): exit 2,
    one line naming the field and what the cluster has, nothing written."""
    store = tmp_path / "store"
    result = compose_driver(gpu_cluster, store, timeout=180)
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: train.num_workers=8: a trial needs 8 workers of {CPU: 4, GPU: 1, trainer: 1}"), result.stderr
    assert "the cluster holds 6" in err[0] and "{CPU: 24, GPU: 6, trainer: 6}" in err[0]
    assert not (store / "sweeps").exists()


def test_a_feasible_plan_lands_where_configured(gpu_cluster, tmp_path, small_base_models):
    """Two train workers per trial on the trainer node, each with its own GPU id; the two sampler actors on
    the sampler node, GPUs 0 and 1; every record written. DeepSpeed ZeRO-3 in bf16 with every memory option
    (zero.Init, gradient checkpointing, optimizer and parameter offload) over gloo: the processes run on CPU."""
    store = with_small_base(tmp_path / "store", small_base_models)
    result = compose_driver(gpu_cluster, store, *SMALL, "sweep.grid.train.lr=[1e-3]", "train.num_workers=2",
                            "train.micro_batch_size=4", "train.global_batch_size=16", "train.dist_backend=gloo",
                            "sampler.backend=hf", "sampler.grade_workers=1", "sampler.max_new_tokens=64",
                            # every memory option of an 8B run, on the tiny model: train=gpu has bf16, ZeRO-3,
                            # zero_init and gradient checkpointing on
                            "train.offload_optimizer=cpu", "train.offload_param=cpu",
                            "+train.env.NCCL_SOCKET_IFNAME=lo", timeout=900)  # a multi-node trial's NCCL settings
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    role = nodes_by_resource(gpu_cluster.address)
    sweep = next((store / "sweeps").iterdir())
    placement = sweep / "analysis" / "placement"
    samplers = json.loads((placement / "samplers.json").read_text())
    assert sorted(role[s["node_id"]] for s in samplers) == ["sampler", "sampler"]
    assert sorted(s["gpu_ids"][0] for s in samplers) == ["0", "1"] and all(len(s["gpu_ids"]) == 1 for s in samplers)
    assert all(s["cuda_visible_devices"] == s["gpu_ids"][0] and s["device"] == "cpu" for s in samplers)
    (trial,) = [p for p in placement.iterdir() if p.name != "samplers.json"]
    workers = json.loads(trial.read_text())
    assert len(workers) == 2 and {role[w["node_id"]] for w in workers} == {"trainer"}
    assert all(len(w["gpu_ids"]) == 1 for w in workers) and len({w["gpu_ids"][0] for w in workers}) == 2
    assert all(w["nccl_env"] == {"NCCL_SOCKET_IFNAME": "lo"} for w in workers)  # train.env reaches every rank
    assert all(s["nccl_env"] == {} for s in samplers)  # and only the train workers
    assert "placement (analysis/placement/):" in result.stdout
    records = list((sweep / "records").rglob("*.original.parquet"))
    assert len(records) == 2  # 2 epochs, a checkpoint each, every one evaluated
    # each checkpoint holds the whole model (ZeRO-3's partitions gathered in 16 bits), in bf16
    from safetensors import safe_open

    base = next((store / "base_models").iterdir()) / "model.safetensors"
    for checkpoint in (sweep / "checkpoints").glob("*/step_*/model.safetensors"):
        with safe_open(str(checkpoint), "pt") as saved, safe_open(str(base), "pt") as original:
            assert {k: saved.get_slice(k).get_shape() for k in saved.keys()} == \
                {k: original.get_slice(k).get_shape() for k in original.keys()}
            assert {str(saved.get_tensor(k).dtype) for k in saved.keys()} == {"torch.bfloat16"}


SAMPLER_DEVICES = """
import json, ray
from workers.sample import SamplerActor
ray.init(address=%r, logging_level="ERROR")
actor = ray.remote(SamplerActor)
no_gpu = actor.options(num_cpus=1, num_gpus=0, resources={"sampler": 1}).remote("hf", 1)
one_gpu = actor.options(num_cpus=1, num_gpus=1, resources={"sampler": 1}).remote("hf", 1)
print(json.dumps(ray.get([no_gpu.ready.remote(), one_gpu.ready.remote()])))
"""


def test_a_sampler_without_gpus_on_a_gpu_node_sees_none(gpu_cluster):
    """sampler.gpus_per_actor=0 on a GPU node: Ray leaves CUDA_VISIBLE_DEVICES unset, so the actor would see
    every GPU and put its model on cuda:0 beside a trainer; it must see none."""
    out = subprocess.run([sys.executable, "-c", SAMPLER_DEVICES % gpu_cluster.address], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-3000:]
    no_gpu, one_gpu = json.loads(out.stdout.strip().splitlines()[-1])
    assert no_gpu["gpu_ids"] == [] and no_gpu["cuda_visible_devices"] == "" and no_gpu["device"] == "cpu"
    assert len(one_gpu["gpu_ids"]) == 1 and one_gpu["cuda_visible_devices"] == one_gpu["gpu_ids"][0]
