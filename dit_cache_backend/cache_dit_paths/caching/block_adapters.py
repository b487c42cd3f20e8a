"""``cache_dit.caching.block_adapters``: ``BlockAdapter``, ``BlockAdapterRegister``."""

from dit_cache_backend.block_adapter import BlockAdapter  # noqa: F401
from dit_cache_backend.registry import BlockAdapterRegister  # noqa: F401
