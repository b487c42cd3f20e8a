"""Typed configuration objects and the cache-dit YAML/JSON/dict loader.

The names, fields and defaults mirror cache-dit 1.5.3 so that ``import dit_cache_backend as
cache_dit`` keeps user code and existing YAML files working. Where cache-dit silently accepts a
mistake, this module refuses it with an error that names the key, the value and what is allowed:

* every unknown key, in a config object's ``update()`` and at any level of a YAML file, raises
  :class:`UnknownKeyError` with the closest valid key; the one exception is ``enable_sperate_cfg``
  (the misspelling in the published docs), which is accepted as ``enable_separate_cfg`` with a
  warning;
* values are type- and range-checked when a config is built or updated (``None`` is always allowed,
  because ``reset()`` builds partial configs that only override some fields);
* ``steps_computation_mask: fast`` without ``num_inference_steps`` is an error in every form (cache-
  dit stores the string as the mask in the flat legacy form);
* ``cache_type: DBCache`` from YAML is stored as :class:`CacheType`, not as a string.

Parallelism, quantization and attention-backend sections parse and validate here like cache-dit's;
``enable_cache`` hands them to the engines that apply them (``dit_cache_backend.scaleout``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import json
import logging
import math
import numbers
import os
import re
import sys
from pathlib import Path
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterable,
    List,
    FrozenSet,
    Iterator,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

import yaml

from . import scm
from .calibrators import CALIBRATOR_TYPES, DMD_SVD_PRECISIONS, Calibrator, accepted_kwargs
from .budget import check_budget_fits, check_budget_value
from .errors import ConfigError, UnknownKeyError

logger = logging.getLogger(__name__)

__all__ = [
    "CacheType",
    "DBCacheConfig",
    "BasicCacheConfig",
    "DBPruneConfig",
    "CalibratorConfig",
    "TaylorSeerCalibratorConfig",
    "FoCaCalibratorConfig",
    "DMDCalibratorConfig",
    "ParallelismConfig",
    "QuantizeConfig",
    "ParallelismBackend",
    "QuantizeBackend",
    "ConfigFileNotFoundError",
    "load_configs",
    "load_cache_config",
    "load_parallelism_config",
    "load_quantize_config",
    "load_attn_backend_config",
]

PathOrDict = Union[str, "os.PathLike[str]", Mapping[str, Any]]
Checker = Callable[[str, Any], None]
_C = TypeVar("_C", bound="_ValidatedConfig")

_MASK_KEY = "steps_computation_mask"
# TaylorSeer keeps order + 1 tensors per stream; beyond a few orders the forecast only amplifies
# noise, and an unbounded order is unbounded memory at every request.
MAX_TAYLORSEER_ORDER = 8


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The config file passed to :func:`load_configs` does not exist (key ``path``)."""

    def __init__(self, path: str, *, hint: Optional[str] = None) -> None:
        message = f"config file not found: {path}"
        if hint:
            message += f". {hint}"
        super().__init__(
            "path", path, "the path of an existing YAML or JSON file", hint=hint, message=message
        )


# --------------------------------------------------------------------------------------------------
# Value checks. Each takes (key, value) and raises ConfigError; callers skip None values.
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# CacheType
# --------------------------------------------------------------------------------------------------


class CacheType(enum.Enum):
    """Which caching algorithm a config selects."""

    NONE = "NONE"
    DBCache = "DBCache"  # Dual Block Cache
    DBPrune = "DBPrune"  # Dynamic Block Prune

    @classmethod
    def parse(cls, value: Union["CacheType", str, None]) -> "CacheType":
        """Parse ``"DBCache"``, ``"dbcache"``, ``"DBPrune"``, ``"NONE"`` and cache-dit's aliases.

        ``None`` means no caching, as in cache-dit. Unlike cache-dit, which maps any unknown string
        to ``NONE`` (silently disabling the cache), an unknown name raises ConfigError.
        """
        if value is None:
            return cls.NONE
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            found = _CACHE_TYPE_NAMES.get(value.strip().upper())
            if found is not None:
                return found
        raise ConfigError(
            "cache_type",
            value,
            "DBCache, DBPrune or NONE (case-insensitive)",
            hint=_did_you_mean(value, [member.value for member in cls]),
        )

    def __str__(self) -> str:
        # strify tags print the value ("DBCache_F8B0..."), as cache-dit does.
        return self.value


_CACHE_TYPE_NAMES: Dict[str, CacheType] = {
    **dict.fromkeys(("DBCACHE", "DB_CACHE", "DUAL_BLOCK_CACHE", "DB"), CacheType.DBCache),
    **dict.fromkeys(("DBPRUNE", "DB_PRUNE", "DYNAMIC_BLOCK_PRUNE", "DBP"), CacheType.DBPrune),
    **dict.fromkeys(("NONE", "NO_CACHE", "NOCACHE", "NC"), CacheType.NONE),
}


def _check_cache_type(key: str, value: Any) -> None:
    if not isinstance(value, CacheType):
        CacheType.parse(value)  # raises with the allowed names


# --------------------------------------------------------------------------------------------------
# Shared behaviour of the config dataclasses
# --------------------------------------------------------------------------------------------------


class _ValidatedConfig:
    """Validation on construction, ``as_dict`` and ``copy`` for the config dataclasses.

    Subclasses list one checker per field in ``_CHECKS``; ``_normalize`` turns accepted spellings
    (strings for enums, tuples for lists) into the stored form and ``_check_relations`` holds the
    cross-field rules.
    """

    _CHECKS: ClassVar[Dict[str, Checker]] = {}
    # Fields whose None means something ("unknown", "auto", "no mask"); every other field must
    # hold a value, so a config object is always complete (overrides are ConfigOverride mappings).
    # None: every field may be None (the parallelism/quantize configs, checked before refusal).
    _OPTIONAL: ClassVar[Optional[FrozenSet[str]]] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Normalize accepted spellings, then check every field; raise ConfigError on the first
        invalid one."""
        self._normalize()
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if value is not None:
                self._CHECKS[field.name](field.name, value)
            elif self._OPTIONAL is not None and field.name not in self._OPTIONAL:
                raise ConfigError(
                    field.name,
                    None,
                    "a value (None is only allowed for "
                    + (", ".join(sorted(self._OPTIONAL)) or "no field")
                    + f" of {type(self).__name__})",
                    hint="to override only some fields, use "
                    f"{type(self).__name__}().reset(field=value)",
                )
        self._check_relations()

    def _normalize(self) -> None:
        """Convert accepted input spellings into the stored form (no-op by default)."""

    def _check_relations(self) -> None:
        """Cross-field rules (none by default)."""

    def as_dict(self) -> Dict[str, Any]:
        """All fields as a plain (deep-copied) dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def copy(self: _C) -> _C:
        """An independent deep copy (tensor thresholds and lists included)."""
        return copy.deepcopy(self)

    @classmethod
    def _field_names(cls) -> List[str]:
        return [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]


class _UpdatableConfig(_ValidatedConfig):
    """``update`` / ``reset`` / ``empty`` with cache-dit's semantics, plus strict keys."""

    # Misspellings accepted (with a warning) for a field name: {alias: field}.
    _ALIASES: ClassVar[Dict[str, str]] = {}
    # Fields that reset() keeps instead of clearing (cache-dit keeps the calibrator type).
    _RESET_KEEPS: ClassVar[Tuple[str, ...]] = ()

    def update(self: _C, **kwargs: Any) -> _C:
        """Set the given fields, skipping ``None`` values; return ``self``.

        Unknown keys raise UnknownKeyError (cache-dit ignores them). If a value is invalid, the
        config is left exactly as it was before the call.
        """
        kwargs = self._resolve_aliases(kwargs)
        names = self._field_names()
        for key in kwargs:
            if key not in names:
                raise UnknownKeyError(key, [*names, *self._ALIASES], section=type(self).__name__)
        saved = {name: getattr(self, name) for name in names}
        if kwargs.get(_MASK_KEY) is not None and "_mask_policy" in self.__dict__:
            del self._mask_policy  # an explicit mask replaces the preset
        for key, value in kwargs.items():
            if value is not None:
                setattr(self, key, value)
        try:
            self.validate()
        except ConfigError:
            for name, value in saved.items():
                setattr(self, name, value)
            raise
        return self

    def empty(self, **kwargs: Any) -> "ConfigOverride":
        """The given fields as an override: a mapping of only the keys that were set.

        cache-dit clears every field of the config in place and uses ``None`` for "keep the base
        value"; here the config is left as it is and a :class:`ConfigOverride` is returned, so
        every config object stays complete (see docs/compatibility.md). ``None`` values are
        skipped, as cache-dit's ``update`` skips them.
        """
        keys = {key: value for key, value in self._resolve_aliases(kwargs).items()}
        for key in self._RESET_KEEPS:
            keys.setdefault(key, getattr(self, key))
        return ConfigOverride(type(self), keys)

    def reset(self, **kwargs: Any) -> "ConfigOverride":
        """Alias of :meth:`empty` (cache-dit keeps both names)."""
        return self.empty(**kwargs)

    def with_fields(self: _C, **fields: Any) -> _C:
        """A new config with ``fields`` changed, validated once; ``self`` is not touched."""
        names = self._field_names()
        for key in fields:
            if key not in names:
                raise UnknownKeyError(key, [*names, *self._ALIASES], section=type(self).__name__)
        policy = getattr(self, "_mask_policy", None)
        if policy is not None and _MASK_KEY not in fields:
            # The new config names the preset again, so it is expanded for its own step count.
            fields[_MASK_KEY] = policy
        return dataclasses.replace(copy.deepcopy(self), **fields)  # type: ignore[type-var]


    def _resolve_aliases(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        resolved = dict(kwargs)
        for alias, target in self._ALIASES.items():
            if alias not in resolved:
                continue
            value = resolved.pop(alias)
            logger.warning(
                "'%s' is a misspelling of '%s' (it appears in published cache-dit docs); "
                "using it as '%s'",
                alias,
                target,
                target,
            )
            given = resolved.get(target)
            if given is not None and value is not None and given != value:
                raise ConfigError(
                    alias,
                    value,
                    f"the same value as {target} ({given!r})",
                    hint=f"'{alias}' is read as '{target}'; set only '{target}'",
                )
            if given is None:
                resolved[target] = value
        return resolved


def _check_override_value(config_class: type, key: str, value: Any) -> None:
    """One field's check; spellings normalized later (a mask preset needs the step count)."""
    if isinstance(value, tuple):
        value = list(value)
    if key == _MASK_KEY and isinstance(value, str):
        _mask_policy_of(value)  # raises on a name that is neither digits nor a preset
        return
    config_class._CHECKS[key](key, value)


class ConfigOverride(Mapping):
    """Some fields of a config class, checked one by one: what ``reset(**fields)`` returns.

    A read-only mapping of the keys that were set. Reading an unset field as an attribute gives
    ``None`` ("keep the base value"), as cache-dit's partial configs do.
    """

    def __init__(self, config_class: type, fields: Mapping[str, Any]) -> None:
        names = config_class._field_names()
        checked: Dict[str, Any] = {}
        for key, value in fields.items():
            if key not in names:
                raise UnknownKeyError(key, [*names, *config_class._ALIASES], section=config_class.__name__)
            if value is not None:
                _check_override_value(config_class, key, value)
                checked[key] = value
        self.config_class = config_class
        self._fields = checked

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        if name in self.__dict__.get("config_class", _ValidatedConfig)._field_names():
            return None
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"{self.config_class.__name__}.reset({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"

    def as_dict(self) -> Dict[str, Any]:
        """The set fields (deep-copied)."""
        return copy.deepcopy(self._fields)

    def copy(self) -> "ConfigOverride":
        return ConfigOverride(self.config_class, copy.deepcopy(self._fields))

    def update(self, **kwargs: Any) -> "ConfigOverride":
        """A new override with ``kwargs`` set as well (None values skipped)."""
        return ConfigOverride(self.config_class, {**self._fields, **kwargs})

    def apply_to(self, base: Optional[_ValidatedConfig]) -> _ValidatedConfig:
        """``base`` with these fields changed (validated once), or a default config with them.

        An override of a subclass (``DBPruneConfig().reset(...)``, the shorthand
        ``cache_type="DBPrune"``) turns a base of the parent class into the subclass, keeping
        the base's values of the fields they share.
        """
        fields = self.as_dict()
        if base is None:
            return self.config_class(**fields)
        if type(base) is not self.config_class and self._changes_class_of(base, fields):
            names = set(self.config_class._field_names())
            shared = {name: getattr(base, name) for name in base._field_names() if name in names}
            shared.pop("cache_type", None)
            return self.config_class(**{**copy.deepcopy(shared), **fields})
        return base.with_fields(**fields)

    def _changes_class_of(self, base: _ValidatedConfig, fields: Dict[str, Any]) -> bool:
        # DBCacheConfig and DBPruneConfig are siblings (as in cache-dit): a DBPrune override, or
        # one that names the cache type, decides the class; a plain field override keeps the base's.
        if issubclass(self.config_class, type(base)):
            return True
        return isinstance(base, BasicCacheConfig) and (
            "cache_type" in fields or self.config_class is DBPruneConfig
        )


# --------------------------------------------------------------------------------------------------
# DBCache / DBPrune
# --------------------------------------------------------------------------------------------------


# What each decision signal measures lives in ``context.SIGNALS`` (the same names).
DECISION_SIGNALS = ("relative_l1", "lowpass_l1", "magnitude")
_EXTENSION_DEFAULTS: Dict[str, Any] = {
    "decision_signal": "relative_l1",
    "signal_lowpass_ratio": 0.25,
    "signal_mag_ratios": None,
    "compute_budget": None,
}


def _extension_tag(config: BasicCacheConfig) -> str:
    """``_SIGmagnitude_CB0.33``-style suffix for the extensions set (empty when off)."""
    set_here = config.extensions()
    tag = ""
    if "decision_signal" in set_here or "signal_lowpass_ratio" in set_here:
        tag += f"_SIG{config.decision_signal}"
    if config.compute_budget is not None:
        tag += f"_CB{config.compute_budget}"
    return tag


def _check_unit_fraction(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value <= 1.0:
        raise ConfigError(key, value, "a real number in (0, 1]")


def _check_positive_reals(key: str, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not value or not all(
        isinstance(item, numbers.Real)
        and not isinstance(item, bool)
        and math.isfinite(item)
        and item > 0
        for item in value
    ):
        raise ConfigError(key, value, "a non-empty list of finite real numbers > 0 (one per step)")


@dataclasses.dataclass
class BasicCacheConfig(_UpdatableConfig):
    """Dual Block Cache settings; same fields and defaults as cache-dit's ``DBCacheConfig``.

    See the project's cache-dit spec §1, §2 and §4 for what each field does at run time.
    """

    cache_type: CacheType = CacheType.DBCache
    # Blocks always computed at the front (F) and back (B) of every cached block list.
    Fn_compute_blocks: int = 8
    Bn_compute_blocks: int = 0
    # Cache when the relative L1 diff of the F residual is below this; <= 0 never caches,
    # >= 1 always caches (after the other gates).
    residual_diff_threshold: Any = 0.08
    max_accumulated_residual_diff_threshold: Optional[float] = None
    max_warmup_steps: int = 8
    warmup_interval: int = 1
    max_cached_steps: int = -1  # -1 = unlimited, per CFG branch
    max_continuous_cached_steps: int = -1  # -1 = unlimited, per CFG branch
    enable_separate_cfg: Optional[bool] = None  # None = auto-detect from the pipeline class
    cfg_compute_first: bool = False
    cfg_diff_compute_separate: bool = True
    num_inference_steps: Optional[int] = None
    steps_computation_mask: Optional[List[int]] = None
    steps_computation_policy: str = "dynamic"
    force_refresh_step_hint: Optional[int] = None
    force_refresh_step_policy: str = "once"
    # Our extensions (off by default; see docs/user_guide.md, "Decision signals and compute
    # budget"). They appear in as_dict() and strify() only when set, so a default config reads
    # exactly as cache-dit's.
    decision_signal: str = "relative_l1"
    signal_lowpass_ratio: float = 0.25
    signal_mag_ratios: Optional[List[float]] = None
    compute_budget: Optional[Union[int, float]] = None

    _ALIASES: ClassVar[Dict[str, str]] = {"enable_sperate_cfg": "enable_separate_cfg"}
    _OPTIONAL: ClassVar[FrozenSet[str]] = frozenset(
        {
            "max_accumulated_residual_diff_threshold",
            "enable_separate_cfg",
            "num_inference_steps",
            "steps_computation_mask",
            "force_refresh_step_hint",
            "signal_mag_ratios",
            "compute_budget",
        }
    )
    # Not a field (the fields are cache-dit's): the preset a ``steps_computation_mask: fast``
    # named. The mask is re-expanded from it whenever the step count changes (each request),
    # where cache-dit expands it once.
    _mask_policy: ClassVar[Optional[str]] = None
    _CHECKS: ClassVar[Dict[str, Checker]] = {
        "cache_type": _check_cache_type,
        "Fn_compute_blocks": _int_at_least(1),
        "Bn_compute_blocks": _int_at_least(0),
        "residual_diff_threshold": _check_real,
        "max_accumulated_residual_diff_threshold": _check_real,
        "max_warmup_steps": _int_at_least(0),
        "warmup_interval": _int_at_least(1),
        "max_cached_steps": _int_at_least(-1, " (-1 = unlimited)"),
        "max_continuous_cached_steps": _int_at_least(-1, " (-1 = unlimited)"),
        "enable_separate_cfg": _check_bool,
        "cfg_compute_first": _check_bool,
        "cfg_diff_compute_separate": _check_bool,
        "num_inference_steps": _int_at_least(1),
        "steps_computation_mask": _check_mask,
        "steps_computation_policy": _one_of("dynamic", "static"),
        "force_refresh_step_hint": _int_at_least(1),
        "force_refresh_step_policy": _one_of("once", "repeat"),
        "decision_signal": _one_of(*DECISION_SIGNALS),
        "signal_lowpass_ratio": _check_unit_fraction,
        "signal_mag_ratios": _check_positive_reals,
        "compute_budget": check_budget_value,
    }

    def _normalize(self) -> None:
        if self.cache_type is not None and not isinstance(self.cache_type, CacheType):
            self.cache_type = CacheType.parse(self.cache_type)
        mask = self.steps_computation_mask
        if isinstance(mask, str):
            policy = _mask_policy_of(mask)
            if policy is None:
                self.steps_computation_mask = scm.mask_from_string(mask.strip())
            self._mask_policy = policy
        elif isinstance(mask, tuple):
            self.steps_computation_mask = list(mask)
        if isinstance(self.signal_mag_ratios, tuple):
            self.signal_mag_ratios = list(self.signal_mag_ratios)
        if self._mask_policy is not None:
            if self.num_inference_steps is not None:
                # The preset is sized by num_inference_steps: check it before building the mask.
                self._CHECKS["num_inference_steps"]("num_inference_steps", self.num_inference_steps)
            self.steps_computation_mask = _preset_mask(self._mask_policy, self.num_inference_steps)

    def _check_relations(self) -> None:
        # cache-dit asserts this when it builds a context: with separate diffs per branch, the
        # non-CFG call of a pair must run first.
        if self.enable_separate_cfg and self.cfg_diff_compute_separate and self.cfg_compute_first:
            raise ConfigError(
                "cfg_compute_first",
                True,
                "False when enable_separate_cfg and cfg_diff_compute_separate are both true",
                hint="set cfg_diff_compute_separate: false to compute the CFG branch first",
            )
        check_budget_fits(
            self.compute_budget,
            self.num_inference_steps,
            self.max_warmup_steps,
            self.warmup_interval,
            self.steps_computation_mask,
        )

    def extensions(self) -> Dict[str, Any]:
        """Our extension fields that differ from their defaults (off: an empty dict)."""
        defaults = _EXTENSION_DEFAULTS
        return {key: getattr(self, key) for key in defaults if getattr(self, key) != defaults[key]}

    def as_dict(self) -> Dict[str, Any]:
        """cache-dit's fields, plus our extension fields where they are set."""
        found = super().as_dict()
        set_here = self.extensions()
        for key in _EXTENSION_DEFAULTS:
            if key not in set_here:
                del found[key]
        return found

    def strify(self) -> str:
        """The cache part of cache-dit's tag, e.g. ``DBCache_F8B0_W8I1M0MC0_R0.08_N28``."""
        tag = self._base_tag()
        if self.steps_computation_mask is not None:
            digits = "".join(str(flag) for flag in self.steps_computation_mask)
            tag += f"_SCM{digits}_{self.steps_computation_policy}"
        if self.num_inference_steps is not None:
            tag += f"_N{self.num_inference_steps}"
        if self.force_refresh_step_hint is not None:
            tag += f"_FR{self.force_refresh_step_hint}_{self.force_refresh_step_policy}"
        if self.enable_separate_cfg is not None:
            tag += f"_CFG{int(self.enable_separate_cfg)}"
        return tag + _extension_tag(self)

    def _base_tag(self) -> str:
        def at_least_0(value: Optional[int]) -> Optional[int]:
            # -1 (unlimited) prints as 0, like cache-dit; partial (reset) configs print None.
            return None if value is None else max(0, value)

        # f-string formatting on purpose: a 0-d tensor formats as its value (0.07999999821186066
        # for float32 0.08), which is what cache-dit prints.
        return (
            f"{self.cache_type}_F{self.Fn_compute_blocks}B{self.Bn_compute_blocks}_"
            f"W{self.max_warmup_steps}I{self.warmup_interval}"
            f"M{at_least_0(self.max_cached_steps)}"
            f"MC{at_least_0(self.max_continuous_cached_steps)}_"
            f"R{self.residual_diff_threshold}"
        )


@dataclasses.dataclass
class DBCacheConfig(BasicCacheConfig):
    """The DBCache settings, named as in cache-dit; DBPruneConfig is its sibling, not a subclass."""


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


def _preset_mask(policy: str, num_inference_steps: Optional[int]) -> Optional[List[int]]:
    """The preset's mask for this step count (None, with a warning, when it has none)."""
    if num_inference_steps is None:
        raise ConfigError(
            _MASK_KEY,
            policy,
            _MASK_ALLOWED,
            hint=f"the preset {policy!r} is sized by num_inference_steps; "
            "set num_inference_steps in the same config section",
        )
    return scm.request_mask(policy, num_inference_steps)


@dataclasses.dataclass
class DBPruneConfig(BasicCacheConfig):
    """Dynamic Block Prune settings; cache-dit's ``DBPruneConfig`` fields and defaults."""

    cache_type: CacheType = CacheType.DBPrune
    enable_dynamic_prune_threshold: bool = False
    max_dynamic_prune_threshold: Optional[float] = None
    dynamic_prune_threshold_relax_ratio: float = 1.25
    non_prune_block_ids: List[int] = dataclasses.field(default_factory=list)
    force_reduce_calibrator_vram: bool = False

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        **BasicCacheConfig._CHECKS,
        "enable_dynamic_prune_threshold": _check_bool,
        "max_dynamic_prune_threshold": _check_real,
        "dynamic_prune_threshold_relax_ratio": _check_positive_real,
        "non_prune_block_ids": _check_block_ids,
        "force_reduce_calibrator_vram": _check_bool,
    }
    _OPTIONAL: ClassVar[FrozenSet[str]] = DBCacheConfig._OPTIONAL | {"max_dynamic_prune_threshold"}

    def _normalize(self) -> None:
        super()._normalize()
        if isinstance(self.non_prune_block_ids, tuple):
            self.non_prune_block_ids = list(self.non_prune_block_ids)

    def _check_relations(self) -> None:
        super()._check_relations()
        for key, value in self.extensions().items():
            raise ConfigError(
                key,
                value,
                f"its default ({_EXTENSION_DEFAULTS[key]!r}) with DBPrune",
                hint="decision_signal and compute_budget are DBCache extensions; DBPrune decides "
                "per block with the relative-L1 diff",
            )

    def strify(self) -> str:
        """``DBPrune_F..B.._W..I..M..MC.._R{thr}``: DBPrune tags carry no SCM/N/FR/CFG parts."""
        return self._base_tag()


# --------------------------------------------------------------------------------------------------
# Calibrators
# --------------------------------------------------------------------------------------------------


def _check_calibrator_type(key: str, value: Any) -> None:
    if value not in CALIBRATOR_TYPES:
        raise ConfigError(
            key,
            value,
            "one of " + ", ".join(repr(name) for name in CALIBRATOR_TYPES),
            hint=_did_you_mean(value, CALIBRATOR_TYPES),
        )


def _check_non_negative_real(key: str, value: Any) -> None:
    _check_real(key, value)
    if value < 0:
        raise ConfigError(key, value, "a real number >= 0")


@dataclasses.dataclass
class CalibratorConfig(_UpdatableConfig):
    """Base calibrator settings; same fields and defaults as cache-dit's ``CalibratorConfig``.

    ``calibrator_kwargs`` are the stream's keyword arguments under cache-dit's names
    (``n_derivatives`` for TaylorSeer; ``history``, ``rank``, ``ridge``, ``svd_precision``,
    ``n_derivatives`` for DMD); the typed subclasses fill them from their own fields.
    """

    enable_calibrator: bool = False  # calibrate the hidden-states stream
    enable_encoder_calibrator: bool = False  # calibrate the encoder-hidden-states stream
    calibrator_type: str = "taylorseer"
    calibrator_cache_type: str = "residual"  # what is forecast: the M residual or M output
    calibrator_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)

    _RESET_KEEPS: ClassVar[Tuple[str, ...]] = ("calibrator_type",)
    _OPTIONAL: ClassVar[Optional[FrozenSet[str]]] = frozenset()
    _CHECKS: ClassVar[Dict[str, Checker]] = {
        "enable_calibrator": _check_bool,
        "enable_encoder_calibrator": _check_bool,
        "calibrator_type": _check_calibrator_type,
        "calibrator_cache_type": _one_of("residual", "hidden_states"),
        "calibrator_kwargs": _check_dict,
    }

    def _check_relations(self) -> None:
        if self.calibrator_type is None or self.calibrator_kwargs is None:
            return
        accepted = accepted_kwargs(self.calibrator_type)
        for key in self.calibrator_kwargs:
            if key not in accepted:
                raise UnknownKeyError(
                    key, accepted, section=f"calibrator_kwargs of {self.calibrator_type!r}"
                )

    def to_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments of this calibrator's streams (cache-dit's ``to_kwargs``)."""
        return dict(self.calibrator_kwargs or {})

    def make_calibrator(self) -> Calibrator:
        """A fresh calibrator (one CFG branch's named streams) for this config."""
        try:
            return Calibrator(self.calibrator_type, **self.to_kwargs())
        except ValueError as error:  # a value the stream refuses, e.g. n_derivatives=0
            raise ConfigError("calibrator_kwargs", self.to_kwargs(), str(error)) from error

    def strify(self) -> str:
        """``T0O0`` when no stream is calibrated, else the calibrator's tag (``T1O{order}`` ...)."""
        if not (self.enable_calibrator or self.enable_encoder_calibrator):
            return "T0O0"
        return self._tag()

    def _tag(self) -> str:
        # The base config runs its calibrator type with that type's defaults.
        tags = {"foca": "FoCa", "dmd": "DMDH6"}
        order = self.to_kwargs().get("n_derivatives", 1)
        return tags.get(self.calibrator_type, f"T1O{order}")


@dataclasses.dataclass
class TaylorSeerCalibratorConfig(CalibratorConfig):
    """TaylorSeer forecasting of cached residuals; cache-dit's defaults (both streams on, order 1).

    Note that YAML's ``enable_taylorseer: true`` leaves the encoder stream off unless
    ``enable_encoder_taylorseer: true`` is given, exactly like cache-dit's loader.
    """

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_type: str = "taylorseer"
    taylorseer_order: int = 1  # number of derivatives in the Taylor expansion

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        **CalibratorConfig._CHECKS,
        # Bounded: each cached stream keeps order + 1 tensors, allocated at every request.
        "taylorseer_order": _int_between(1, MAX_TAYLORSEER_ORDER),
    }

    def to_kwargs(self) -> Dict[str, Any]:
        return {**super().to_kwargs(), "n_derivatives": self.taylorseer_order}

    def _tag(self) -> str:
        return f"T1O{self.taylorseer_order}"


@dataclasses.dataclass
class FoCaCalibratorConfig(CalibratorConfig):
    """FoCa (forecast, then calibrate; arXiv 2508.16211); cache-dit's defaults (both streams on).

    FoCa has no hyper-parameters (cache-dit ignores ``calibrator_kwargs`` for it, and so do we).
    YAML's ``enable_foca: true`` leaves the encoder stream off unless ``enable_encoder_foca: true``.
    """

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_type: str = "foca"

    def to_kwargs(self) -> Dict[str, Any]:
        return {}

    def _tag(self) -> str:
        return "FoCa"


@dataclasses.dataclass
class DMDCalibratorConfig(CalibratorConfig):
    """Dynamic Mode Decomposition (exponential-basis) forecasting; cache-dit's fields and defaults.

    Not Distribution Matching Distillation. YAML's ``enable_dmd: true`` also turns the encoder
    stream on unless ``enable_encoder_dmd: false`` (cache-dit's loader).
    """

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_type: str = "dmd"
    dmd_history: int = 6  # computed snapshots kept per stream; the fit needs 4 equally spaced
    dmd_rank: int = 0  # SVD truncation rank; 0 drops modes below 1e-4 of the largest
    dmd_ridge: float = 1e-8  # Tikhonov term added to the inverted singular values
    dmd_svd_precision: str = "medium"  # low: randomised SVD; medium: gesdd; high: gesvd (CUDA)

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        **CalibratorConfig._CHECKS,
        "dmd_history": _int_at_least(1),
        "dmd_rank": _int_at_least(0),
        "dmd_ridge": _check_non_negative_real,
        "dmd_svd_precision": _one_of(*DMD_SVD_PRECISIONS),
    }

    def to_kwargs(self) -> Dict[str, Any]:
        return {
            **super().to_kwargs(),
            "history": self.dmd_history,
            "rank": self.dmd_rank,
            "ridge": self.dmd_ridge,
            "svd_precision": self.dmd_svd_precision,
        }

    def _tag(self) -> str:
        precision = (self.dmd_svd_precision or "medium")[0]
        return f"DMDH{self.dmd_history}" + ("" if precision == "m" else precision)



# --------------------------------------------------------------------------------------------------
# Parallelism and quantization sections (applied by dit_cache_backend.scaleout)
# --------------------------------------------------------------------------------------------------


class ParallelismBackend(str, enum.Enum):
    """cache-dit's parallelism backends. Members compare equal to their names as strings;
    ``NATIVE_DIFFUSER`` is an alias of ``CACHE_DIT``, as cache-dit canonicalizes it."""

    AUTO = "AUTO"
    CACHE_DIT = "CACHE_DIT"  # context parallelism
    NATIVE_DIFFUSER = "CACHE_DIT"
    NATIVE_PYTORCH = "NATIVE_PYTORCH"  # tensor parallelism
    NATIVE_HYBRID = "NATIVE_HYBRID"  # both
    NONE = "NONE"

    @classmethod
    def from_str(cls, backend_str: str) -> "ParallelismBackend":
        return _backend_name(backend_str, _PARALLEL_BACKENDS, "backend")


class QuantizeBackend(str, enum.Enum):
    """cache-dit's quantization backends (members compare equal to their names as strings)."""

    AUTO = "AUTO"
    TORCHAO = "TORCHAO"
    CACHE_DIT = "CACHE_DIT"  # cache-dit's own SVDQuant kernels
    NONE = "NONE"

    @classmethod
    def from_str(cls, backend_str: str) -> "QuantizeBackend":
        return _backend_name(backend_str, _QUANTIZE_BACKENDS, "backend")


# cache-dit's ParallelismBackend spellings (enum values and names, lower-cased) -> stored member.
# "None" is refused by cache-dit too.
_PARALLEL_BACKENDS = {
    "auto": ParallelismBackend.AUTO,
    "cache_dit": ParallelismBackend.CACHE_DIT,
    "native_diffuser": ParallelismBackend.CACHE_DIT,
    "native_pytorch": ParallelismBackend.NATIVE_PYTORCH,
    "native_hybrid": ParallelismBackend.NATIVE_HYBRID,
}
_PARALLEL_SIZES = ("ulysses_size", "ring_size", "tp_size")
_PARALLEL_SIZE_ALIASES = {"ulysses": "ulysses_size", "ring": "ring_size", "tp": "tp_size"}
# Old parallel_kwargs names that cache-dit still maps onto fields (with a deprecation warning).
_DEPRECATED_PARALLEL_KWARGS = {
    "experimental_ulysses_anything": "ulysses_anything",
    "experimental_ulysses_float8": "ulysses_float8",
    "experimental_ulysses_async": "ulysses_async",
}


def _backend_name(value: Any, table: Mapping[str, str], key: str) -> Any:
    """Map a backend given as a string or as one of cache-dit's enum members to its stored name."""
    if isinstance(value, enum.Enum):
        value = value.name
    if isinstance(value, str) and value.strip().lower() in table:
        return table[value.strip().lower()]
    raise ConfigError(
        key,
        value,
        "one of " + ", ".join(sorted(set(table))),
        hint=_did_you_mean(str(value).lower(), table),
    )


def _check_parallel_backend(key: str, value: Any) -> None:
    if value not in _PARALLEL_BACKENDS.values():
        _backend_name(value, _PARALLEL_BACKENDS, key)


@dataclasses.dataclass
class ParallelismConfig(_ValidatedConfig):
    """The ``parallelism_config`` section: cache-dit's public ``ParallelismConfig`` fields.

    Sizes may be ``"auto"`` (at most one of them), meaning "derived from the world size when
    applied": ``enable_cache`` resolves it (cache-dit resolves it at load time and therefore fails
    when the file is loaded outside ``torchrun``). ``parallel_kwargs`` (the form of SGLang's and
    cache-dit's examples) is copied onto the fields.
    """

    backend: str = "AUTO"
    ulysses_size: Union[int, str, None] = None
    ring_size: Union[int, str, None] = None
    tp_size: Union[int, str, None] = None
    use_ray: bool = False
    ray_num_workers: Optional[int] = None
    ray_address: Optional[str] = None
    ray_runtime_env: Optional[Dict[str, Any]] = None
    ray_init_kwargs: Dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"include_dashboard": False}
    )
    ray_worker_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    ray_master_port: int = 0
    ray_auto_shutdown: bool = True
    ray_transfer_backend: str = "auto"
    ray_transfer_custom_obj: bool = True
    ray_use_flashpack: bool = False
    ray_use_compile: bool = False
    ray_transfer_fn: Optional[Callable[[], Any]] = None
    cp_plan: Optional[Any] = None
    attention_backend: Optional[str] = None
    ulysses_anything: Optional[bool] = False
    ulysses_float8: Optional[bool] = False
    ulysses_async: Optional[bool] = False
    extra_parallel_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    ring_rotate_method: Optional[str] = "p2p"
    ring_convert_to_fp32: Optional[bool] = True
    extra_parallel_modules: Optional[List[Any]] = dataclasses.field(default_factory=list)
    # The nesting of SGLang's and cache-dit's examples: its keys are copied onto the fields above,
    # overriding them, as cache-dit does.
    parallel_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        "backend": _check_parallel_backend,
        "ulysses_size": _check_parallel_size,
        "ring_size": _check_parallel_size,
        "tp_size": _check_parallel_size,
        "use_ray": _check_bool,
        "ray_num_workers": _int_at_least(1),
        "ray_address": _check_str,
        "ray_runtime_env": _check_dict,
        "ray_init_kwargs": _check_dict,
        "ray_worker_options": _check_dict,
        "ray_master_port": _int_at_least(0, " (0 = pick a free port)"),
        "ray_auto_shutdown": _check_bool,
        "ray_transfer_backend": _check_str,
        "ray_transfer_custom_obj": _check_bool,
        "ray_use_flashpack": _check_bool,
        "ray_use_compile": _check_bool,
        "ray_transfer_fn": _check_callable,
        "cp_plan": _check_anything,
        "attention_backend": _check_str,
        "ulysses_anything": _check_bool,
        "ulysses_float8": _check_bool,
        "ulysses_async": _check_bool,
        "extra_parallel_kwargs": _check_dict,
        "ring_rotate_method": _check_str,
        "ring_convert_to_fp32": _check_bool,
        "extra_parallel_modules": _check_modules,
        "parallel_kwargs": _check_dict,
    }

    def _normalize(self) -> None:
        if isinstance(self.parallel_kwargs, dict) and self.parallel_kwargs:
            fields = [name for name in self._field_names() if name != "parallel_kwargs"]
            for key, value in self.parallel_kwargs.items():
                target = _DEPRECATED_PARALLEL_KWARGS.get(key, key)
                if target not in fields:
                    raise UnknownKeyError(
                        key,
                        [*fields, *_DEPRECATED_PARALLEL_KWARGS],
                        section="parallelism_config.parallel_kwargs",
                    )
                if key in _DEPRECATED_PARALLEL_KWARGS:
                    logger.warning(
                        "parallelism_config.parallel_kwargs.%s is deprecated; use %s", key, target
                    )
                setattr(self, target, value)
        if self.backend is not None:
            self.backend = _backend_name(self.backend, _PARALLEL_BACKENDS, "backend")
        for name in _PARALLEL_SIZES:
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() == "auto":
                setattr(self, name, "auto")

    def _check_relations(self) -> None:
        autos = [name for name in _PARALLEL_SIZES if getattr(self, name) == "auto"]
        if len(autos) > 1:
            raise ConfigError(
                autos[1],
                "auto",
                "at most one of ulysses_size, ring_size, tp_size set to 'auto'",
                hint=f"{autos[0]} is already 'auto'",
            )
        needed = self._backend_needed()
        if needed is None:
            # cache-dit refuses a parallelism_config that parallelizes nothing.
            raise ConfigError(
                "parallelism_config",
                {name: getattr(self, name) for name in _PARALLEL_SIZES},
                "at least one of ulysses_size, ring_size, tp_size > 1 or 'auto'",
            )
        if self.backend not in ("AUTO", needed):
            raise ConfigError(
                "backend",
                self.backend,
                f"AUTO or {needed} for these sizes",
                hint="context parallelism runs on CACHE_DIT, tensor parallelism on "
                "NATIVE_PYTORCH, both together on NATIVE_HYBRID",
            )

    def _backend_needed(self) -> Optional[str]:
        def enabled(value: Any) -> bool:
            return value == "auto" or (_is_int(value) and value > 1)

        context = enabled(self.ulysses_size) or enabled(self.ring_size)
        tensor = enabled(self.tp_size)
        if context and tensor:
            return "NATIVE_HYBRID"
        if context:
            return "CACHE_DIT"
        if tensor:
            return "NATIVE_PYTORCH"
        return None


_QUANTIZE_BACKENDS = {
    "auto": QuantizeBackend.AUTO,
    "ao": QuantizeBackend.TORCHAO,
    "torchao": QuantizeBackend.TORCHAO,
    "cache_dit": QuantizeBackend.CACHE_DIT,
    "cache-dit": QuantizeBackend.CACHE_DIT,
    "cachedit": QuantizeBackend.CACHE_DIT,
}
_SVDQ_QUANT_TYPE = re.compile(r"svdq_(?:int4|nvfp4)_r\d+(?:_dq)?")


def _check_quantize_backend(key: str, value: Any) -> None:
    if value not in _QUANTIZE_BACKENDS.values():
        _backend_name(value, _QUANTIZE_BACKENDS, key)


def _check_components(key: str, value: Any) -> None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return
    if isinstance(value, dict) and all(
        isinstance(name, str) and isinstance(spec, dict) for name, spec in value.items()
    ):
        return
    raise ConfigError(
        key, value, "a list of component names, or {component: {quant_type: ...}} mapping"
    )


def _check_precision_plan(key: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(layer, str) and isinstance(kind, str) for layer, kind in value.items()
    ):
        raise ConfigError(key, value, "a mapping of layer-name pattern to quant_type")


@dataclasses.dataclass
class QuantizeConfig(_ValidatedConfig):
    """The ``quantize_config`` section: cache-dit's ``QuantizeConfig`` fields and defaults."""

    backend: str = "AUTO"
    quant_type: str = "float8_per_row"
    exclude_layers: Optional[List[str]] = dataclasses.field(
        default_factory=lambda: ["embedder", "embed", "modulation", "mod"]
    )
    regional_quantize: bool = True
    repeated_blocks: List[str] = dataclasses.field(default_factory=list)
    filter_fn: Optional[Callable[..., bool]] = None
    components_to_quantize: Union[List[str], Dict[str, Dict[str, Any]], None] = None
    per_tensor_fallback: bool = True
    precision_plan: Optional[Dict[str, str]] = None
    calibrate_fn: Optional[Callable[..., Any]] = None
    serialize_to: Optional[str] = None
    svdq_kwargs: Optional[Dict[str, Any]] = None
    verbose: bool = False

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        "backend": _check_quantize_backend,
        "quant_type": _check_str,
        "exclude_layers": _check_str_list,
        "regional_quantize": _check_bool,
        "repeated_blocks": _check_str_list,
        "filter_fn": _check_callable,
        "components_to_quantize": _check_components,
        "per_tensor_fallback": _check_bool,
        "precision_plan": _check_precision_plan,
        "calibrate_fn": _check_callable,
        "serialize_to": _check_str,
        "svdq_kwargs": _check_dict,
        "verbose": _check_bool,
    }

    def _normalize(self) -> None:
        if isinstance(self.quant_type, str):
            self.quant_type = self.quant_type.lower()
        if self.backend is not None:
            self.backend = _backend_name(self.backend, _QUANTIZE_BACKENDS, "backend")
        if self.backend == "AUTO" and isinstance(self.quant_type, str):
            # cache-dit's choice: SVDQuant runs on its own kernels, everything else on torchao.
            svdq = self.quant_type.startswith("svdq")
            self.backend = QuantizeBackend.CACHE_DIT if svdq else QuantizeBackend.TORCHAO

    def _check_relations(self) -> None:
        svdq = isinstance(self.quant_type, str) and self.quant_type.startswith("svdq")
        if svdq and not _SVDQ_QUANT_TYPE.fullmatch(self.quant_type):
            raise ConfigError(
                "quant_type",
                self.quant_type,
                "svdq_int4_r{rank}, svdq_nvfp4_r{rank}, optionally with a _dq suffix",
            )
        if self.svdq_kwargs is not None and not svdq:
            raise ConfigError(
                "svdq_kwargs",
                self.svdq_kwargs,
                "only with an svdq_* quant_type",
                hint=f"quant_type is {self.quant_type!r}",
            )


# --------------------------------------------------------------------------------------------------
# Loading YAML / JSON / dict
# --------------------------------------------------------------------------------------------------

_SECTIONS = ("cache_config", "parallelism_config", "attention_backend", "quantize_config")

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


def load_configs(
    path_or_dict: PathOrDict,
    return_dict: bool = True,
    *,
    reset: bool = False,
) -> Union[Dict[str, Any], Tuple[Any, Any, Any, Any, Any]]:
    """Load every section of a cache-dit config file or dict, for ``enable_cache(pipe, **...)``.

    Returns ``{"cache_config", "calibrator_config", "parallelism_config", "attention_backend",
    "quantize_config"}`` (missing sections are ``None``), or that 5-tuple if ``return_dict`` is
    false. ``path_or_dict`` is a YAML or JSON file path (str or Path; ``.json`` files are parsed as
    JSON, anything else as YAML) or a mapping. Without a ``cache_config`` section and without any of
    the other sections, the whole input is read as the flat legacy form of cache options.
    ``reset=True`` builds partial cache/calibrator configs (every unset field ``None``).

    Raises ConfigError (or a subclass: UnknownKeyError, NotSupportedYetError,
    ConfigFileNotFoundError) naming the file, section and key at fault.
    """
    raw, source = _read_source(path_or_dict)
    cache_config, calibrator_config = _cache_configs_from(raw, source, reset)
    parallelism_config = _parallelism_from(raw, source)
    attention_backend = _attention_backend_from(raw)
    quantize_config = _quantize_from(raw, source)
    if return_dict:
        return {
            "cache_config": cache_config,
            "calibrator_config": calibrator_config,
            "parallelism_config": parallelism_config,
            "attention_backend": attention_backend,
            "quantize_config": quantize_config,
        }
    return cache_config, calibrator_config, parallelism_config, attention_backend, quantize_config


def load_parallelism_config(path_or_dict: PathOrDict, **kwargs: Any) -> Optional[ParallelismConfig]:
    """Load only the ``parallelism_config`` section (``None`` when there is none).

    Unlike cache-dit, ``"auto"`` sizes stay ``"auto"`` until ``enable_cache`` resolves them from
    the world size. ``check_only=True`` returns whether the section exists.
    """
    raw, source = _read_source(path_or_dict)
    if kwargs.get("check_only", False):
        return "parallelism_config" in raw  # type: ignore[return-value]
    return _parallelism_from(raw, source)


def load_quantize_config(path_or_dict: PathOrDict, **kwargs: Any) -> Optional[QuantizeConfig]:
    """Load only the ``quantize_config`` section (``None`` when there is none)."""
    return _quantize_from(*_read_source(path_or_dict))


def load_attn_backend_config(path_or_dict: PathOrDict, **kwargs: Any) -> Optional[str]:
    """Load only the top-level ``attention_backend`` name (``None`` when there is none)."""
    return _attention_backend_from(_read_source(path_or_dict)[0])


def load_cache_config(
    path_or_dict: PathOrDict, reset: bool = False
) -> Tuple[Optional[DBCacheConfig], Optional[CalibratorConfig]]:
    """Load only ``(cache_config, calibrator_config)`` from a config file or dict.

    Both are ``None`` when the input has other sections but no ``cache_config``. With
    ``reset=True`` the configs start all-``None`` so that only the given fields are set (used by
    ``refresh_context`` and per-block-list overrides).
    """
    raw, source = _read_source(path_or_dict)
    return _cache_configs_from(raw, source, reset)


def _where(section: str, source: Optional[str]) -> str:
    return f"{section} of {source}" if source else section


def _read_source(path_or_dict: PathOrDict) -> Tuple[Dict[str, Any], Optional[str]]:
    """The top-level mapping and, for files, the path to name in messages."""
    if isinstance(path_or_dict, Mapping):
        return _copy_containers(path_or_dict), None
    if isinstance(path_or_dict, (str, os.PathLike)):
        path = Path(path_or_dict)
        return _parse_file(path), str(path)
    raise ConfigError(
        "path_or_dict",
        path_or_dict,
        "the path of a YAML or JSON file (str or pathlib.Path) or a dict",
    )


def _copy_containers(value: Any) -> Any:
    """Copy dicts and lists so parsing never mutates the caller's data; leaves (modules, tensors,
    callables) are shared rather than deep-copied."""
    if isinstance(value, Mapping):
        return {key: _copy_containers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_containers(item) for item in value]
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key set twice in one mapping is an error (the YAML
    spec requires unique keys; PyYAML silently keeps the last value)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    str(key),
                    "set twice",
                    "each key once per mapping",
                    message=f"key {key!r} is set twice (line {key_node.start_mark.line + 1})",
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_file(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = None
        if "\n" in str(path) or ": " in str(path):
            hint = (
                "load_configs takes a file path or a dict, not YAML text; "
                "pass yaml.safe_load(text)"
            )
        raise ConfigFileNotFoundError(str(path), hint=hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "path", str(path), "a readable UTF-8 YAML or JSON file", hint=str(exc)
        ) from exc

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                "path",
                str(path),
                "a valid JSON file",
                message=f"cannot parse JSON file {path}: line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}",
            ) from exc
    else:
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(
                "path",
                str(path),
                "a valid YAML file",
                message=f"cannot parse YAML file {path}: {where}{problem}",
            ) from exc

    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            "path",
            str(path),
            "a file whose top level is a mapping of sections or cache options",
            message=f"{path}: the top level must be a mapping of sections or cache options, "
            f"got {got}",
        )
    return dict(data)


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


def _cache_configs_from(
    raw: Dict[str, Any], source: Optional[str], reset: bool
) -> Tuple[Optional[DBCacheConfig], Optional[CalibratorConfig]]:
    if any(section in raw for section in _SECTIONS):
        _check_keys(raw, _SECTIONS, _where("the top level", source))
        if "cache_config" not in raw:
            return None, None
        section = _require_mapping(raw["cache_config"], _where("cache_config", source))
        return _parse_cache_options(section, _where("cache_config", source), reset, ())
    # Flat legacy form: the whole input is cache options. The section names are listed as valid
    # keys too, so that a misspelt `cache_confg:` is answered with `cache_config`.
    return _parse_cache_options(raw, _where("the cache options", source), reset, _SECTIONS)


def _parse_cache_options(
    options: Dict[str, Any], section: str, reset: bool, also_valid: Tuple[str, ...]
) -> Tuple[DBCacheConfig, Optional[CalibratorConfig]]:
    config_class = _cache_config_class(options)
    valid = [
        *config_class._field_names(),
        *config_class._ALIASES,
        *sorted(_CALIBRATOR_KEYS),
        *also_valid,
    ]
    _check_keys(options, valid, section)

    calibrator_options = {key: options.pop(key) for key in list(options) if key in _CALIBRATOR_KEYS}
    calibrator_config = _calibrator_from(calibrator_options, reset)
    if "cache_type" in options:
        options["cache_type"] = CacheType.parse(options["cache_type"])
    if reset:
        return config_class().reset(**options), calibrator_config
    cache_config = config_class()
    cache_config.update(**options)
    return cache_config, calibrator_config


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


def _cache_config_class(options: Mapping[str, Any]) -> type:
    cache_type = options.get("cache_type")
    if cache_type is None:
        return DBCacheConfig
    parsed = CacheType.parse(cache_type)
    if parsed is CacheType.NONE:
        raise ConfigError(
            "cache_type",
            cache_type,
            "DBCache or DBPrune",
            hint="to run without caching, leave the cache options out",
        )
    return DBPruneConfig if parsed is CacheType.DBPrune else DBCacheConfig


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
            enabled[1], True, f"false while {enabled[0]} is true (the calibrators exclude each other)"
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


def _parallelism_from(raw: Mapping[str, Any], source: Optional[str]) -> Optional[ParallelismConfig]:
    if "parallelism_config" not in raw:
        return None
    where = _where("parallelism_config", source)
    options = _require_mapping(raw["parallelism_config"], where)
    fields = ParallelismConfig._field_names()
    _check_keys(options, [*fields, *_PARALLEL_SIZE_ALIASES], where)
    for alias, canonical in _PARALLEL_SIZE_ALIASES.items():
        if alias not in options:
            continue
        value = options.pop(alias)
        if canonical in options and options[canonical] != value:
            raise ConfigError(
                alias,
                value,
                f"the same value as {canonical} ({options[canonical]!r})",
                hint=f"'{alias}' is an alias of '{canonical}'; set only one of them",
            )
        options[canonical] = value
    return ParallelismConfig(**options)


def _attention_backend_from(raw: Mapping[str, Any]) -> Optional[str]:
    attention_backend = raw.get("attention_backend")
    if attention_backend is not None:
        _check_str("attention_backend", attention_backend)
    return attention_backend


def _quantize_from(raw: Mapping[str, Any], source: Optional[str]) -> Optional[QuantizeConfig]:
    if "quantize_config" not in raw:
        return None
    where = _where("quantize_config", source)
    options = _require_mapping(raw["quantize_config"], where)
    _check_keys(options, QuantizeConfig._field_names(), where)
    # Like cache-dit, an empty YAML value means "use the default".
    return QuantizeConfig(**{key: value for key, value in options.items() if value is not None})
