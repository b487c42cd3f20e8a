"""``cache_dit.caching.params_modifier``: ``ParamsModifier``."""

from dit_cache_backend.block_adapter import ParamsModifier  # noqa: F401
