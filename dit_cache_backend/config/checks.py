"""Value and key checks shared by every config class: each takes ``(key, value)`` and raises
:class:`ConfigError` naming the key, the value and what is allowed (callers skip ``None``)."""

from __future__ import annotations

import difflib
import math
import numbers
import sys
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Mapping,
    Optional,
)

from .. import scm
from ..errors import ConfigError, UnknownKeyError

Checker = Callable[[str, Any], None]

_MASK_KEY = "steps_computation_mask"


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python, but `Fn_compute_blocks: true` is a mistake, not a 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return not math.isnan(value)
        except OverflowError:  # an int too large for a float (10**400)
            return False
    # A 0-d tensor threshold is legal in cache-dit. torch is only consulted when it is already
    # imported (a tensor cannot exist otherwise), so loading configs does not pay for importing it.
    torch = sys.modules.get("torch")
    if torch is None or not torch.is_tensor(value) or value.dim() != 0:
        return False
    if value.is_complex() or value.dtype == torch.bool:
        return False
    return bool(value == value)  # NaN is never equal to itself


def _looks_numeric(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _int_at_least(minimum: int, note: str = "") -> Checker:
    allowed = f"an int >= {minimum}{note}"

    def check(key: str, value: Any) -> None:
        if not _is_int(value) or value < minimum:
            raise ConfigError(key, value, allowed)

    return check


def _int_between(minimum: int, maximum: int) -> Checker:
    allowed = f"an int from {minimum} to {maximum}"

    def check(key: str, value: Any) -> None:
        if not _is_int(value) or not minimum <= value <= maximum:
            raise ConfigError(key, value, allowed)

    return check


def _check_real(key: str, value: Any) -> None:
    if not _is_real(value):
        hint = None
        if _looks_numeric(value):
            # PyYAML follows YAML 1.1, where `1e-2` (no dot) is a string; `1.0e-2` is a float.
            hint = "YAML reads exponent numbers without a dot as strings; write e.g. 1.0e-2"
        raise ConfigError(
            key,
            value,
            "a real number (int, float or 0-d tensor) that fits a float, not NaN",
            hint=hint,
        )


def _check_positive_real(key: str, value: Any) -> None:
    _check_real(key, value)
    if value <= 0:
        raise ConfigError(key, value, "a real number > 0")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")


def _check_str(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, value, "a non-empty string")


def _check_dict(key: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ConfigError(key, value, "a mapping (dict)")


def _check_callable(key: str, value: Any) -> None:
    if not callable(value):
        raise ConfigError(key, value, "a callable")


def _check_anything(key: str, value: Any) -> None:
    """Fields cache-dit passes through untouched (e.g. a custom context-parallel plan)."""


def _check_str_list(key: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(key, value, "a list of strings")


def _one_of(*choices: str) -> Checker:
    allowed = "one of " + ", ".join(repr(choice) for choice in choices)

    def check(key: str, value: Any) -> None:
        if value not in choices:
            raise ConfigError(key, value, allowed, hint=_did_you_mean(value, choices))

    return check


def _did_you_mean(value: Any, choices: Iterable[str]) -> Optional[str]:
    if not isinstance(value, str):
        return None
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def _check_mask(key: str, value: Any) -> None:
    allowed = "a non-empty list of 0/1 ints, a string of 0/1 digits, or a preset name"
    if not isinstance(value, list) or not value:
        raise ConfigError(key, value, allowed)
    bad = [flag for flag in value if not _is_int(flag) or flag not in (0, 1)]
    if bad:
        raise ConfigError(key, value, allowed, hint=f"bad element {bad[0]!r}")


def _check_block_ids(key: str, value: Any) -> None:
    if not isinstance(value, list) or not all(_is_int(i) and i >= 0 for i in value):
        raise ConfigError(key, value, "a list of block indices (ints >= 0)")


def _check_parallel_size(key: str, value: Any) -> None:
    if value != "auto" and (not _is_int(value) or value < 1):
        raise ConfigError(key, value, "an int >= 1 or 'auto'")


def _check_modules(key: str, value: Any) -> None:
    # Module names ("text_encoder", "vae") or the modules themselves, as cache-dit accepts.
    torch = sys.modules.get("torch")

    def ok(item: Any) -> bool:
        return isinstance(item, str) or (torch is not None and isinstance(item, torch.nn.Module))

    if not isinstance(value, list) or not all(ok(item) for item in value):
        raise ConfigError(
            key, value, "a list of module names (e.g. 'text_encoder', 'vae') or modules"
        )



def _check_keys(mapping: Mapping[Any, Any], valid: Iterable[str], section: str) -> None:
    valid_keys = list(valid)
    for key in mapping:
        if not isinstance(key, str):
            raise ConfigError(f"{section} key", key, "string keys")
        if key not in valid_keys:
            raise UnknownKeyError(key, valid_keys, section=section)


def _require_mapping(value: Any, section: str) -> Dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(section, value, "a mapping of keys to values")
    return dict(value)


_MASK_ALLOWED = "a list of 0/1 ints, a string of 0/1 digits, or a preset: " + ", ".join(
    scm.MASK_POLICIES
)


def _mask_policy_of(text: str) -> Optional[str]:
    """The preset name a mask string names, or None for a string of 0/1 digits."""
    stripped = text.strip()
    if stripped and set(stripped) <= {"0", "1"}:
        return None
    policy = stripped.lower()
    if policy not in scm.MASK_POLICIES:
        raise ConfigError(_MASK_KEY, text, _MASK_ALLOWED, hint=_did_you_mean(policy, scm.MASK_POLICIES))
    return policy
