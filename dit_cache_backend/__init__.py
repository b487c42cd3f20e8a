"""dit_cache_backend: training-free cache acceleration for Diffusion Transformers.

A drop-in for cache-dit's common API — ``import dit_cache_backend as cache_dit`` keeps code
working — with DBCache, TaylorSeer, SCM steps masks and separate-CFG caching implemented here.
"""

from .block_adapter import BlockAdapter, ParamsModifier
from .registry import BlockAdapterRegister, get_adapter, supported_pipelines
from .api import disable_cache, enable_cache, refresh_context
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
from .config import DMDCalibratorConfig, FoCaCalibratorConfig
from .errors import (
    ConfigError,
    DitCacheError,
    NotSupportedYetError,
    UnknownKeyError,
    UnsupportedModelError,
)
from .patterns import ForwardPattern
from .policy import Decision
from .scm import steps_mask
from .stats import CacheStats, strify, summary

__version__ = "0.1.0"

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
    "NONE",
    "NotSupportedYetError",
    "ParamsModifier",
    "TaylorSeerCalibrator",
    "TaylorSeerCalibratorConfig",
    "UnknownKeyError",
    "UnsupportedModelError",
    "disable_cache",
    "enable_cache",
    "get_adapter",
    "load_cache_config",
    "load_configs",
    "refresh_context",
    "steps_mask",
    "strify",
    "summary",
    "supported_pipelines",
]
__all__ += ["DMDCalibratorConfig", "FoCaCalibratorConfig"]
