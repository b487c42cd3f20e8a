"""``cache_dit.caching.cache_contexts``: the cache and calibrator configs."""

from dit_cache_backend.cache_dit_paths._lazy import top_level
from dit_cache_backend.config import (  # noqa: F401
    BasicCacheConfig,
    CalibratorConfig,
    DBCacheConfig,
    DBPruneConfig,
    TaylorSeerCalibratorConfig,
)

__getattr__ = top_level(__name__, ["FoCaCalibratorConfig", "DMDCalibratorConfig"])
