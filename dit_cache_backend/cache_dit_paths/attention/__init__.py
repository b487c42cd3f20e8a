"""``cache_dit.attention``: ``set_attn_backend`` (its kernels and registry are not provided)."""

from dit_cache_backend.cache_dit_paths._lazy import top_level

__getattr__ = top_level(__name__, ["set_attn_backend"])
