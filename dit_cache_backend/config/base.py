"""The validated, updatable dataclass base of every config, and per-list overrides
(:class:`ConfigOverride`: only the keys that were set)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import (
    Any,
    ClassVar,
    Dict,
    FrozenSet,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
)

from ..errors import ConfigError, UnknownKeyError
from .checks import _MASK_KEY, Checker, _mask_policy_of

logger = logging.getLogger(__name__)


_C = TypeVar("_C", bound="_ValidatedConfig")


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


    @classmethod
    def _override_decides_class(cls, base: "_ValidatedConfig", fields: Mapping[str, Any]) -> bool:
        """Whether an override of this class applied to ``base`` makes a config of this class."""
        return issubclass(cls, type(base))

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
        decides = self.config_class._override_decides_class(base, fields)
        if type(base) is not self.config_class and decides:
            names = set(self.config_class._field_names())
            shared = {name: getattr(base, name) for name in base._field_names() if name in names}
            shared.pop("cache_type", None)
            return self.config_class(**{**copy.deepcopy(shared), **fields})
        return base.with_fields(**fields)
