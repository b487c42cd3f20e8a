"""Serving frameworks' flat cache settings, translated into our config objects.

vLLM-Omni passes a ``DiffusionCacheConfig`` (or the dict it was built from): one flat namespace
shared by every cache backend, with cache-dit's keys, SCM as a policy name resolved per request,
and unknown keys collected in ``_extra_params``. :class:`FrameworkCacheConfig` is that namespace,
validated, with the DBCache and TaylorSeer parts as our own config objects.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Dict, Mapping, Optional

from ..budget import check_budget_fits, check_budget_value
from ..errors import ConfigError, UnknownKeyError
from ..scm import MASK_POLICIES
from .cache import BasicCacheConfig, DBCacheConfig
from .calibrator import CalibratorConfig
from .flat import calibrator_from_options

# vLLM-Omni 0.30's DiffusionCacheConfig defaults for the cache-dit backend.
VLLM_OMNI_DEFAULTS: Dict[str, Any] = {
    "Fn_compute_blocks": 1,
    "Bn_compute_blocks": 0,
    "max_warmup_steps": 4,
    "max_cached_steps": -1,
    "residual_diff_threshold": 0.24,
    "max_continuous_cached_steps": 3,
    "enable_taylorseer": False,
    "taylorseer_order": 1,
    "scm_steps_mask_policy": None,
    "scm_steps_policy": "dynamic",
    "num_inference_steps": None,
    "force_refresh_step_hint": None,
    "force_refresh_step_policy": "once",
}

# DiffusionCacheConfig fields that configure the framework's *other* backends; they are always
# present on the object and mean nothing to DBCache.
OTHER_BACKEND_KEYS = frozenset(
    {
        "rel_l1_thresh",
        "coefficients",
        "sea_threshold",
        "sea_residual_order",
        "sea_max_consecutive_cached",
        "sea_power_exp",
        "mag_threshold",
        "mag_max_skip_steps",
        "mag_retention_ratio",
        "mag_ratios",
        "mag_calibrate",
        "step_cache_dit_enabled",
        "velocity_sim_thresholds",
        "velocity_skip_countdowns",
        "step_cache_dit_min_history",
        "step_cache_dit_max_history",
    }
)

CALIBRATOR_KEYS = frozenset(
    {"enable_taylorseer", "taylorseer_order", "enable_encoder_taylorseer", "taylorseer_cache_type"}
    # SGLang's DMD knobs (SGLANG_CACHE_DIT_DMD*, cache_dit_params); vLLM-Omni 0.30 has none.
    | {"enable_dmd", "enable_encoder_dmd", "dmd_history", "dmd_rank", "dmd_ridge", "dmd_svd_precision"}
)
# Both frameworks build their calibrator as TaylorSeerCalibratorConfig(taylorseer_order=...) or
# DMDCalibratorConfig(dmd_...=...), so the encoder stream takes the class default (on), not the
# YAML loader's (off for TaylorSeer): calibrator flag -> its encoder key, set unless given.
ENCODER_CALIBRATOR_KEYS = {
    "enable_taylorseer": "enable_encoder_taylorseer",
    "enable_dmd": "enable_encoder_dmd",
}
SCM_KEYS = frozenset({"scm_steps_mask_policy", "scm_steps_policy"})


@dataclasses.dataclass
class FrameworkCacheConfig:
    """What a serving framework asked for, as DBCache + calibrator configs + a per-request SCM policy."""

    cache_config: DBCacheConfig
    calibrator_config: Optional[CalibratorConfig] = None
    scm_steps_mask_policy: Optional[str] = None
    scm_steps_policy: str = "dynamic"
    # Like the SCM policy, a budget is applied per request, where the step count is known: a
    # fraction of the steps is what an operator sets for requests of varying length.
    compute_budget: Any = None

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "FrameworkCacheConfig":
        """Build from a flat mapping; absent keys take vLLM-Omni's cache-dit defaults."""
        merged = {**VLLM_OMNI_DEFAULTS, **{k: v for k, v in values.items() if k not in OTHER_BACKEND_KEYS}}
        cache_fields = {f.name for f in dataclasses.fields(DBCacheConfig)}
        valid = cache_fields | CALIBRATOR_KEYS | SCM_KEYS | {"enable_sperate_cfg"}
        for key in merged:
            if key not in valid:
                raise UnknownKeyError(key, valid, section="cache_config")
        policy = merged.pop("scm_steps_mask_policy")
        if policy is not None and policy not in MASK_POLICIES:
            raise ConfigError(
                "scm_steps_mask_policy", policy, "None or one of " + ", ".join(MASK_POLICIES)
            )
        steps_policy = merged.pop("scm_steps_policy")
        if steps_policy not in ("dynamic", "static"):
            raise ConfigError("scm_steps_policy", steps_policy, "'dynamic' or 'static'")
        budget = merged.pop("compute_budget", None)
        if budget is not None:
            check_budget_value("compute_budget", budget)
        # The calibrator keys go through the YAML path's own reader: same checks, same defaults.
        calibrator_options = {k: merged.pop(k) for k in list(merged) if k in CALIBRATOR_KEYS}
        given = {k: v for k, v in calibrator_options.items() if k in values or k == "enable_taylorseer"}
        for flag, encoder_key in ENCODER_CALIBRATOR_KEYS.items():
            if given.get(flag) is True:
                given.setdefault(encoder_key, True)
        calibrator = calibrator_from_options(given)
        cache_config = DBCacheConfig().update(**merged)
        if isinstance(budget, numbers.Integral):  # a count can be checked before any request
            check_budget_fits(
                budget,
                None,
                cache_config.max_warmup_steps,
                cache_config.warmup_interval,
                cache_config.steps_computation_mask,
            )
        return cls(cache_config, calibrator, policy, steps_policy, budget)

    @classmethod
    def from_any(cls, config: Any) -> "FrameworkCacheConfig":
        """Accept None, a flat dict, our configs, or a framework config object with attributes."""
        if config is None:
            return cls.from_flat({})
        if isinstance(config, FrameworkCacheConfig):
            return config
        if isinstance(config, BasicCacheConfig):
            return cls(config.copy())
        if isinstance(config, Mapping):
            return cls.from_flat(config)
        return cls.from_flat(flat_attributes(config))


def flat_attributes(config: Any) -> Dict[str, Any]:
    """The public fields of a framework config object, plus its ``_extra_params`` (vLLM-Omni)."""
    if dataclasses.is_dataclass(config):
        values = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if not f.name.startswith("_")
        }
    else:
        values = {k: v for k, v in vars(config).items() if not k.startswith("_")}
    values.update(getattr(config, "_extra_params", None) or {})
    return values
