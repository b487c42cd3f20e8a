"""Our DBCache extension fields: the decision signal and the compute budget (off by default).

Their defaults leave a config exactly cache-dit's: ``as_dict()`` and ``strify()`` show an
extension only when it is set. What each signal measures lives in ``context.SIGNALS`` (the same
names); the budget's arithmetic in ``budget.py``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict

from ..budget import check_budget_value
from ..errors import ConfigError
from .checks import Checker, _one_of

DECISION_SIGNALS = ("relative_l1", "lowpass_l1", "magnitude")

EXTENSION_DEFAULTS: Dict[str, Any] = {
    "decision_signal": "relative_l1",
    "signal_lowpass_ratio": 0.25,
    "signal_mag_ratios": None,
    "compute_budget": None,
}


def _check_unit_fraction(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value <= 1.0:
        raise ConfigError(key, value, "a real number in (0, 1]")


def _check_positive_reals(key: str, value: Any) -> None:
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(
            isinstance(item, numbers.Real)
            and not isinstance(item, bool)
            and math.isfinite(item)
            and item > 0
            for item in value
        )
    ):
        raise ConfigError(key, value, "a non-empty list of finite real numbers > 0 (one per step)")


EXTENSION_CHECKS: Dict[str, Checker] = {
    "decision_signal": _one_of(*DECISION_SIGNALS),
    "signal_lowpass_ratio": _check_unit_fraction,
    "signal_mag_ratios": _check_positive_reals,
    "compute_budget": check_budget_value,
}


def extensions_set(config: Any) -> Dict[str, Any]:
    """The extension fields of ``config`` that differ from their defaults (off: empty)."""
    return {
        key: getattr(config, key)
        for key, default in EXTENSION_DEFAULTS.items()
        if getattr(config, key) != default
    }


def extension_tag(config: Any) -> str:
    """The strify suffix of the extensions set, e.g. ``_SIGmagnitude_CB0.33`` (empty when off)."""
    set_here = extensions_set(config)
    tag = ""
    if "decision_signal" in set_here or "signal_lowpass_ratio" in set_here:
        tag += f"_SIG{config.decision_signal}"
    if config.compute_budget is not None:
        tag += f"_CB{config.compute_budget}"
    return tag
