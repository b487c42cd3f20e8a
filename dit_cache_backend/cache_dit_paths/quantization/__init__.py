"""``cache_dit.quantization``: ``QuantizeConfig`` and ``QuantizeBackend`` (no quantizers)."""

from dit_cache_backend.cache_dit_paths._lazy import top_level

__getattr__ = top_level(__name__, ["QuantizeConfig", "QuantizeBackend"])
