"""Grid -> trial specs (pure): every combination of the sweep's grid applied to the base config."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import Config, ConfigError, validate


@dataclass(frozen=True)
class TrialSpec:
    run_id: str  # the records' run_id and the MLflow child run's premem.run_id tag
    index: int
    grid_values: dict  # {"train.lr": 0.001, ...}
    config: Config  # the trial's full resolved config, typed: spec.config.train.lr

    @classmethod
    def from_dict(cls, stored: dict) -> "TrialSpec":
        """A spec as plan.json stores it (dataclasses.asdict); fields added since get their defaults."""
        return cls(stored["run_id"], stored["index"], stored["grid_values"], typed_config(stored["config"]))

    def select(self, key: str):
        """A dotted config field's value (`train.lr`), as Hydra spells it."""
        return OmegaConf.select(OmegaConf.structured(self.config), key)

    @property
    def label(self) -> str:
        return " ".join(f"{k.split('.')[-1]}={v}" for k, v in self.grid_values.items()) or "base"


def typed_config(tree) -> Config:
    """A resolved config (DictConfig or plain dict) as the typed Config dataclasses."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), tree))


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


def _settings(cfg: DictConfig, key: str, values: list) -> list[dict[str, object]]:
    """Each value of a grid axis as the fields it sets: {key: value}, or, for a linked axis (values are
    mappings, e.g. `regime: [{task.train_fraction: 0.25, train.epochs: 8}, ...]`), the fields of each."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"sweep.grid.{key}={values!r}: must be a non-empty list of values")
    linked = [isinstance(v, dict) for v in values]
    if any(linked) and not all(linked):
        raise ConfigError(f"sweep.grid.{key}: either every value sets several fields ({{field: value, ...}}) or none")
    settings = [flatten_grid(v) for v in values] if all(linked) else [{key: v} for v in values]
    for fields in settings:
        if not fields:
            raise ConfigError(f"sweep.grid.{key}: a linked value must set at least one field")
        for field in fields:
            if OmegaConf.select(cfg, field, default="__missing__") == "__missing__" or field.startswith("sweep."):
                raise ConfigError(f"sweep.grid.{key}" + (f".{field}" if all(linked) else "")
                                  + ": not a config field that a trial can vary")
    return settings


def grid_points(cfg: DictConfig, prefix: str = "") -> list[tuple[dict, DictConfig]]:
    """(grid values, validated trial config) per point of cfg.sweep.grid (declared order; last key varies
    fastest). A linked axis moves several fields together (e.g. less data with more epochs, as the paper's
    sweeps do)."""
    grid = flatten_grid(OmegaConf.to_container(cfg.sweep.grid, resolve=True))
    axes = [_settings(cfg, key, values) for key, values in grid.items()]
    points = []
    for index, combo in enumerate(itertools.product(*axes)):
        trial = cfg.copy()
        values = {field: value for fields in combo for field, value in fields.items()}
        for key, value in values.items():
            try:
                OmegaConf.update(trial, key, value, merge=False)
            except OmegaConfBaseException as exc:
                raise ConfigError(f"sweep.grid.{key}={value!r}: {exc.msg if hasattr(exc, 'msg') else exc}") from None
        validate(trial, prefix=f"{prefix}sweep.grid point {index}: " if grid else prefix)
        points.append((values, trial))
    return points


def specs_from_points(points: list[tuple[dict, DictConfig]], sweep_id: str) -> list[TrialSpec]:
    """Numbered TrialSpecs, each named by its grid values."""
    specs = []
    for index, (values, trial) in enumerate(points):
        suffix = "_".join(f"{k.split('.')[-1]}{_short(v)}" for k, v in values.items())
        run_id = f"{sweep_id}-t{index:02d}" + (f"-{suffix}" if suffix else "")
        specs.append(TrialSpec(run_id, index, values, typed_config(OmegaConf.to_container(trial, resolve=True))))
    return specs


def expand_grid(cfg: DictConfig, sweep_id: str) -> list[TrialSpec]:
    """One validated TrialSpec per point of cfg.sweep.grid."""
    return specs_from_points(grid_points(cfg), sweep_id)


def expand_jobs(jobs: list[tuple[dict, DictConfig]], sweep_id: str, fixed: set[str] = frozenset()) -> list[TrialSpec]:
    """One sweep from Hydra's sweep (`-m a=1,2 model=x,y`, `hydra.sweeper.params`): each job is its swept values
    and its composed config, multiplied by the job's own sweep.grid. A field swept by Hydra, or set to one value
    on the command line (`fixed`), replaces the grid's axis over it (overrides win, as everywhere in Hydra); one
    inside a linked axis is refused, since the axis would set it too."""
    points = []
    for job_index, (job_values, cfg) in enumerate(jobs):
        cfg = without_axes(cfg, fixed)
        cfg = without_axes(cfg, set(job_values), SWEPT)
        prefix = f"sweep job {job_index} ({' '.join(f'{k}={_short(v)}' for k, v in job_values.items())}): "
        points += [({**job_values, **values}, trial) for values, trial in grid_points(cfg, prefix)]
    return specs_from_points(points, sweep_id)


SWEPT = "swept on the command line (or hydra.sweeper.params) and set"
SET = "set on the command line and"


def without_axes(cfg: DictConfig, fields: set[str], how: str = SET) -> DictConfig:
    """cfg with the sweep.grid axes over `fields` (given on the command line: `how`) dropped, so that the command
    line's value is the trials' value; ConfigError for a field that a linked axis sets with others."""
    if not fields:
        return cfg
    grid = flatten_grid(OmegaConf.to_container(cfg.sweep.grid, resolve=True))
    kept = {}
    for key, values in grid.items():
        linked = {f for v in values if isinstance(v, dict) for f in flatten_grid(v)} if isinstance(values, list) else set()
        clash = sorted(linked & fields)
        if clash:
            raise ConfigError(f"{clash[0]}: {how} by the linked axis sweep.grid.{key}; drop one (e.g. "
                              f"~sweep.grid.{key}, or give {clash[0]} in each of the axis's values)")
        if key not in fields:
            kept[key] = values
    trial = cfg.copy()
    OmegaConf.update(trial, "sweep.grid", kept, merge=False)
    return trial
