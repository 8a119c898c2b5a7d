"""`make gpu-smoke`: the acceptance run on a GPU box, about ten minutes, written to one JSON file.

1. what is installed: torch and its CUDA, the GPUs, vLLM with its compiled ops loaded (`vllm._C`), FlashInfer,
   DeepSpeed;
2. the small sweep on the GPUs: DeepSpeed bf16 ZeRO-3 (zero.Init, gradient checkpointing) with 2 or more train
   workers over NCCL where 3 or more GPUs exist, the vLLM pool (tensor_parallel_size 1) on the others; on a
   two-GPU box one worker and one sampler; on a one-GPU box both share the GPU;
3. the in-place weight swap against a fresh engine on the sweep's own checkpoints (greedy completions equal,
   ref NLL within bf16 noise), and the bench figures: completions/s, swap and cold-start seconds;
4. where 3 or more GPUs exist, the sweep's checkpoints evaluated again by an engine of tensor_parallel_size 2.

Extra arguments are Hydra overrides for the sweep (e.g. model=hf model.path=/models/llama3-8b). The JSON goes
to $OUT/gpu_smoke.json where OUT is set (the device tool's folder), else runs/gpu-smoke/gpu_smoke.json. Exits 2
with one line where no GPU is visible, 1 when a check failed.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SMALL = ["sweep=small", "task.n_train=256", "task.n_test=128", "train.epochs=2", "train.global_batch_size=64",
         "train.micro_batch_size=8", "sampler.k=4", "sampler.max_new_tokens=128", "model.base_stage.n_examples=2000",
         "model.base_stage.epochs=2"]


@dataclass(frozen=True)
class GpuPlan:
    """How the smoke run splits the box's GPUs between training and the sampling pool."""

    train_workers: int
    gpus_per_worker: float
    sampler_actors: int
    gpus_per_actor: float
    tensor_parallel_2: bool  # evaluate again with an engine over two GPUs

    def overrides(self, gpus: int) -> list[str]:
        shared = self.gpus_per_actor < 1
        return [f"train.num_workers={self.train_workers}", f"train.gpus_per_worker={self.gpus_per_worker:g}",
                f"sampler.num_actors={self.sampler_actors}", f"sampler.gpus_per_actor={self.gpus_per_actor:g}",
                f"cluster.num_gpus={gpus}",
                # a shared GPU: vLLM takes its share of the memory, training the rest
                *(["sampler.gpu_memory_utilization=0.4"] if shared else [])]


def gpu_plan(gpus: int) -> GpuPlan:
    """Training gets the largest power of two that leaves a GPU to sample (so the global batch divides)."""
    if gpus < 1:
        raise ValueError("gpu-smoke needs a GPU; none visible")
    if gpus == 1:
        return GpuPlan(1, 0.5, 1, 0.5, False)
    workers = 1
    while workers * 2 <= gpus - 1:
        workers *= 2
    return GpuPlan(workers, 1.0, gpus - workers, 1.0, gpus >= 3)


def installed() -> dict:
    """Versions, and whether vLLM's and FlashInfer's compiled code loads (not just the Python packages)."""
    import importlib.metadata as md

    import torch

    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    for package in ("vllm", "flashinfer-python", "flashinfer-cubin", "deepspeed", "ray", "transformers"):
        try:
            facts[package] = md.version(package)
        except md.PackageNotFoundError:
            facts[package] = None
    try:
        import vllm._C  # noqa: F401  the compiled ops: fails when vLLM was built for another torch/CUDA

        facts["vllm_compiled_ops"] = "loaded"
    except Exception as exc:
        facts["vllm_compiled_ops"] = f"{type(exc).__name__}: {exc}"
    return facts


def run_sweep(store: Path, plan: GpuPlan, gpus: int, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "orchestrator", "train=gpu", "sampler=vllm_gpu", *SMALL, *plan.overrides(gpus),
            f"store.root={store}", *extra]
    print("gpu-smoke: " + " ".join(args[3:]), flush=True)
    started = time.perf_counter()
    code = subprocess.call(args)
    sweeps = store / "sweeps"
    newest = max(sweeps.iterdir(), key=lambda p: p.stat().st_mtime) if sweeps.is_dir() else None
    return {"exit_code": code, "wall_s": time.perf_counter() - started, "sweep_dir": str(newest) if newest else None}


def engine_checks(sweep_dir: Path, repeats: int = 3) -> dict:
    """On the GPU: cold start, in-place swaps between the sweep's checkpoints, the swapped engine against a fresh
    one on the same weights, and sampling throughput at the sweep's settings."""
    import numpy as np

    from workers.backends import SamplingSettings
    from workers.backends.vllm import VLLMBackend
    from workers.tasks import PromptFormat
    from workers.tasks.synthetic import make_examples

    checkpoints = sorted(str(p) for p in (sweep_dir / "checkpoints").glob("*/step_*") if (p / "config.json").is_file())
    first, last = checkpoints[0], checkpoints[-1]
    fmt = PromptFormat()
    examples = make_examples(11, 256, "gpu-smoke")
    prompts, targets = [fmt.prompt(e.question) for e in examples], [fmt.target(e.solution) for e in examples]
    greedy = SamplingSettings(k=1, temperature=0.0, top_p=1.0, max_new_tokens=128)
    sampled = SamplingSettings(k=8, temperature=0.8, top_p=0.95, max_new_tokens=128)

    engine = VLLMBackend(gpu_memory_utilization=0.4)
    started = time.perf_counter()
    engine.load(first)
    cold_start_s = time.perf_counter() - started
    swaps = []
    for i in range(repeats):
        started = time.perf_counter()
        engine.load(last if i % 2 == 0 else first)
        swaps.append(time.perf_counter() - started)
    engine.load(last)
    swapped = engine.sample_and_score(prompts, greedy, prompts, targets)
    started = time.perf_counter()
    completions = engine.sample(prompts, sampled)
    completions_per_s = sum(len(c) for c in completions) / (time.perf_counter() - started)
    builds = engine.builds
    engine.close()
    fresh_engine = VLLMBackend(gpu_memory_utilization=0.4)
    fresh_engine.load(last)
    fresh = fresh_engine.sample_and_score(prompts, greedy, prompts, targets)
    fresh_engine.close()
    nll_diff = float(np.nanmax(np.abs(swapped[1] - fresh[1])))
    greedy_match = float(np.mean([a == b for a, b in zip(swapped[0], fresh[0])]))
    swap_s = statistics.median(swaps)
    return {"checkpoints": [first, last], "engine_builds": builds, "cold_start_s": cold_start_s, "swap_s": swap_s,
            "swap_runs_s": swaps, "swap_fraction_of_cold_start": swap_s / cold_start_s,
            "completions_per_s": completions_per_s, "greedy_match_swapped_vs_fresh": greedy_match,
            "ref_nll_max_abs_diff_swapped_vs_fresh": nll_diff,
            # bf16 kernels may batch differently between engines: equal text on nearly all prompts, NLL close
            "ok": builds == 1 and greedy_match >= 0.95 and nll_diff < 0.05}


def tensor_parallel_2(sweep_dir: Path) -> dict:
    """The sweep's checkpoints evaluated again by one engine over two GPUs (python -m orchestrator.reeval)."""
    args = [sys.executable, "-m", "orchestrator.reeval", str(sweep_dir), "sampler.variant=tp2",
            "sampler.tensor_parallel_size=2", "sampler.gpus_per_actor=2", "sampler.num_actors=1"]
    started = time.perf_counter()
    code = subprocess.call(args)
    return {"exit_code": code, "wall_s": time.perf_counter() - started, "ok": code == 0}


def main(argv: list[str]) -> int:
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 1:
        print("error: gpu-smoke needs a GPU: torch sees no CUDA device (no GPU here, or a CPU build of torch)",
              file=sys.stderr)
        return 2
    plan = gpu_plan(gpus)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("runs/gpu-smoke")
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"plan": asdict(plan), "installed": installed()}
    print(f"gpu-smoke: {gpus} GPU(s): {plan}", flush=True)
    report["sweep"] = run_sweep(out_dir / "store", plan, gpus, argv)
    sweep_dir = Path(report["sweep"]["sweep_dir"]) if report["sweep"]["sweep_dir"] else None
    if sweep_dir is not None and (sweep_dir / "checkpoints").is_dir():
        try:
            report["engine"] = engine_checks(sweep_dir)
        except Exception as exc:  # reported, not raised: the JSON is what comes back from the box
            report["engine"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if plan.tensor_parallel_2 and report["sweep"]["exit_code"] == 0:
            report["tensor_parallel_2"] = tensor_parallel_2(sweep_dir)
    ok = (report["installed"]["vllm_compiled_ops"] == "loaded" and report["sweep"]["exit_code"] == 0
          and report.get("engine", {}).get("ok", False) and report.get("tensor_parallel_2", {"ok": True})["ok"])
    report["ok"] = ok
    path = out_dir / "gpu_smoke.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    engine = report.get("engine", {})
    print(f"gpu-smoke: {'PASSED' if ok else 'FAILED'}; sweep exit {report['sweep']['exit_code']} in "
          f"{report['sweep']['wall_s']:.0f}s; vLLM ops {report['installed']['vllm_compiled_ops']}; "
          + (f"completions/s {engine['completions_per_s']:.0f}, swap {engine['swap_s']:.2f}s vs cold start "
             f"{engine['cold_start_s']:.1f}s, greedy match {engine['greedy_match_swapped_vs_fresh']:.3f}; "
             if "swap_s" in engine else f"engine checks: {engine.get('error', 'not run')}; ")
          + f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
