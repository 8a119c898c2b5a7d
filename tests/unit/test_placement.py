"""The driver's placement check: the sampling pool and one trial fitted into the cluster's nodes before anything
starts (Ray would wait for good), with one line naming the field and what the cluster has."""
import pytest

from orchestrator.config import compose_config
from orchestrator.placement import PlacementError, nodes_from_ray, plan_placement

HEAD = "node:__internal_head__"


def ray_node(node_id: str, cpus: float, gpus: float = 0, alive: bool = True, head: bool = False, **custom) -> dict:
    """A node as `ray.nodes()` lists it."""
    resources = {"CPU": cpus, "memory": 8e9, "object_store_memory": 2e9, f"node:10.0.0.{node_id}": 1.0, **custom}
    if gpus:
        resources["GPU"] = gpus
    if head:
        resources[HEAD] = 1.0
    return {"NodeID": node_id * 8, "NodeManagerAddress": f"10.0.0.{node_id}", "Alive": alive, "Resources": resources}


# docker/compose.yaml's cluster as the issue measured it: a GPU-less head, 6 trainer GPUs, 2 sampler GPUs
COMPOSE = [ray_node("1", 16, head=True), ray_node("2", 48, gpus=6, trainer=6), ray_node("3", 16, gpus=2, sampler=2)]


COMPOSE_GPU = ["cluster=compose", "train=gpu", "sampler=vllm_gpu", "sweep=gpu"]  # docs/cluster.md's command


def section(overrides: list[str], name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_config(overrides)[name])


def test_compose_group_on_six_trainer_gpus_is_refused_naming_workers_and_what_exists(monkeypatch):
    monkeypatch.setenv("PREMEM_STORE_ROOT", "/tmp/store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    train, sampler = section(COMPOSE_GPU, "train"), section(COMPOSE_GPU, "sampler")
    with pytest.raises(PlacementError) as refused:
        plan_placement(nodes_from_ray(COMPOSE), sampler, train)
    line = str(refused.value)
    assert line.startswith("train.num_workers=8: a trial needs 8 workers of {CPU: 4, GPU: 1, trainer: 1}")
    assert "the cluster holds 6" in line and "10.0.0.2 {CPU: 48, GPU: 6, trainer: 6}" in line
    assert "10.0.0.1 (head) {CPU: 16}" in line and "\n" not in line


def test_a_feasible_plan_places_trainers_and_samplers_on_their_own_nodes(monkeypatch):
    monkeypatch.setenv("PREMEM_STORE_ROOT", "/tmp/store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    overrides = [*COMPOSE_GPU, "train.num_workers=6"]
    plan = plan_placement(nodes_from_ray(COMPOSE), section(overrides, "sampler"), section(overrides, "train"))
    assert plan.workers == ["10.0.0.2"] * 6 and plan.samplers == ["10.0.0.3"] * 2


def test_samplers_hold_their_gpus_first_so_a_trial_needs_what_they_leave():
    one_box = [ray_node("1", 32, gpus=8, head=True)]
    sampler = {"cpus_per_actor": 2, "gpus_per_actor": 1, "resources_per_actor": {}, "num_actors": 2}
    train = {"cpus_per_worker": 2, "use_gpu": True, "gpus_per_worker": 1, "resources_per_worker": {}, "num_workers": 8}
    with pytest.raises(PlacementError, match=r"train.num_workers=8: .* beside the sampling pool the cluster holds 6"):
        plan_placement(nodes_from_ray(one_box), sampler, train)
    plan = plan_placement(nodes_from_ray(one_box), sampler, {**train, "num_workers": 6})
    assert len(plan.workers) == 6 and len(plan.samplers) == 2


def test_a_pool_with_no_placeable_actor_is_refused_and_a_partial_one_runs_with_a_note():
    sampler = {"cpus_per_actor": 4, "gpus_per_actor": 1, "resources_per_actor": {"gpu_sampler": 1}, "num_actors": 2}
    train = {"cpus_per_worker": 1, "use_gpu": True, "gpus_per_worker": 1, "resources_per_worker": {"trainer": 1}, "num_workers": 1}
    with pytest.raises(PlacementError) as refused:
        plan_placement(nodes_from_ray(COMPOSE), sampler, train)
    assert str(refused.value).startswith(
        "sampler.num_actors=2: each sampler actor needs {CPU: 4, GPU: 1, gpu_sampler: 1}")
    assert "the cluster holds 0" in str(refused.value)
    # three actors, two `sampler` units: the pool samples with two (slower, never stuck)
    plan = plan_placement(nodes_from_ray(COMPOSE), {**sampler, "resources_per_actor": {"sampler": 1}, "num_actors": 3},
                          train)
    assert plan.samplers == ["10.0.0.3"] * 2 and plan.note.endswith("the cluster holds 2: the pool samples with 2")


def test_strict_pack_keeps_a_trial_on_one_node_or_refuses():
    nodes = [ray_node("1", 8, head=True), ray_node("2", 16, gpus=4), ray_node("3", 16, gpus=4)]
    sampler = {"cpus_per_actor": 1, "gpus_per_actor": 0, "resources_per_actor": {}, "num_actors": 1}
    train = {"cpus_per_worker": 2, "use_gpu": True, "gpus_per_worker": 1, "resources_per_worker": {}, "num_workers": 6}
    assert sorted(set(plan_placement(nodes_from_ray(nodes), sampler, train, "PACK").workers)) == ["10.0.0.2", "10.0.0.3"]
    with pytest.raises(PlacementError, match=r"on one node \(train.placement_strategy=STRICT_PACK\).* holds 4"):
        plan_placement(nodes_from_ray(nodes), sampler, train, "STRICT_PACK")


def test_dead_nodes_do_not_count():
    nodes = [ray_node("1", 8, head=True), ray_node("2", 16, gpus=8, alive=False)]
    train = {"cpus_per_worker": 1, "use_gpu": True, "gpus_per_worker": 1, "resources_per_worker": {}, "num_workers": 1}
    sampler = {"cpus_per_actor": 1, "gpus_per_actor": 0, "resources_per_actor": {}, "num_actors": 1}
    with pytest.raises(PlacementError, match="the cluster holds 0"):
        plan_placement(nodes_from_ray(nodes), sampler, train)


def test_where_things_ran_is_one_line_a_node():
    from orchestrator.schedule import placement_text

    samplers = [{"node_id": "bbbbbbbb1", "gpu_ids": ["0"]}, {"node_id": "bbbbbbbb1", "gpu_ids": ["1"]}]
    trials = {"t00": [{"node_id": "aaaaaaaa1", "gpu_ids": [str(i)]} for i in range(2)],
              "t01": [{"node_id": "cccccccc1", "gpu_ids": []}]}
    assert placement_text(samplers, trials).splitlines() == [
        "placement (analysis/placement/):", "  node bbbbbbbb: samplers x2 (GPU 0,1)", "  node aaaaaaaa: t00 x2 (GPU 0,1)",
        "  node cccccccc: t01 x1"]
