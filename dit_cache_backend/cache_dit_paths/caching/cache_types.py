"""``cache_dit.caching.cache_types``: ``CacheType``, ``cache_type``, ``block_range``."""

from dit_cache_backend.compat import block_range, cache_type  # noqa: F401
from dit_cache_backend.config import CacheType  # noqa: F401
