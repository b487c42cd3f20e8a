"""``cache_dit.compile``: ``set_compile_configs``."""

from dit_cache_backend.cache_dit_paths._lazy import top_level

__getattr__ = top_level(__name__, ["set_compile_configs"])
