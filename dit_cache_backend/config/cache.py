"""Cache configs: :class:`CacheType`, :class:`BasicCacheConfig`, :class:`DBCacheConfig`,
:class:`DBPruneConfig` (cache-dit 1.5.3's fields and defaults)."""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import (
    Any,
    ClassVar,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Union,
)

from .. import scm
from ..budget import check_budget_fits
from ..errors import ConfigError
from .base import _UpdatableConfig
from .checks import (
    _MASK_ALLOWED,
    _MASK_KEY,
    Checker,
    _check_block_ids,
    _check_bool,
    _check_mask,
    _check_positive_real,
    _check_real,
    _did_you_mean,
    _int_at_least,
    _mask_policy_of,
    _one_of,
)
from .extensions import EXTENSION_CHECKS, EXTENSION_DEFAULTS, extension_tag, extensions_set

logger = logging.getLogger(__name__)



class CacheType(enum.Enum):
    """Which caching algorithm a config selects."""

    NONE = "NONE"
    DBCache = "DBCache"  # Dual Block Cache
    DBPrune = "DBPrune"  # Dynamic Block Prune

    @classmethod
    def parse(cls, value: Union["CacheType", str, None]) -> "CacheType":
        """Parse ``"DBCache"``, ``"dbcache"``, ``"DBPrune"``, ``"NONE"`` and cache-dit's aliases.

        ``None`` means no caching, as in cache-dit. Unlike cache-dit, which maps any unknown string
        to ``NONE`` (silently disabling the cache), an unknown name raises ConfigError.
        """
        if value is None:
            return cls.NONE
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            found = _CACHE_TYPE_NAMES.get(value.strip().upper())
            if found is not None:
                return found
        raise ConfigError(
            "cache_type",
            value,
            "DBCache, DBPrune or NONE (case-insensitive)",
            hint=_did_you_mean(value, [member.value for member in cls]),
        )

    def __str__(self) -> str:
        # strify tags print the value ("DBCache_F8B0..."), as cache-dit does.
        return self.value


_CACHE_TYPE_NAMES: Dict[str, CacheType] = {
    **dict.fromkeys(("DBCACHE", "DB_CACHE", "DUAL_BLOCK_CACHE", "DB"), CacheType.DBCache),
    **dict.fromkeys(("DBPRUNE", "DB_PRUNE", "DYNAMIC_BLOCK_PRUNE", "DBP"), CacheType.DBPrune),
    **dict.fromkeys(("NONE", "NO_CACHE", "NOCACHE", "NC"), CacheType.NONE),
}


def _check_cache_type(key: str, value: Any) -> None:
    if not isinstance(value, CacheType):
        CacheType.parse(value)  # raises with the allowed names




@dataclasses.dataclass
class BasicCacheConfig(_UpdatableConfig):
    """Dual Block Cache settings; same fields and defaults as cache-dit's ``DBCacheConfig``.

    See the project's cache-dit spec §1, §2 and §4 for what each field does at run time.
    """

    cache_type: CacheType = CacheType.DBCache
    # Blocks always computed at the front (F) and back (B) of every cached block list.
    Fn_compute_blocks: int = 8
    Bn_compute_blocks: int = 0
    # Cache when the relative L1 diff of the F residual is below this; <= 0 never caches,
    # >= 1 always caches (after the other gates).
    residual_diff_threshold: Any = 0.08
    max_accumulated_residual_diff_threshold: Optional[float] = None
    max_warmup_steps: int = 8
    warmup_interval: int = 1
    max_cached_steps: int = -1  # -1 = unlimited, per CFG branch
    max_continuous_cached_steps: int = -1  # -1 = unlimited, per CFG branch
    enable_separate_cfg: Optional[bool] = None  # None = auto-detect from the pipeline class
    cfg_compute_first: bool = False
    cfg_diff_compute_separate: bool = True
    num_inference_steps: Optional[int] = None
    steps_computation_mask: Optional[List[int]] = None
    steps_computation_policy: str = "dynamic"
    force_refresh_step_hint: Optional[int] = None
    force_refresh_step_policy: str = "once"
    # Our extensions (config/extensions.py; docs/user_guide.md, "Decision signals and compute
    # budget"): off by default, and shown by as_dict() and strify() only when set.
    decision_signal: str = "relative_l1"
    signal_lowpass_ratio: float = 0.25
    signal_mag_ratios: Optional[List[float]] = None
    compute_budget: Optional[Union[int, float]] = None

    _ALIASES: ClassVar[Dict[str, str]] = {"enable_sperate_cfg": "enable_separate_cfg"}
    _OPTIONAL: ClassVar[FrozenSet[str]] = frozenset(
        {
            "max_accumulated_residual_diff_threshold",
            "enable_separate_cfg",
            "num_inference_steps",
            "steps_computation_mask",
            "force_refresh_step_hint",
            "signal_mag_ratios",
            "compute_budget",
        }
    )
    # Not a field (the fields are cache-dit's): the preset a ``steps_computation_mask: fast``
    # named. The mask is re-expanded from it whenever the step count changes (each request),
    # where cache-dit expands it once.
    _mask_policy: ClassVar[Optional[str]] = None

    @classmethod
    def _override_decides_class(cls, base: Any, fields: Mapping[str, Any]) -> bool:
        # DBCacheConfig and DBPruneConfig are siblings (as in cache-dit): a DBPrune override, or
        # one that names the cache type, decides the class; a plain field override keeps the base's.
        return super()._override_decides_class(base, fields) or (
            isinstance(base, BasicCacheConfig) and ("cache_type" in fields or cls is DBPruneConfig)
        )
    _CHECKS: ClassVar[Dict[str, Checker]] = {
        "cache_type": _check_cache_type,
        "Fn_compute_blocks": _int_at_least(1),
        "Bn_compute_blocks": _int_at_least(0),
        "residual_diff_threshold": _check_real,
        "max_accumulated_residual_diff_threshold": _check_real,
        "max_warmup_steps": _int_at_least(0),
        "warmup_interval": _int_at_least(1),
        "max_cached_steps": _int_at_least(-1, " (-1 = unlimited)"),
        "max_continuous_cached_steps": _int_at_least(-1, " (-1 = unlimited)"),
        "enable_separate_cfg": _check_bool,
        "cfg_compute_first": _check_bool,
        "cfg_diff_compute_separate": _check_bool,
        "num_inference_steps": _int_at_least(1),
        "steps_computation_mask": _check_mask,
        "steps_computation_policy": _one_of("dynamic", "static"),
        "force_refresh_step_hint": _int_at_least(1),
        "force_refresh_step_policy": _one_of("once", "repeat"),
        **EXTENSION_CHECKS,
    }

    def _normalize(self) -> None:
        if self.cache_type is not None and not isinstance(self.cache_type, CacheType):
            self.cache_type = CacheType.parse(self.cache_type)
        mask = self.steps_computation_mask
        if isinstance(mask, str):
            policy = _mask_policy_of(mask)
            if policy is None:
                self.steps_computation_mask = scm.mask_from_string(mask.strip())
            self._mask_policy = policy
        elif isinstance(mask, tuple):
            self.steps_computation_mask = list(mask)
        if isinstance(self.signal_mag_ratios, tuple):
            self.signal_mag_ratios = list(self.signal_mag_ratios)
        if self._mask_policy is not None:
            if self.num_inference_steps is not None:
                # The preset is sized by num_inference_steps: check it before building the mask.
                self._CHECKS["num_inference_steps"]("num_inference_steps", self.num_inference_steps)
            self.steps_computation_mask = _preset_mask(self._mask_policy, self.num_inference_steps)

    def _check_relations(self) -> None:
        # cache-dit asserts this when it builds a context: with separate diffs per branch, the
        # non-CFG call of a pair must run first.
        if self.enable_separate_cfg and self.cfg_diff_compute_separate and self.cfg_compute_first:
            raise ConfigError(
                "cfg_compute_first",
                True,
                "False when enable_separate_cfg and cfg_diff_compute_separate are both true",
                hint="set cfg_diff_compute_separate: false to compute the CFG branch first",
            )
        check_budget_fits(
            self.compute_budget,
            self.num_inference_steps,
            self.max_warmup_steps,
            self.warmup_interval,
            self.steps_computation_mask,
        )

    def as_dict(self) -> Dict[str, Any]:
        """cache-dit's fields, plus our extension fields where they are set."""
        found = super().as_dict()
        set_here = extensions_set(self)
        for key in EXTENSION_DEFAULTS:
            if key not in set_here:
                del found[key]
        return found

    def strify(self) -> str:
        """The cache part of cache-dit's tag, e.g. ``DBCache_F8B0_W8I1M0MC0_R0.08_N28``."""
        tag = self._base_tag()
        if self.steps_computation_mask is not None:
            digits = "".join(str(flag) for flag in self.steps_computation_mask)
            tag += f"_SCM{digits}_{self.steps_computation_policy}"
        if self.num_inference_steps is not None:
            tag += f"_N{self.num_inference_steps}"
        if self.force_refresh_step_hint is not None:
            tag += f"_FR{self.force_refresh_step_hint}_{self.force_refresh_step_policy}"
        if self.enable_separate_cfg is not None:
            tag += f"_CFG{int(self.enable_separate_cfg)}"
        return tag + extension_tag(self)

    def _base_tag(self) -> str:
        def at_least_0(value: Optional[int]) -> Optional[int]:
            # -1 (unlimited) prints as 0, like cache-dit; partial (reset) configs print None.
            return None if value is None else max(0, value)

        # f-string formatting on purpose: a 0-d tensor formats as its value (0.07999999821186066
        # for float32 0.08), which is what cache-dit prints.
        return (
            f"{self.cache_type}_F{self.Fn_compute_blocks}B{self.Bn_compute_blocks}_"
            f"W{self.max_warmup_steps}I{self.warmup_interval}"
            f"M{at_least_0(self.max_cached_steps)}"
            f"MC{at_least_0(self.max_continuous_cached_steps)}_"
            f"R{self.residual_diff_threshold}"
        )


@dataclasses.dataclass
class DBCacheConfig(BasicCacheConfig):
    """The DBCache settings, named as in cache-dit; DBPruneConfig is its sibling, not a subclass."""


def _preset_mask(policy: str, num_inference_steps: Optional[int]) -> Optional[List[int]]:
    """The preset's mask for this step count (None, with a warning, when it has none)."""
    if num_inference_steps is None:
        raise ConfigError(
            _MASK_KEY,
            policy,
            _MASK_ALLOWED,
            hint=f"the preset {policy!r} is sized by num_inference_steps; "
            "set num_inference_steps in the same config section",
        )
    return scm.request_mask(policy, num_inference_steps)


@dataclasses.dataclass
class DBPruneConfig(BasicCacheConfig):
    """Dynamic Block Prune settings; cache-dit's ``DBPruneConfig`` fields and defaults."""

    cache_type: CacheType = CacheType.DBPrune
    enable_dynamic_prune_threshold: bool = False
    max_dynamic_prune_threshold: Optional[float] = None
    dynamic_prune_threshold_relax_ratio: float = 1.25
    non_prune_block_ids: List[int] = dataclasses.field(default_factory=list)
    force_reduce_calibrator_vram: bool = False

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        **BasicCacheConfig._CHECKS,
        "enable_dynamic_prune_threshold": _check_bool,
        "max_dynamic_prune_threshold": _check_real,
        "dynamic_prune_threshold_relax_ratio": _check_positive_real,
        "non_prune_block_ids": _check_block_ids,
        "force_reduce_calibrator_vram": _check_bool,
    }
    _OPTIONAL: ClassVar[FrozenSet[str]] = DBCacheConfig._OPTIONAL | {"max_dynamic_prune_threshold"}

    def _normalize(self) -> None:
        super()._normalize()
        if isinstance(self.non_prune_block_ids, tuple):
            self.non_prune_block_ids = list(self.non_prune_block_ids)

    def _check_relations(self) -> None:
        super()._check_relations()
        for key, value in extensions_set(self).items():
            raise ConfigError(
                key,
                value,
                f"its default ({EXTENSION_DEFAULTS[key]!r}) with DBPrune",
                hint="decision_signal and compute_budget are DBCache extensions; DBPrune decides "
                "per block with the relative-L1 diff",
            )

    def strify(self) -> str:
        """``DBPrune_F..B.._W..I..M..MC.._R{thr}``: DBPrune tags carry no SCM/N/FR/CFG parts."""
        return self._base_tag()
