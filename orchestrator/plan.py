"""Grid -> trial specs (pure): every combination of the sweep's grid applied to the base config."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import ConfigError, validate


@dataclass(frozen=True)
class TrialSpec:
    run_id: str  # the records' run_id and the MLflow child run's premem.run_id tag
    index: int
    grid_values: dict  # {"train.lr": 0.001, ...}
    config: dict  # the trial's full resolved config

    @property
    def label(self) -> str:
        return " ".join(f"{k.split('.')[-1]}={v}" for k, v in self.grid_values.items()) or "base"


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def flatten_grid(grid: dict, prefix: str = "") -> dict[str, object]:
    """{"train": {"lr": [..]}, "seed": [..]} -> {"train.lr": [..], "seed": [..]}, order kept."""
    flat: dict[str, object] = {}
    for key, value in grid.items():
        if isinstance(value, dict):
            flat.update(flatten_grid(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def expand_grid(cfg: DictConfig, sweep_id: str) -> list[TrialSpec]:
    """One validated TrialSpec per point of cfg.sweep.grid (declared order; last key varies fastest)."""
    grid = flatten_grid(OmegaConf.to_container(cfg.sweep.grid, resolve=True))
    keys = list(grid)
    for key in keys:
        values = grid[key]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key}={values!r}: must be a non-empty list of values")
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" or key.startswith("sweep."):
            raise ConfigError(f"sweep.grid.{key}: not a config field that a trial can vary")
    specs = []
    for index, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        trial = cfg.copy()
        for key, value in zip(keys, combo):
            try:
                OmegaConf.update(trial, key, value, merge=False)
            except OmegaConfBaseException as exc:
                raise ConfigError(f"sweep.grid.{key}={value!r}: {exc.msg if hasattr(exc, 'msg') else exc}") from None
        validate(trial, prefix=f"sweep.grid point {index}: ")
        values = dict(zip(keys, combo))
        suffix = "_".join(f"{k.split('.')[-1]}{_short(v)}" for k, v in values.items())
        run_id = f"{sweep_id}-t{index:02d}" + (f"-{suffix}" if suffix else "")
        specs.append(TrialSpec(run_id, index, values, OmegaConf.to_container(trial, resolve=True)))
    return specs
