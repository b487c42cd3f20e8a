"""Flat cache options: cache-dit's ``enable_<calibrator>`` key families, and the flat keys of a
refresh (``refresh_context(t, num_inference_steps=50)``) split into cache and calibrator fields."""

from __future__ import annotations

import dataclasses
import logging
from typing import (
    Any,
    Dict,
    Mapping,
    Optional,
    Tuple,
)

from ..errors import ConfigError
from .calibrator import (
    CalibratorConfig,
    DMDCalibratorConfig,
    FoCaCalibratorConfig,
    TaylorSeerCalibratorConfig,
)
from .checks import _check_bool, _check_keys

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _YamlCalibrator:
    """How cache-dit's loader turns one ``enable_<name>: true`` family of YAML keys into a config."""

    config_class: type
    encoder_key: str  # the YAML key of enable_encoder_calibrator
    encoder_default: bool  # its value when absent (cache-dit's loader differs per family)
    fields: Tuple[str, ...]  # further YAML keys, each a config field of the same name
    cache_type_key: str = "calibrator_cache_type"  # the YAML key cache-dit reads the type from


# YAML-only calibrator keys of a cache section: {enable flag: its family}; at most one is true.
_YAML_CALIBRATORS: Dict[str, _YamlCalibrator] = {
    "enable_taylorseer": _YamlCalibrator(
        TaylorSeerCalibratorConfig,
        "enable_encoder_taylorseer",
        False,
        ("taylorseer_order",),
        cache_type_key="taylorseer_cache_type",
    ),
    "enable_dmd": _YamlCalibrator(
        DMDCalibratorConfig,
        "enable_encoder_dmd",
        True,
        ("dmd_history", "dmd_rank", "dmd_ridge", "dmd_svd_precision"),
    ),
    "enable_foca": _YamlCalibrator(FoCaCalibratorConfig, "enable_encoder_foca", False, ()),
}
_CALIBRATOR_KEYS = frozenset(
    ["calibrator_cache_type", *_YAML_CALIBRATORS]
    + [
        key
        for family in _YAML_CALIBRATORS.values()
        for key in (family.encoder_key, family.cache_type_key, *family.fields)
    ]
)



def split_flat_options(
    options: Mapping[str, Any], config_class: type
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Flat request options (``refresh_context(t, num_inference_steps=50)``) split into cache
    fields of ``config_class`` and calibrator keys (``enable_taylorseer``, ...), keys checked.

    Values are kept as given (None included: a flat None clears an optional field).
    """
    valid = [*config_class._field_names(), *config_class._ALIASES, *sorted(_CALIBRATOR_KEYS)]
    _check_keys(options, valid, "refresh_context")
    cache_fields = {k: v for k, v in options.items() if k not in _CALIBRATOR_KEYS}
    for alias, target in config_class._ALIASES.items():
        if alias in cache_fields:
            cache_fields.setdefault(target, cache_fields.pop(alias))
    calibrator_fields = {k: v for k, v in options.items() if k in _CALIBRATOR_KEYS}
    return cache_fields, calibrator_fields


def refreshed_calibrator(
    current: Optional[CalibratorConfig], options: Mapping[str, Any]
) -> Optional[CalibratorConfig]:
    """The calibrator after a refresh with flat keys: ``enable_taylorseer`` turns TaylorSeer on
    or off; the other keys change the current TaylorSeer calibrator (refused without one)."""
    if not options:
        return current
    enable = options.get("enable_taylorseer")
    if enable is not None:
        _check_bool("enable_taylorseer", enable)
        if not enable:
            others = sorted(k for k in options if k != "enable_taylorseer")
            if others:
                raise ConfigError(others[0], options[others[0]], "nothing when enable_taylorseer=False")
            return None
        if not isinstance(current, TaylorSeerCalibratorConfig):
            return calibrator_from_options(dict(options))
    if not isinstance(current, TaylorSeerCalibratorConfig):
        key = next(iter(options))
        raise ConfigError(
            key, options[key], "a change of an enabled TaylorSeer calibrator",
            hint="TaylorSeer is off here; pass enable_taylorseer=True as well",
        )
    for flag in ("enable_encoder_taylorseer",):
        if options.get(flag) is not None:
            _check_bool(flag, options[flag])
    fields: Dict[str, Any] = {}
    mapping = {
        "enable_encoder_taylorseer": "enable_encoder_calibrator",
        "taylorseer_order": "taylorseer_order",
        "taylorseer_cache_type": "calibrator_cache_type",
        "calibrator_cache_type": "calibrator_cache_type",
    }
    for key, value in options.items():
        if key == "enable_taylorseer":
            continue
        if key not in mapping:
            raise ConfigError(key, value, "a TaylorSeer key: " + ", ".join(sorted(mapping)))
        if value is None:
            raise ConfigError(key, None, "a value")
        fields[mapping[key]] = value
    return current.with_fields(**fields)



def _option(options: Mapping[str, Any], key: str, default: Any) -> Any:
    value = options.get(key)
    return default if value is None else value


def calibrator_from_options(options: Dict[str, Any]) -> Optional[CalibratorConfig]:
    """The calibrator of a flat cache section (YAML, a framework's flat config), or None."""
    return _calibrator_from(options, reset=False)


def _calibrator_from(options: Dict[str, Any], reset: bool) -> Optional[CalibratorConfig]:
    """Build the calibrator config from the YAML keys (``enable_taylorseer``, ``enable_dmd``, ...)."""
    for flag, family in _YAML_CALIBRATORS.items():
        for key in (flag, family.encoder_key):
            if options.get(key) is not None:
                _check_bool(key, options[key])
    enabled = [flag for flag in _YAML_CALIBRATORS if options.get(flag)]
    if len(enabled) > 1:
        raise ConfigError(
            enabled[1],
            True,
            f"false while {enabled[0]} is true (the calibrators are mutually exclusive)",
        )
    for flag, family in _YAML_CALIBRATORS.items():
        own = (family.encoder_key, *family.fields)
        own += (family.cache_type_key,) if family.cache_type_key != "calibrator_cache_type" else ()
        ignored = [key for key in own if key in options]
        if ignored and not options.get(flag):
            logger.warning("%s ignored: %s is not true", ", ".join(ignored), flag)
    if not enabled:
        if "calibrator_cache_type" in options:
            logger.warning("calibrator_cache_type ignored: no calibrator is enabled")
        return None

    family = _YAML_CALIBRATORS[enabled[0]]
    defaults = {field.name: field.default for field in dataclasses.fields(family.config_class)}
    # cache-dit reads only taylorseer_cache_type for TaylorSeer and silently drops
    # calibrator_cache_type; honour either, and refuse two different answers.
    cache_type = options.get(family.cache_type_key)
    generic = options.get("calibrator_cache_type")
    if cache_type is not None and generic is not None and cache_type != generic:
        raise ConfigError(
            "calibrator_cache_type",
            generic,
            f"the same value as {family.cache_type_key} ({cache_type!r})",
        )
    fields = {
        "enable_calibrator": True,
        "enable_encoder_calibrator": _option(options, family.encoder_key, family.encoder_default),
        "calibrator_cache_type": cache_type or generic or "residual",
        # Absent keys take the defaults, also for partial (reset) configs: cache-dit's loader.
        **{key: _option(options, key, defaults[key]) for key in family.fields},
    }
    if reset:
        return family.config_class().reset(**fields)
    return family.config_class(**fields)
