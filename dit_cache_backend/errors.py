"""Exceptions raised by dit_cache_backend.

Every error about user input names the offending key, the value it got and what is allowed, so the
message alone is enough to fix the call.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional


class DitCacheError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DitCacheError, ValueError):
    """A configuration key or value is invalid.

    ``key`` is the offending key (dotted for nested sections), ``value`` what was given and
    ``allowed`` a human-readable description of the accepted values.
    """

    def __init__(
        self,
        key: str,
        value: Any,
        allowed: str,
        *,
        hint: Optional[str] = None,
        message: Optional[str] = None,
    ) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        self.hint = hint
        if message is None:
            message = f"invalid value for '{key}': got {value!r}; allowed: {allowed}"
            if hint:
                message += f". {hint}"
        super().__init__(message)


class UnknownKeyError(ConfigError):
    """A configuration section contains a key that does not exist."""

    def __init__(self, key: str, valid_keys: Iterable[str], *, section: str = "config") -> None:
        valid = sorted(valid_keys)
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        self.suggestion = close[0] if close else None
        hint = f"did you mean '{self.suggestion}'?" if self.suggestion else None
        allowed = ", ".join(valid)
        message = f"unknown key '{key}' in {section}"
        if hint:
            message += f"; {hint}"
        message += f" Valid keys: {allowed}"
        super().__init__(key, key, allowed, hint=hint, message=message)


class NotSupportedYetError(ConfigError):
    """A recognised, well-formed option that this version of dit_cache_backend cannot apply yet."""

    def __init__(self, key: str, value: Any, *, what_works: str) -> None:
        super().__init__(
            key,
            value,
            what_works,
            hint="this option parses and validates, but is not supported yet by dit_cache_backend",
        )


class UnsupportedModelError(DitCacheError, ValueError):
    """dit_cache_backend does not know which block lists of this model to cache."""


class UnsupportedStepCountError(ConfigError):
    """A steps-mask preset cannot be built for this number of inference steps."""
