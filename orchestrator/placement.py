"""Can the cluster hold the sweep? The sampling pool and one trial's workers fitted into the nodes' resources
(pure: the nodes come from `ray.nodes()`), before anything is started.

Ray never refuses a request no node can hold: a Train worker group waits for its placement group for good and
Tune retries it without end. So the driver checks first and refuses in one line naming the field and what the
cluster has. The pool's sampler actors hold their resources for the whole sweep, so a trial must fit in what
they leave; trials beyond the first that fit only wait their turn.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Ray's bookkeeping resources that a request never names and a message never shows
_HIDDEN = ("memory", "object_store_memory")


class PlacementError(ValueError):
    """A trial or the pool that the cluster cannot hold; the message names the field and what it has."""


@dataclass
class Node:
    node_id: str
    address: str
    resources: dict[str, float]  # what is left to place into
    is_head: bool = False

    def fits(self, bundle: dict[str, float]) -> bool:
        return all(self.resources.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v > 0)

    def take(self, bundle: dict[str, float]) -> None:
        for k, v in bundle.items():
            self.resources[k] = self.resources.get(k, 0.0) - v


@dataclass
class Placement:
    """Where each request lands: node address per sampler actor and per train worker."""

    samplers: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    note: str = ""  # a pool that runs with fewer sampler actors than asked: what the driver tells the user


def nodes_from_ray(ray_nodes: list[dict]) -> list[Node]:
    """Alive nodes of `ray.nodes()` with their total resources, named by address (and node id where several
    nodes share one, as raylets on one host do)."""
    alive = [n for n in ray_nodes if n.get("Alive")]
    addresses = [n.get("NodeManagerAddress", "?") for n in alive]
    return [Node(n["NodeID"], a if addresses.count(a) == 1 else f"{a}/{n['NodeID'][:6]}", dict(n.get("Resources", {})),
                 "node:__internal_head__" in n.get("Resources", {}))
            for n, a in zip(alive, addresses)]


def worker_bundle(train: dict) -> dict[str, float]:
    """One train worker's request, as the trial's TorchTrainer makes it (orchestrator.schedule.run_trial)."""
    return {"CPU": float(train["cpus_per_worker"]), "GPU": float(train["gpus_per_worker"]) if train["use_gpu"] else 0.0,
            **{k: float(v) for k, v in train["resources_per_worker"].items()}}


def sampler_bundle(sampler: dict) -> dict[str, float]:
    """One sampler actor's request, as orchestrator.schedule.start_pool makes it."""
    return {"CPU": float(sampler["cpus_per_actor"]), "GPU": float(sampler["gpus_per_actor"]),
            **{k: float(v) for k, v in sampler["resources_per_actor"].items()}}


def _fit_some(nodes: list[Node], bundle: dict[str, float], count: int) -> list[str]:
    """Node addresses for as many of `count` copies of `bundle` as the nodes hold (first fit)."""
    placed = []
    for _ in range(count):
        node = next((n for n in nodes if n.fits(bundle)), None)
        if node is None:
            break
        node.take(bundle)
        placed.append(node.address)
    return placed


def _first_fit(nodes: list[Node], bundle: dict[str, float], count: int, one_node: bool) -> list[str] | None:
    """Node addresses for `count` copies of `bundle`, taken from `nodes` (first fit, as Ray packs); None when
    they do not fit. `one_node`: all on the same node (STRICT_PACK)."""
    if one_node:
        for node in nodes:
            if all(node.resources.get(k, 0.0) + 1e-9 >= v * count for k, v in bundle.items() if v > 0):
                for _ in range(count):
                    node.take(bundle)
                return [node.address] * count
        return None
    placed = []
    for _ in range(count):
        node = next((n for n in nodes if n.fits(bundle)), None)
        if node is None:
            return None
        node.take(bundle)
        placed.append(node.address)
    return placed


def _capacity(nodes: list[Node], bundle: dict[str, float]) -> int:
    """How many copies of `bundle` the nodes could still hold."""
    total = 0
    for node in nodes:
        per_node = [node.resources.get(k, 0.0) / v for k, v in bundle.items() if v > 0]
        total += int(min(per_node) + 1e-9) if per_node else 10**6
    return total


def _show(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items() if v > 0) + "}"


def describe(nodes: list[Node]) -> str:
    """What the cluster has, node by node (the resources a request can name)."""
    parts = []
    for node in nodes:
        shown = {k: v for k, v in sorted(node.resources.items())
                 if not k.startswith("node:") and k not in _HIDDEN and not k.startswith("accelerator_type")}
        parts.append(f"{node.address}{' (head)' if node.is_head else ''} {_show(shown) if shown else '{}'}")
    return "; ".join(parts)


def _copy(nodes: list[Node]) -> list[Node]:
    return [Node(n.node_id, n.address, dict(n.resources), n.is_head) for n in nodes]


def plan_placement(nodes: list[Node], sampler: dict, train: dict, placement_strategy: str = "PACK") -> Placement:
    """The pool's sampler actors, then one trial's workers, fitted into the nodes; PlacementError when either
    does not fit."""
    free = _copy(nodes)
    s_bundle = sampler_bundle(sampler)
    # The pool samples with the actors that are up (workers.sample.SamplingPool): fewer than asked is slower,
    # none is a sweep whose checkpoints are never evaluated.
    samplers = _fit_some(free, s_bundle, int(sampler["num_actors"]))
    wanted = (f"sampler.num_actors={sampler['num_actors']}: each sampler actor needs {_show(s_bundle)} "
              f"(sampler.cpus_per_actor, gpus_per_actor, resources_per_actor); the cluster holds {len(samplers)}")
    if not samplers:
        raise PlacementError(f"{wanted} — it has {describe(nodes)}")
    note = f"{wanted}: the pool samples with {len(samplers)}" if len(samplers) < int(sampler["num_actors"]) else ""
    w_bundle = worker_bundle(train)
    one_node = placement_strategy == "STRICT_PACK"
    beside_pool = _copy(free)
    workers = _first_fit(free, w_bundle, int(train["num_workers"]), one_node)
    if workers is None:
        where = " on one node (train.placement_strategy=STRICT_PACK)" if one_node else ""
        room = (max((_capacity([n], w_bundle) for n in beside_pool), default=0) if one_node
                else _capacity(beside_pool, w_bundle))
        raise PlacementError(
            f"train.num_workers={train['num_workers']}: a trial needs {train['num_workers']} workers of "
            f"{_show(w_bundle)}{where} (train.cpus_per_worker, use_gpu, resources_per_worker); beside the "
            f"sampling pool the cluster holds {room} — it has {describe(nodes)}")
    return Placement(samplers, workers, note)
