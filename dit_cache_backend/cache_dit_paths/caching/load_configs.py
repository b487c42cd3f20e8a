"""``cache_dit.caching.load_configs``: the YAML / dict loaders."""

from dit_cache_backend.cache_dit_paths._lazy import top_level
from dit_cache_backend.compat import load_options  # noqa: F401
from dit_cache_backend.config import load_cache_config, load_configs  # noqa: F401

__getattr__ = top_level(
    __name__, ["load_parallelism_config", "load_quantize_config", "load_attn_backend_config"]
)
