"""``cache_dit.caching``: the caching API, configs, adapters and loaders."""

# Submodules first: the names imported below rebind `load_configs` etc. to the functions.
from . import (  # noqa: F401
    block_adapters,
    cache_contexts,
    cache_interface,
    cache_types,
    forward_pattern,
    load_configs,
    params_modifier,
)
from dit_cache_backend.cache_dit_paths._lazy import top_level
from .block_adapters import BlockAdapter, BlockAdapterRegister  # noqa: F401
from .cache_contexts import (  # noqa: F401
    BasicCacheConfig,
    CalibratorConfig,
    DBCacheConfig,
    DBPruneConfig,
    TaylorSeerCalibratorConfig,
)
from .cache_interface import (  # noqa: F401
    disable_cache,
    enable_cache,
    get_adapter,
    refresh_context,
    steps_mask,
    supported_pipelines,
)
from .cache_types import CacheType, block_range, cache_type  # noqa: F401
from .forward_pattern import ForwardPattern  # noqa: F401
from .load_configs import (  # noqa: F401
    load_cache_config,
    load_configs,
    load_options,
)
from .params_modifier import ParamsModifier  # noqa: F401

__getattr__ = top_level(
    __name__,
    [
        "FoCaCalibratorConfig",
        "DMDCalibratorConfig",
        "load_parallelism_config",
        "load_quantize_config",
        "load_attn_backend_config",
    ],
)
