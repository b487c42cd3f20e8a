"""Typed configuration objects and the cache-dit YAML/JSON/dict loader.

One concept per module, from the bottom up: ``checks`` (value and key checks), ``base`` (the
validated dataclass base and per-list overrides), ``cache`` (DBCache / DBPrune), ``calibrator``
(TaylorSeer, FoCa, DMD), ``scaleout`` (parallelism, quantization), ``flat`` (cache-dit's flat
calibrator keys and flat refresh options), ``loader`` (files and dicts) and ``framework`` (the
serving frameworks' flat settings).

The names, fields and defaults mirror cache-dit 1.5.3 so that ``import dit_cache_backend as
cache_dit`` keeps user code and existing YAML files working. Where cache-dit silently accepts a
mistake, this module refuses it with an error that names the key, the value and what is allowed:

* every unknown key, in a config object's ``update()`` and at any level of a YAML file, raises
  :class:`UnknownKeyError` with the closest valid key; the one exception is ``enable_sperate_cfg``
  (the misspelling in the published docs), which is accepted as ``enable_separate_cfg`` with a
  warning;
* values are type- and range-checked when a config is built or updated (``None`` is always allowed,
  because ``reset()`` builds partial configs that only override some fields);
* ``steps_computation_mask: fast`` without ``num_inference_steps`` is an error in every form (cache-
  dit stores the string as the mask in the flat legacy form);
* ``cache_type: DBCache`` from YAML is stored as :class:`CacheType`, not as a string.

Parallelism, quantization and attention-backend sections parse and validate here like cache-dit's;
``enable_cache`` hands them to the engines that apply them (``dit_cache_backend.scaleout``).
"""

from .base import ConfigOverride
from .cache import BasicCacheConfig, CacheType, DBCacheConfig, DBPruneConfig
from .calibrator import (
    CalibratorConfig,
    DMDCalibratorConfig,
    FoCaCalibratorConfig,
    TaylorSeerCalibratorConfig,
)
from .loader import (
    ConfigFileNotFoundError,
    load_attn_backend_config,
    load_cache_config,
    load_configs,
    load_parallelism_config,
    load_quantize_config,
)
from .scaleout import (
    ParallelismBackend,
    ParallelismConfig,
    QuantizeBackend,
    QuantizeConfig,
)

__all__ = [
    "ConfigOverride",
    "CacheType",
    "DBCacheConfig",
    "BasicCacheConfig",
    "DBPruneConfig",
    "CalibratorConfig",
    "TaylorSeerCalibratorConfig",
    "FoCaCalibratorConfig",
    "DMDCalibratorConfig",
    "ParallelismConfig",
    "QuantizeConfig",
    "ParallelismBackend",
    "QuantizeBackend",
    "ConfigFileNotFoundError",
    "load_configs",
    "load_cache_config",
    "load_parallelism_config",
    "load_quantize_config",
    "load_attn_backend_config",
]
