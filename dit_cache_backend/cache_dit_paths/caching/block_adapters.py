"""``cache_dit.caching.block_adapters``: ``BlockAdapter``, ``BlockAdapterRegister``."""

from dit_cache_backend.adapter import BlockAdapter, BlockAdapterRegister  # noqa: F401
