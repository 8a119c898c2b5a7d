"""Hydra's sweep overrides as one premem sweep: `python -m orchestrator -m train.lr=1e-3,3e-3 model=tiny,hf`.

Hydra parses the overrides and composes each job's config (a config-group choice composes a different config);
premem's Sweeper plugin (hydra_plugins/premem_sweeper) hands the jobs back, and orchestrator.sweep plans them as the
trial specs of ONE sweep, which runs like any other: validated first, one Tune experiment, one MLflow parent run.
"""
from __future__ import annotations

import itertools

from omegaconf import DictConfig, OmegaConf

from orchestrator.config import ConfigError, config_message, without_hydra

SWEEP_FLAGS = ("-m", "--multirun")
GRIDS = "premem sweeps grids: a=1,2, range(), choice(), glob() over fields and config groups"


def has_sweep(overrides: list[str]) -> bool:
    """Whether an override is one of Hydra's sweeps (`a=1,2`, `range()`, ...): then it is a sweep with or
    without `-m`. A bad override is left to the caller's compose, which names it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(overrides))
    except HydraException:
        return False


def command_line_fields(overrides: list[str]) -> set[str]:
    """The config fields the overrides set to one value (`train.lr=3e-3`, `+a.b=1`, `++a.b=1`): no sweep, deletion,
    config-group choice (`sweep=small`), `hydra.*` or `sweep.*` (which edit the grid itself). The command line wins
    over a preset's grid axis over such a field (orchestrator.plan.without_axes). A bad override yields nothing
    here: the caller's compose names it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from orchestrator.config import CONF_DIR

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in overrides if a not in SWEEP_FLAGS])
    except HydraException:
        return set()
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    fields = {o.key_or_group: o.input_line for o in parsed
              if not (o.is_sweep_override() or o.is_delete() or o.package is not None or "/" in o.key_or_group
                      or o.key_or_group in groups or o.key_or_group.split(".")[0] in ("hydra", "sweep"))}
    for o in parsed:
        field = o.key_or_group.removeprefix("sweep.grid.")
        if o.key_or_group.startswith("sweep.grid.") and field in fields and not o.is_delete():
            raise ConfigError(f"{field}: given twice on the command line, as {fields[field].lstrip('+')} and as "
                              f"{o.input_line.lstrip('+')}; keep one")
    return set(fields)


def sweep_jobs(config_loader, master: DictConfig, arguments: list[str]) -> list[tuple[dict, DictConfig]]:
    """(swept values, composed config) per job of the overrides' cartesian product, in Hydra's order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    latest = {o.get_key_element(): o for o in parsed}  # a key given twice (a preset's params, then the command line)
    axes, fixed = [], []
    for override in latest.values():
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif not override.is_discrete_sweep():
            raise ConfigError(f"{override.input_line}: an {override.value_type.name.lower().replace('_', ' ')} "
                              f"needs a search algorithm; {GRIDS}")
        else:
            key = override.get_key_element()
            axes.append([(override.key_or_group, f"{key}={value}") for value in override.sweep_string_iterator()])
    jobs = []
    for combo in itertools.product(*axes):
        cfg = config_loader.load_sweep_config(master, fixed + [line for _, line in combo])
        groups = OmegaConf.to_container(cfg.hydra.runtime.choices)
        values = {key: (line.split("=", 1)[1] if key in groups else OmegaConf.select(cfg, key))
                  for key, line in combo}
        jobs.append((values, without_hydra(cfg)))
    return jobs


def jobs_from_overrides(master: DictConfig, config_loader, arguments: list[str]):
    """(base config, jobs) of the one sweep these Hydra overrides declare; ConfigError for bad input (a
    composition error named by its field). orchestrator.sweep plans them."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        base = without_hydra(master.copy())
        jobs = sweep_jobs(config_loader, master, arguments)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(config_message(exc)) from None
    return base, jobs


def compose_jobs(overrides: list[str]):
    """`-m OVERRIDES` composed: Hydra composes the master config and hands the sweep to premem's sweeper
    (hydra_plugins/premem_sweeper), which returns (base config, jobs); nothing is started or written."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from orchestrator.config import CONF_DIR, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return GlobalHydra.instance().hydra.multirun(
                config_name="config", task_function=_never_called,
                overrides=[a for a in overrides if a not in SWEEP_FLAGS], with_log_configuration=False)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(config_message(exc)) from None


def _never_called(cfg: DictConfig) -> None:
    raise AssertionError("premem's sweeper plans one sweep; Hydra launches no job")
