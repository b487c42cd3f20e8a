"""What ``--config`` names: the built-in configs, presets and files, loaded through ``load_configs``.

A spec resolves to a *source* that both engines' ``load_configs`` read: a dict in cache-dit's
YAML schema for the built-in configs, or the path of a preset or file. Nothing here parses YAML.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

ConfigSource = Union[Dict[str, Any], Path]

DEFAULT_CONFIGS = ["threshold-0", "scm-fast", "scm-fast-ts1", "balanced"]

BUILTIN_HELP = (
    "built-in configs: threshold-<R> (F1B0 W4 MC3, plain reuse, e.g. threshold-0), "
    "scm-<slow|medium|fast|ultra>[-ts<order>] (static SCM mask, F1B0 W0, optional TaylorSeer); "
    "or a preset name (quality, balanced, fast, ultra, few-step) or a YAML/JSON file"
)


def _threshold_config(threshold: float) -> Dict[str, Any]:
    # The CLI defaults of cache-dit (F1B0 W4 MC3), plain reuse: the threshold is the only knob.
    return {
        "cache_config": {
            "Fn_compute_blocks": 1,
            "Bn_compute_blocks": 0,
            "max_warmup_steps": 4,
            "warmup_interval": 1,
            "max_cached_steps": -1,
            "max_continuous_cached_steps": 3,
            "residual_diff_threshold": threshold,
        }
    }


def _scm_config(policy: str, steps: int, order: int) -> Dict[str, Any]:
    # A static SCM mask fixes the schedule; F1B0, no warm-up (the mask keeps the first steps).
    section: Dict[str, Any] = {
        "Fn_compute_blocks": 1,
        "Bn_compute_blocks": 0,
        "max_warmup_steps": 0,
        "residual_diff_threshold": 0.12,
        "num_inference_steps": steps,
        "steps_computation_mask": policy,
        "steps_computation_policy": "static",
    }
    if order:
        section.update(enable_taylorseer=True, taylorseer_order=order)
    return {"cache_config": section}


# Built-in config patterns → the function that builds them from the match and the step count.
BUILTINS = {
    r"threshold-([0-9.]+)": lambda m, steps: _threshold_config(float(m.group(1))),
    r"scm-(slow|medium|fast|ultra)(?:-ts([12]))?": lambda m, steps: _scm_config(
        m.group(1), steps, int(m.group(2) or 0)
    ),
}


def resolve_config(spec: str, steps: int) -> ConfigSource:
    """A config spec → what ``load_configs`` of either engine reads (a dict or a file path).

    A preset or file with a mask policy name must carry its own ``num_inference_steps``: the
    loader sizes the mask from it and says so when it is missing.
    """
    for pattern, build in BUILTINS.items():
        match = re.fullmatch(pattern, spec)
        if match:
            return build(match, steps)
    from ..presets import resolve

    path = resolve(spec)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return path


def cache_options(module: Any, source: ConfigSource) -> Dict[str, Any]:
    """``module.load_configs(source)`` without the sections that are not set."""
    # A copy: cache-dit's loader pops keys from the dict it is given.
    options = module.load_configs(
        str(source) if isinstance(source, Path) else copy.deepcopy(source)
    )
    return {key: value for key, value in options.items() if value is not None}


def config_tag(options: Dict[str, Any], default: Optional[str] = None) -> Optional[str]:
    """cache-dit's tag of loaded options (``DBCACHE_F1B0_..._T1O1``)."""
    cache_config = options.get("cache_config")
    if cache_config is None:
        return default
    calibrator = options.get("calibrator_config")
    return cache_config.strify() + "_" + (calibrator.strify() if calibrator else "T0O0")


def describe(source: ConfigSource) -> str:
    """The setting column of a report: the cache section of a dict, or the file's path."""
    import json

    if isinstance(source, Path):
        return str(source)
    return json.dumps(source.get("cache_config", source), sort_keys=True)
