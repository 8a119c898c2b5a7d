"""Code that runs inside vLLM's worker processes, loaded by qualified name through `worker_extension_cls`.

Kept apart from `workers.backends.vllm` so the worker imports only this file and vLLM.
"""
from __future__ import annotations

import os
import signal
import threading
import time


class WeightSwap:
    """Mixed into vLLM's Worker: load a new checkpoint's weights into the running model, in place."""

    def swap_weights(self, checkpoint_dir: str, refresh_tied: bool = True) -> int:
        """Reload every weight from `checkpoint_dir`; returns how many layers had derived state rebuilt.
        (`refresh_tied=False` skips that step: tests/integration/test_vllm_backend.py shows what it costs.)"""
        # the Worker's own reload_weights: it enters set_current_vllm_config, which the layers' weight loaders
        # and post-load processing read (vllm/v1/worker/gpu_worker.py); the model runner's does not
        self.reload_weights(weights_path=checkpoint_dir, is_checkpoint_format=True)
        return refresh_tied_layers(self.model_runner.get_model()) if refresh_tied else 0

    def exit_with(self, owner_pid: int, interval_s: float = 1.0) -> int:
        """End this process soon after `owner_pid` (the sampler actor) is gone; returns this process's pid.

        vLLM runs its engine in a child process that a SIGKILLed sampler actor cannot stop, and that would
        hold its memory and threads for good; a parent-death watch is the one thing that outlives the kill."""
        def watch() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    os.kill(owner_pid, 0)
                except ProcessLookupError:
                    os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="premem-exit-with-owner", daemon=True).start()
        return os.getpid()


def refresh_tied_layers(model) -> int:
    """Redo the post-load processing of layers whose weight is another layer's (a tied output head).

    A reload processes the layers whose weights are in the checkpoint. A tied head has none of its own, so
    its derived state (on CPU, a prepacked copy of the embedding for the GEMM kernel) would keep the old
    weights while the embedding it shares has the new ones.
    """
    owners: dict[int, list] = {}
    for module in model.modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is not None:
            owners.setdefault(id(weight), []).append(module)
    refreshed = 0
    for modules in owners.values():
        if len(modules) < 2:
            continue
        for module in modules:
            method = getattr(module, "quant_method", None)
            if method is not None and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(module)
                refreshed += 1
    return refreshed
