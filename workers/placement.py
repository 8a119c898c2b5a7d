"""Where a worker process runs, as Ray placed it: its node and GPUs (the Ray edge of workers/)."""
from __future__ import annotations

import os


def hide_unassigned_gpus() -> None:
    """A process that Ray gave no GPU sees none.

    Ray sets CUDA_VISIBLE_DEVICES only for a process that holds GPUs; one that holds none (a sampler actor
    with sampler.gpus_per_actor=0 on a GPU node) would otherwise see every GPU of the node, and torch would
    put its model on cuda:0, beside a trainer's rank 0. Call before anything initialises CUDA."""
    import ray

    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def here(device: str) -> dict:
    """This process's node, the GPU ids Ray assigned it, what CUDA is shown, and the torch device it uses."""
    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": str(device),
            "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")},  # train.env
            "pid": os.getpid()}
