"""`make gpu-smoke`: what to run first on a new GPU machine or cluster node.

The small sweep with DeepSpeed in bf16 (train=gpu) and the vLLM pool (sampler=vllm_gpu) on the GPUs this
machine sees, split between training (a power of two, so the global batch divides) and the sampling pool (the
rest), then the evaluation benchmark (python -m bench.evaluation) on what that sweep measured. Extra arguments
are Hydra overrides for the sweep (e.g. model=hf model.path=/models/llama3-8b). Exits 2 with one line where no
GPU is visible.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SMALL = ["sweep=small", "task.n_train=256", "task.n_test=128", "train.epochs=2", "train.global_batch_size=64",
         "train.micro_batch_size=8", "sampler.k=4", "sampler.max_new_tokens=128"]


def gpu_split(gpus: int) -> tuple[int, int]:
    """(train workers, sampler actors): training gets the largest power of two that leaves a GPU to sample."""
    if gpus < 2:
        raise ValueError(f"gpu-smoke needs 2 GPUs or more (one to train, one to sample); {gpus} visible")
    workers = 1
    while workers * 2 <= gpus - 1:
        workers *= 2
    return workers, gpus - workers


def main(argv: list[str]) -> int:
    import torch

    gpus = torch.cuda.device_count()
    try:
        workers, actors = gpu_split(gpus)
    except ValueError as exc:
        why = "" if gpus else " (torch sees no CUDA device: no GPU here, or a CPU build of torch)"
        print(f"error: {exc}{why}", file=sys.stderr)
        return 2
    print(f"gpu-smoke: {gpus} GPUs: {workers} train workers (DeepSpeed bf16), {actors} vLLM sampler actors")
    sweep = [sys.executable, "-m", "orchestrator", "train=gpu", "sampler=vllm_gpu", *SMALL,
             f"train.num_workers={workers}", f"sampler.num_actors={actors}", f"cluster.num_gpus={gpus}", *argv]
    code = subprocess.call(sweep)
    sweeps = Path("runs/sweeps")
    if code != 0 or not sweeps.is_dir():
        return code
    newest = max(sweeps.iterdir(), key=lambda p: p.stat().st_mtime)  # the sweep just run: the bench reads its timings
    return subprocess.call([sys.executable, "-m", "bench.evaluation", "--repeats", "3", "--sweep-dir", str(newest)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
