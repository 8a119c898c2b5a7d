"""premem's Hydra Sweeper: Hydra's sweep syntax (`-m a=1,2`, `range()`, `choice()`, `glob()`, config groups,
`hydra.sweeper.params`) becomes ONE premem sweep — one plan, one Ray Tune experiment, one MLflow parent run,
the trials running concurrently — instead of one Hydra job after another.

conf/config.yaml selects it (`override hydra/sweeper: premem`); the work is orchestrator.multirun's. No
`from __future__ import annotations`: Hydra imports plugin modules without registering them in sys.modules, where
dataclasses look string annotations up.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper


@dataclass
class PrememSweeperConf:
    _target_: str = "hydra_plugins.premem_sweeper.premem_sweeper.PrememSweeper"
    # {field or group: Hydra sweep value}, e.g. {train.lr: "1e-3,3e-3", seed: "range(3)"}: a grid a sweep preset
    # declares; command-line overrides of the same key win
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="premem", node=PrememSweeperConf, provider="premem")


class PrememSweeper(Sweeper):
    def __init__(self, params: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.params = dict(params or {})
        self.hydra_context = None
        self.config = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.config = hydra_context, config  # no launcher: premem runs the trials on Ray

    def sweep(self, arguments: List[str]) -> Any:
        """The one premem sweep these overrides declare as (base config, jobs), which orchestrator.sweep plans,
        checks and runs."""
        from orchestrator.multirun import jobs_from_overrides

        declared = [f"{key}={value}" for key, value in self.params.items()]
        return jobs_from_overrides(self.config, self.hydra_context.config_loader, declared + list(arguments))
