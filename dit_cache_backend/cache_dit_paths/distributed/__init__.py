"""``cache_dit.distributed``: ``ParallelismConfig`` and ``ParallelismBackend`` (no planners)."""

from dit_cache_backend.cache_dit_paths._lazy import top_level

__getattr__ = top_level(__name__, ["ParallelismConfig", "ParallelismBackend"])
