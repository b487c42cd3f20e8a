"""``cache_dit.summary``: the statistics and tags of the caches."""

from dit_cache_backend.compat import supported_matrix  # noqa: F401
from dit_cache_backend.stats import CacheStats, strify, summary  # noqa: F401
