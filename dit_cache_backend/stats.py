"""What each cache context did: ``CacheStats``, ``summary()`` and cache-dit style ``strify()`` tags."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Union

from .config import CacheType, load_configs
from .context import CacheContext
from .policy import COND, UNCOND, Decision
from .prune import PruneContext
from .session import session_of

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CacheStats:
    """cache-dit's CacheStats fields, plus the per-call decision record of this engine."""

    cache_options: dict = dataclasses.field(default_factory=dict)
    cached_steps: List[int] = dataclasses.field(default_factory=list)
    residual_diffs: Dict[str, float] = dataclasses.field(default_factory=dict)
    cfg_cached_steps: List[int] = dataclasses.field(default_factory=list)
    cfg_residual_diffs: Dict[str, float] = dataclasses.field(default_factory=dict)
    accumulated_cached_steps: int = 0
    cfg_accumulated_cached_steps: int = 0
    accumulated_executed_steps: int = 0
    accumulated_transformer_executed_steps: int = 0
    pruned_steps: List[int] = dataclasses.field(default_factory=list)
    pruned_blocks: List[int] = dataclasses.field(default_factory=list)
    actual_blocks: List[int] = dataclasses.field(default_factory=list)
    pruned_ratio: Optional[float] = None
    cfg_pruned_steps: List[int] = dataclasses.field(default_factory=list)
    cfg_pruned_blocks: List[int] = dataclasses.field(default_factory=list)
    cfg_actual_blocks: List[int] = dataclasses.field(default_factory=list)
    cfg_pruned_ratio: Optional[float] = None
    parallelism_config: Any = None
    quantize_config: Any = None
    # Ours.
    name: str = ""
    decisions: List[Decision] = dataclasses.field(default_factory=list)
    nonfinite_diffs: int = 0
    cached_tensors: int = 0

    @property
    def computed_steps(self) -> List[int]:
        """Diffusion steps of the cond branch that ran the middle blocks."""
        return sorted({d.step for d in self.decisions if d.branch == COND and not d.cached})

    @property
    def executed_steps(self) -> int:
        return len({(d.step, d.branch) for d in self.decisions if d.branch == COND})


def _stringify_keys(diffs: Dict[int, float]) -> Dict[str, float]:
    return {str(step): diff for step, diff in sorted(diffs.items())}


def _pruning_fields(context: CacheContext) -> Dict[str, Any]:
    if not isinstance(context, PruneContext):
        return {}

    def ratio(branch: str) -> Optional[float]:
        actual = sum(context.actual_blocks[branch])
        return sum(context.pruned_blocks[branch]) / actual if actual else None

    history = context.policy.histories
    return dict(
        residual_diffs={str(s): list(d) for s, d in sorted(context.block_diffs[COND].items())},
        cfg_residual_diffs={
            str(s): list(d) for s, d in sorted(context.block_diffs[UNCOND].items())
        },
        pruned_steps=list(history[COND].cached_steps),
        pruned_blocks=list(context.pruned_blocks[COND]),
        actual_blocks=list(context.actual_blocks[COND]),
        pruned_ratio=ratio(COND),
        cfg_pruned_steps=list(history[UNCOND].cached_steps),
        cfg_pruned_blocks=list(context.pruned_blocks[UNCOND]),
        cfg_actual_blocks=list(context.actual_blocks[UNCOND]),
        cfg_pruned_ratio=ratio(UNCOND),
    )


def context_stats(context: CacheContext) -> CacheStats:
    policy = context.policy
    cond, uncond = policy.histories[COND], policy.histories[UNCOND]
    stats = CacheStats(
        cache_options={
            "cache_config": context.cache_config,
            "calibrator_config": context.calibrator_config,
        },
        cached_steps=list(cond.cached_steps),
        residual_diffs=_stringify_keys(cond.residual_diffs),
        cfg_cached_steps=list(uncond.cached_steps),
        cfg_residual_diffs=_stringify_keys(uncond.residual_diffs),
        accumulated_cached_steps=cond.accumulated_cached_steps,
        cfg_accumulated_cached_steps=uncond.accumulated_cached_steps,
        accumulated_executed_steps=policy.accumulated_executed_steps,
        accumulated_transformer_executed_steps=policy.accumulated_transformer_calls,
        name=context.name,
        decisions=list(policy.decisions),
        nonfinite_diffs=context.nonfinite_diffs,
        cached_tensors=context.num_cached_tensors(),
    )
    return dataclasses.replace(stats, **_pruning_fields(context))


def summary(obj: Any, details: bool = False, logging: bool = True) -> List[CacheStats]:
    """One CacheStats per cached block list, then one mirroring the last list (as cache-dit)."""
    session = session_of(obj)
    if session is None:
        return []
    stats = [context_stats(context) for context in session.contexts.values()]
    stats.append(dataclasses.replace(stats[-1]))
    if logging:
        for entry in stats[:-1]:
            _log_stats(entry, details)
    return stats


def _log_stats(stats: CacheStats, details: bool) -> None:
    total = stats.executed_steps
    cached = len(stats.cached_steps)
    logger.info(
        "%s: %s, cached %d/%d steps %s%s, holding %d tensors",
        stats.name,
        strify(stats),
        cached,
        total,
        stats.cached_steps,
        f", cfg cached {stats.cfg_cached_steps}" if stats.cfg_cached_steps else "",
        stats.cached_tensors,  # what the cache keeps in memory until the next request
    )
    if details and stats.residual_diffs:
        diffs = sorted(v for v in stats.residual_diffs.values() if v >= 0)
        if diffs:
            pick = lambda q: diffs[min(len(diffs) - 1, int(q * (len(diffs) - 1) + 0.5))]  # noqa: E731
            logger.info(
                "%s residual diffs: P00 %.4f P25 %.4f P50 %.4f P75 %.4f P95 %.4f max %.4f",
                stats.name,
                pick(0.0),
                pick(0.25),
                pick(0.5),
                pick(0.75),
                pick(0.95),
                diffs[-1],
            )


StrifySource = Union[CacheStats, List[CacheStats], Dict[str, Any], Any]


def strify(obj: StrifySource) -> str:
    """cache-dit's tag: ``{cache}_{calibrator}[_{parallelism}][_{quantize}][_S{cached}]``."""
    accumulated = None
    parallelism = quantize = None
    if isinstance(obj, dict):
        if obj.get("cache_type") in (CacheType.NONE, "NONE", "None"):
            return ""
        options = load_configs(obj)
        parallelism = options.get("parallelism_config")
        quantize = options.get("quantize_config")
        pruned_ratio = None
    else:
        if isinstance(obj, list):
            stats = obj[0] if obj else None
        elif isinstance(obj, CacheStats):
            stats = obj
        else:
            entries = summary(obj, logging=False)
            stats = entries[-1] if entries else None
        if stats is None:
            return ""
        options = stats.cache_options
        accumulated = stats.accumulated_cached_steps
        parallelism, quantize = stats.parallelism_config, stats.quantize_config
        pruned_ratio = stats.pruned_ratio
    cache_config = options.get("cache_config")
    cache_part = ""
    if cache_config is not None and cache_config.cache_type != CacheType.NONE:
        cache_part = cache_config.strify()
        if cache_config.cache_type == CacheType.DBPrune and pruned_ratio is not None:
            cache_part += f"_P{round(pruned_ratio * 100, 2)}"
    calibrator = options.get("calibrator_config")
    if cache_part:
        cache_part += "_" + (calibrator.strify() if calibrator is not None else "T0O0")
    tag = cache_part
    for extra in (parallelism, quantize):
        if extra is not None:
            tag += f"_{extra.strify()}"
    if accumulated and cache_part:
        tag += f"_S{accumulated}"
    return tag.strip("_")
