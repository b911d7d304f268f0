"""A Hydra callback that checks an Optuna search space before the first trial: every
parameter a key of the config, every distribution one Optuna accepts (a log interval above
0, low below high). A mistake is one line naming `hydra.sweeper.params.<key>`, exit code 2,
instead of a traceback from inside the sweeper (or a sweep of trials that all fail).

It also registers the resolver `trials_at_once` that conf/hparams_search/optuna.yaml uses:
Optuna asks for as many trials at a time as the launcher runs jobs (the joblib launcher's
`n_jobs`; -1, joblib's "every core", is the CPU count; a launcher without it: one)."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ot_gen.errors import ConfigError


def trials_at_once(n_jobs: Any) -> int:
    n = int(n_jobs)
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)  # joblib: -1 every core, -2 all but one


OmegaConf.register_new_resolver("trials_at_once", trials_at_once, replace=True)


def check_search_space(config: DictConfig) -> None:
    sweeper = config.hydra.get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    for key, value in (sweeper.get("params") or {}).items():
        name = f"hydra.sweeper.params.{key}"
        bare = str(key).lstrip("+~")
        if str(key) == bare and OmegaConf.select(config, bare, default="<missing>") == "<missing>":
            raise ConfigError(name, value, f"a key of the config; there is no {bare} (add one with +{bare})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the plugin builds Optuna's deprecated distributions
                create_params_from_overrides([f"{key}={value}"])
        except Exception as e:  # Hydra's override grammar, Optuna's distribution checks, the plugin's asserts
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(name, value, f"a search space Optuna accepts ({reason})") from None


class SearchSpaceCheck(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_search_space(config)
        except ConfigError as e:
            print(f"ConfigError: {e}", file=sys.stderr)
            sys.exit(2)
