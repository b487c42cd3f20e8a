"""dit_cache_backend: training-free cache acceleration for Diffusion Transformers.

A drop-in for cache-dit's common API — ``import dit_cache_backend as cache_dit`` keeps code
working — with DBCache, TaylorSeer, SCM steps masks and separate-CFG caching implemented here.
"""

from .block_adapter import BlockAdapter, ParamsModifier
from .registry import BlockAdapterRegister, get_adapter, supported_pipelines
from .api import disable_cache, enable_cache, refresh_context, set_attn_backend
from .backend import CUSTOM_DIT_ENABLERS, CacheDiTBackend, register_enabler
from .calibrators import TaylorSeerCalibrator
from .config import (
    BasicCacheConfig,
    CacheType,
    CalibratorConfig,
    DBCacheConfig,
    DBPruneConfig,
    TaylorSeerCalibratorConfig,
    load_cache_config,
    load_configs,
)
from .config import (  # scale-out sections (dit_cache_backend.scaleout applies them)
    ParallelismBackend,
    ParallelismConfig,
    QuantizeBackend,
    QuantizeConfig,
    load_attn_backend_config,
    load_parallelism_config,
    load_quantize_config,
)
from .scaleout import set_compile_configs
from .compat import (
    NOT_PROVIDED as _NOT_PROVIDED,
    NotProvidedError,
    block_range,
    cache_type,
    disable_print,
    init_logger,
    load_options,
    maybe_empty_cache,
    not_provided as _not_provided,
    supported_matrix,
)
from .config import DMDCalibratorConfig, FoCaCalibratorConfig
from .errors import (
    ConfigError,
    DitCacheError,
    NotSupportedYetError,
    UnknownKeyError,
    UnsupportedModelError,
)
from .offload import (
    LayerwiseOffloadHandle,
    LayerwiseOffloadHandleGroup,
    get_layerwise_offload_handles,
    layerwise_cpu_offload,
    layerwise_offload,
    remove_layerwise_offload,
)
from .patterns import ForwardPattern
from .policy import Decision
from .scm import steps_mask
from .stats import CacheStats, contexts_summary, strify, summary

__version__ = "0.1.0"
version_tuple = (0, 1, 0)

NONE = CacheType.NONE
DBCache = CacheType.DBCache
DBPrune = CacheType.DBPrune
Pattern_0 = ForwardPattern.Pattern_0
Pattern_1 = ForwardPattern.Pattern_1
Pattern_2 = ForwardPattern.Pattern_2
Pattern_3 = ForwardPattern.Pattern_3
Pattern_4 = ForwardPattern.Pattern_4
Pattern_5 = ForwardPattern.Pattern_5

__all__ = [
    "BasicCacheConfig",
    "BlockAdapter",
    "BlockAdapterRegister",
    "CUSTOM_DIT_ENABLERS",
    "CacheDiTBackend",
    "CacheStats",
    "CacheType",
    "CalibratorConfig",
    "ConfigError",
    "DBCache",
    "DBCacheConfig",
    "DBPrune",
    "DBPruneConfig",
    "Decision",
    "DitCacheError",
    "ForwardPattern",
    "LayerwiseOffloadHandle",
    "LayerwiseOffloadHandleGroup",
    "NONE",
    "NotProvidedError",
    "NotSupportedYetError",
    "ParallelismBackend",
    "ParallelismConfig",
    "ParamsModifier",
    "QuantizeBackend",
    "QuantizeConfig",
    "TaylorSeerCalibrator",
    "TaylorSeerCalibratorConfig",
    "UnknownKeyError",
    "UnsupportedModelError",
    "block_range",
    "cache_type",
    "contexts_summary",
    "disable_cache",
    "disable_print",
    "enable_cache",
    "get_adapter",
    "get_layerwise_offload_handles",
    "init_logger",
    "layerwise_cpu_offload",
    "layerwise_offload",
    "load_attn_backend_config",
    "load_cache_config",
    "load_configs",
    "load_options",
    "load_parallelism_config",
    "load_quantize_config",
    "maybe_empty_cache",
    "refresh_context",
    "register_enabler",
    "remove_layerwise_offload",
    "set_attn_backend",
    "set_compile_configs",
    "steps_mask",
    "strify",
    "summary",
    "supported_matrix",
    "supported_pipelines",
    "version_tuple",
]


def __getattr__(name: str):
    # cache-dit names with no counterpart here fail loudly, saying what to use instead.
    if name in _NOT_PROVIDED:
        raise _not_provided(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ += ["DMDCalibratorConfig", "FoCaCalibratorConfig"]
