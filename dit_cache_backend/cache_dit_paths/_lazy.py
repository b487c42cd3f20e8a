"""Names a cache-dit path re-exports from the package top level when they are there.

Some names of a path come from work merged separately (attention backends, parallelism,
quantization, compile); reading them through the package keeps each alias module one line long.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable


def top_level(module_name: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that returns ``dit_cache_backend.<name>`` for the given names."""
    provided = frozenset(names)

    def __getattr__(name: str) -> Any:
        import dit_cache_backend

        if name in provided:
            return getattr(dit_cache_backend, name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
