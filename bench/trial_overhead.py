"""Benchmark: the fixed cost of one trial (start-up + setup) beside a bare TorchTrainer, in one run.

For each variant, in a process of its own with its own local Ray (a variant changes how Ray is started):
(a) a bare TorchTrainer whose train loop is empty (fit's wall time; start-up = fit start to the loop entered);
(b) the default sweep's first trial, run as the sweep runs it (`schedule.trainable` in a Tune trial, its Train V2
    TorchTrainer, DeepSpeed on CPU) over the cached base model, its phases from `schedule.trial_timings`
    (start-up, setup, train compute, checkpoint, other); a stand-in pool takes its checkpoints unevaluated, so
    no sampler shares the CPUs (inside a sweep the pool does, and every phase is slower).
Variants (VARIANT_ENV): the settings of `schedule.job_env` off one by one. Medians of --repeats; prints a
table and writes BENCH_TRIAL_OUT (default bench_trial.json).
    python -m bench.trial_overhead [--repeats 3] [--store /tmp/premem-bench-trial] [--variants ray-defaults,head,keep-imports,now]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PHASES = ("startup_seconds", "setup_seconds", "train_compute_seconds", "checkpoint_seconds", "other_seconds",
          "trial_seconds", "tune_trial_seconds")


def empty_loop(config: dict) -> None:
    Path(config["entered_file"]).write_text(repr(time.time()))  # V2 keeps no metrics without a checkpoint


def bare_trainer() -> dict:
    """One bare TorchTrainer (one CPU worker, gloo, empty loop): its wall time and its start-up."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    entered_file = Path(f"/tmp/premem-bench-bare/entered-{time.time_ns()}")
    entered_file.parent.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(empty_loop, train_loop_config={"entered_file": str(entered_file)},
                           torch_config=TorchConfig(backend="gloo"),
                           scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False,
                                                                  resources_per_worker={"CPU": 1}),
                           run_config=ray.train.RunConfig(name=f"bare-{time.time_ns()}",
                                                          storage_path="/tmp/premem-bench-bare"))
    started = time.time()
    trainer.fit()
    ended = time.time()
    return {"startup_seconds": float(entered_file.read_text()) - started, "trial_seconds": ended - started}


class StandInPool:
    """Takes the trial's checkpoints and evaluates none: the bench measures training's side only."""

    def submit(self, job) -> None:
        pass

    def room(self) -> float:  # the trial starts at once: nothing waits for evaluation
        return 0.0


def real_trial(store: str, repeat: int, variant: str) -> dict:
    """The default sweep's first trial as the sweep runs it (`schedule.trainable` in a Tune trial), in a sweep
    directory of its own; its phases as `schedule.trial_timings` splits them, and Tune's wall time."""
    import ray
    import ray.tune

    from orchestrator import schedule
    from orchestrator.sweep import ensure_base_model, plan_sweep
    from store.layout import sweep_paths

    try:
        from orchestrator.jobs import trial_jobs
    except ImportError:  # before orchestrator/jobs.py
        trial_jobs = schedule.trial_jobs
    cfg, _, specs = plan_sweep([f"store.root={store}"])
    paths = sweep_paths(store, f"bench-trial-{variant}-{repeat}-{time.time_ns()}")
    job, template = trial_jobs(specs[0], paths, ensure_base_model(cfg, log=lambda line: None))
    pool = ray.remote(num_cpus=0)(StandInPool).options(name=schedule.pool_name(), namespace=schedule.NAMESPACE,
                                                get_if_exists=True).remote()
    trainable = ray.tune.with_resources(schedule.trainable, {"cpu": 0, "memory": schedule.TRIAL_DRIVER_MEMORY,
                                                             **schedule.HEAD_NODE})
    tuner = ray.tune.Tuner(trainable, param_space={"trial": {"job": job, "template": template,
                                                             "train_cfg": specs[0].config.train}},
                           run_config=ray.tune.RunConfig(name="tune", storage_path=paths.sweep, verbose=0))
    started = time.time()
    result = tuner.fit()[0]
    ray.kill(pool)  # held until here: a named actor lives as long as a handle to it
    if result.error:
        raise RuntimeError(f"the bench trial failed: {result.error}")
    return {**{k: result.metrics[k] for k in PHASES if k in result.metrics},
            "tune_trial_seconds": time.time() - started}


# Each variant: environment variables its driver starts local Ray with (every Ray process inherits them);
# schedule.job_env keeps a value set here. `ray-defaults`: Train V2 as it comes; `head`: as before issue 37
# (the controller's poll at 0.2 s); `now`: schedule.job_env as it is.
VARIANT_ENV = {
    "ray-defaults": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",
                     "RAY_TRAIN_METRICS_ENABLED": "1"},
    "head": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1", "RAY_TRAIN_METRICS_ENABLED": "1"},
    "keep-imports": {"PREMEM_KEEP_OPTIONAL_IMPORTS": "1"},  # workers import mlflow and scikit-learn again
    "now": {},
}


def one_variant(variant: str, repeats: int, store: str) -> dict:
    """Both measurements, `repeats` times each, on a local Ray started for `variant`."""
    import ray

    from orchestrator import schedule

    try:
        from workers.deepspeed_ops import prepare_deepspeed_ops
    except ImportError:  # before workers/deepspeed_ops.py
        from workers.deepspeed_ops import prepare_deepspeed_ops
    started = time.time()
    schedule.init_ray(None, None, None, Path(store) / "bench-logs")
    prepare_deepspeed_ops(log=lambda line: None)
    out: dict = {"ray_start_seconds": time.time() - started,
                 "env": {k: os.environ.get(k) for k in schedule.job_env()}, "bare": [], "trial": []}
    for i in range(repeats):  # interleaved: a slow spell of the shared machine hits both alike
        out["bare"].append(bare_trainer())
        out["trial"].append(real_trial(store, i, variant))
        print(f"[{variant}] repeat {i}: bare {out['bare'][-1]['trial_seconds']:.1f}s, trial start-up "
              f"{out['trial'][-1]['startup_seconds']:.1f}s setup {out['trial'][-1]['setup_seconds']:.1f}s",
              file=sys.stderr, flush=True)
    ray.shutdown()
    return out


def medians(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in PHASES if all(k in r for r in runs)}


def summarize(variant: str, raw: dict) -> dict:
    bare, trial = medians(raw["bare"]), medians(raw["trial"])
    fixed = statistics.median(r["startup_seconds"] + r["setup_seconds"] for r in raw["trial"])
    return {"bare_seconds": bare["trial_seconds"], "bare_startup_seconds": bare["startup_seconds"],
            **{f"trial_{k}": v for k, v in trial.items()}, "fixed_seconds": fixed,
            "fixed_over_bare": fixed / bare["trial_seconds"], "ray_start_seconds": raw["ray_start_seconds"],
            "raw": raw}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", default="/tmp/premem-bench-trial")
    parser.add_argument("--variants", default="ray-defaults,head,keep-imports,now")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant here, JSON to stdout
    args = parser.parse_args()
    if args.one:
        print("BENCH-JSON " + json.dumps(one_variant(args.one, args.repeats, args.store)))
        return

    result: dict = {"repeats": args.repeats, "store": args.store, "variants": {}}
    for variant in args.variants.split(","):
        child = subprocess.run([sys.executable, "-m", "bench.trial_overhead", "--one", variant,
                                "--repeats", str(args.repeats), "--store", args.store],
                               stdout=subprocess.PIPE, text=True, check=True,
                               env={**os.environ, **VARIANT_ENV[variant]})
        line = next(l for l in child.stdout.splitlines() if l.startswith("BENCH-JSON "))
        result["variants"][variant] = summarize(variant, json.loads(line.removeprefix("BENCH-JSON ")))

    print(f"\nper-trial fixed cost, medians of {args.repeats} (seconds; ratio: to the bare TorchTrainer of the "
          "same variant)")
    print(f"{'variant':<13}{'bare':>7}{'start-up':>10}{'setup':>8}{'fixed':>8}{'ratio':>7}{'compute':>9}"
          f"{'ckpt':>7}{'other':>7}{'trial':>8}{'tune':>7}")
    for variant, r in result["variants"].items():
        print(f"{variant:<13}{r['bare_seconds']:>7.1f}{r['trial_startup_seconds']:>10.1f}"
              f"{r['trial_setup_seconds']:>8.1f}{r['fixed_seconds']:>8.1f}{r['fixed_over_bare']:>6.1f}x"
              f"{r['trial_train_compute_seconds']:>9.1f}{r['trial_checkpoint_seconds']:>7.1f}"
              f"{r['trial_other_seconds']:>7.1f}{r['trial_trial_seconds']:>8.1f}"
              f"{r.get('trial_tune_trial_seconds', float('nan')):>7.1f}")
    out = Path(os.environ.get("BENCH_TRIAL_OUT", "bench_trial.json"))
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
