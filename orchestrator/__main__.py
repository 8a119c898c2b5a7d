"""python -m orchestrator [hydra overrides]: run a sweep from conf/ to records, MLflow and the premem fit.

Validates everything first (one line naming the field, exit 2, nothing written), builds or reuses the
base model, runs the trials on Ray with the sampling pool streaming every checkpoint, then fits pre-
memorization train accuracy against test accuracy and prints where to look.
"""
from __future__ import annotations

import sys

from orchestrator.config import CONF_DIR, ConfigError
from orchestrator.placement import PlacementError
from store.io import StorageError

HELP = f"""usage: python -m orchestrator [-m] [--plan | --cfg | --list] [--new] [hydra overrides ...]

{__doc__.strip()}

Config groups (conf/): {', '.join(sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir()))}
  e.g.  python -m orchestrator -m sweep=small train.lr=1e-3,3e-3 'seed=range(2)'   (one sweep of 4 trials)
        python -m orchestrator cluster=ray train=gpu sampler=vllm_gpu sweep=gpu model=hf model.path=/models/llama3-8b
  -m, --multirun  Hydra's sweep syntax (a=1,2, range(), choice(), glob(), config groups): optional, any sweep
                  override or a preset's hydra.sweeper.params makes the run one premem sweep
  --plan  print the trials and their checkpoints, and per trial whether the command runs, continues or skips it
          (and why); start and write nothing
  --new   a fresh sweep even where the store has this one (by default the same command continues its sweep:
          finished trials are not trained again, new grid points are; docs/rerun.md)
  --cfg   print the composed config and exit
  --list  print the config groups and their presets, one line each, and exit
Re-evaluate a finished sweep: python -m orchestrator.reeval SWEEP_DIR sampler.variant=NAME [sampler.* ...]
Finish an interrupted sweep:  python -m orchestrator.resume SWEEP_DIR
Curation rounds from a sweep: python -m orchestrator.curate SWEEP_DIR [curation=NAME] [curation.* ...]
Finish an interrupted curation: python -m orchestrator.curate --resume CURATION_DIR"""


def main(argv: list[str] | None = None) -> int:
    from orchestrator import sweep
    from orchestrator.config import tracking_uri
    from orchestrator.tracking import TrackingError, check_tracking

    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(HELP)
        return 0
    if "--list" in argv:
        from orchestrator.config import presets_text

        print(presets_text())
        return 0
    mode = "cfg" if "--cfg" in argv else "plan" if "--plan" in argv else "run"
    overrides = [a for a in argv if a not in ("--cfg", "--plan", "--new")]
    from orchestrator import evaluations, rerun, schedule
    from orchestrator.lease import Lease, LeaseHeld
    from store import io
    from store.layout import sweep_paths

    try:  # all checked before anything is written
        cfg, planned_id, planned = sweep.plan(overrides)
        if mode == "cfg":
            from orchestrator.config import to_yaml

            print(to_yaml(cfg))
            return 0
        sweep_id, specs, _ = rerun.address(cfg, planned_id, planned, fresh="--new" in argv)
        paths = sweep_paths(cfg.store.root, sweep_id)
        if mode == "plan":
            from orchestrator.cost import plan_text

            print(plan_text(specs))
            stored = rerun.stored_trials(paths)
            print(rerun.status_text(sweep_id, paths, specs, stored, evaluations.evaluation_set(paths, cfg)))
            return 0
        io.check_writable(io.normalize(cfg.store.root))  # before the lease file goes there
        check_tracking(tracking_uri(cfg))
        lease = Lease(paths.sweep, cfg.sweep.lease_stale_s)
        lease.acquire(cfg.sweep.lease_wait_s)  # a second driver of this sweep waits for the first
    except (ConfigError, StorageError, TrackingError, PlacementError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LeaseHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with lease:
        try:
            # addressed again under the lease: a driver that held it may have stored trials meanwhile
            sweep_id, specs, stored = rerun.address(cfg, planned_id, planned, fresh="--new" in argv)
            schedule.connect_and_place(cfg, specs)  # Ray up and able to hold the pool and each trial
        except (ConfigError, StorageError, TrackingError, PlacementError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # the records set these evaluation settings address: `original` for a new sweep, else a stored one or new
        records_set = evaluations.evaluation_set(paths, cfg)
        evaluations.register_set(paths, records_set)
        specs = evaluations.with_set(cfg, specs, records_set.name)
        if stored:
            return rerun.continue_sweep(cfg, paths, specs, stored, records_set)
        return sweep.launch(cfg, sweep_id, specs)


if __name__ == "__main__":
    sys.exit(main())
