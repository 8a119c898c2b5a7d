"""DeepSpeed's JIT-compiled CPU communication op, built or loaded by the driver before any trial starts."""
from __future__ import annotations

import os
import time
from pathlib import Path


def prepare_deepspeed_ops(log=print, stale_after_s: float = 600.0) -> None:
    """Build (the first time) or load DeepSpeed's JIT-compiled CPU communication op in this process.

    Run by the driver before any trial starts, so that trial workers find the op built instead of racing to
    build it. torch's extension builder guards a build with a lock file that a killed build leaves behind,
    and every later build then waits on it forever: a lock that outlives any real build is removed.
    """
    import torch

    if not torch.cuda.is_available():  # this process only (Ray is up): DeepSpeed would warn it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops import __compatible_ops__
    from torch.utils.cpp_extension import _get_build_directory

    try:
        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    except (ValueError, AttributeError):  # accelerators without this op (CUDA uses NCCL)
        return
    if builder is None or not __compatible_ops__.get(builder.NAME, False):
        return
    lock = Path(_get_build_directory(builder.name, verbose=False)) / "lock"
    if lock.exists():
        log(f"DeepSpeed: waiting for another build of {builder.name} to finish ({lock})")
    while lock.exists() and time.time() - lock.stat().st_mtime < stale_after_s:
        time.sleep(5)
    if lock.exists():
        log(f"DeepSpeed: removing a stale build lock left by an interrupted build: {lock}")
        lock.unlink(missing_ok=True)
    started = time.perf_counter()
    builder.load(verbose=False)
    if time.perf_counter() - started > 10:
        log(f"DeepSpeed: built {builder.name} in {time.perf_counter() - started:.0f}s (cached for later runs)")
