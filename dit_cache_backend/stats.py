"""What each cache context did: ``CacheStats``, ``summary()`` and cache-dit style ``strify()`` tags."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Union

import torch

from .block_adapter import BlockAdapter, is_pipeline
from .config import CacheType, load_configs
from .context import BlockListContext
from .policy import COND, UNCOND, Decision
from .session import CacheSession, session_of
from .techniques import technique_for

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


def context_stats(context: BlockListContext) -> CacheStats:
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
    extra = technique_for(context.cache_config.cache_type).stats_fields(context)
    return dataclasses.replace(stats, **extra)


SummarySource = Union[BlockAdapter, torch.nn.Module, Any]


def summary(
    adapter_or_others: SummarySource,
    details: bool = False,
    logging: bool = True,
    **kwargs: Any,
) -> List[CacheStats]:
    """What cache-dit's ``summary`` returns, entry for entry.

    * a pipeline or a transformer: one entry per cached block list that is an attribute of the
      transformer (in attribute-name order, as cache-dit walks ``dir(transformer)``), then one
      entry per transformer (``transformer``, then ``transformer_2``) — its first list's options
      (its last list's after ``refresh_context``), its last list's counters;
    * a ``BlockAdapter``: one transformer-level entry per transformer;
    * nothing cached: ``[CacheStats()]``.

    :func:`contexts_summary` gives one entry per cache context instead. ``kwargs`` is accepted as
    cache-dit accepts (and ignores) it.
    """
    session = session_of(adapter_or_others)
    if session is None:
        return [CacheStats()]
    if isinstance(adapter_or_others, BlockAdapter):
        transformers = [
            t for t in _as_list(adapter_or_others.transformer) if t in session.transformers
        ] or session.transformers
        entries = [_transformer_stats(session, t) for t in transformers]
    else:
        transformers = _summarized_transformers(session, adapter_or_others)
        entries = [s for t in transformers for s in _attribute_list_stats(session, t)]
        entries += [_transformer_stats(session, t) for t in transformers]
    if logging:
        for entry in entries:
            _log_stats(entry, details)
    return entries


def contexts_summary(obj: SummarySource) -> List[CacheStats]:
    """Ours: one CacheStats per cache context (block list), in the order they were cached."""
    session = session_of(obj)
    if session is None:
        return []
    return [context_stats(context) for context in session.contexts.values()]


def _as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _summarized_transformers(session: CacheSession, obj: Any) -> List[torch.nn.Module]:
    """cache-dit reads ``pipe.transformer`` and ``pipe.transformer_2``, or the module itself."""
    if isinstance(obj, torch.nn.Module):
        candidates = [obj]
    else:
        candidates = [getattr(obj, "transformer", None), getattr(obj, "transformer_2", None)]
    cached = [t for t in candidates if t is not None and t in session.transformers]
    # A pipeline whose cached model sits elsewhere (BAGEL's language model): report that one.
    return cached or list(session.transformers)


def _attribute_list_stats(session: CacheSession, transformer: torch.nn.Module) -> List[CacheStats]:
    """Entries of the cached lists that are attributes of the transformer, by attribute name.

    A list the adapter built (Flux's concatenated blocks) is no attribute, so it has no entry.
    """
    found = []
    for spec in session.specs:
        if spec.transformer is not transformer or "." in spec.attr:
            continue
        attribute = transformer._modules.get(spec.attr)
        if isinstance(attribute, torch.nn.ModuleList) and _same_blocks(attribute, session.current_blocks(spec)):
            found.append((spec.attr, context_stats(session.contexts[spec.name])))
    return [stats for _, stats in sorted(found, key=lambda item: item[0])]


def _same_blocks(block_list: torch.nn.ModuleList, blocks: List[torch.nn.Module]) -> bool:
    children = list(block_list._modules.values())
    return len(children) == len(blocks) and all(a is b for a, b in zip(children, blocks))


def _transformer_stats(session: CacheSession, transformer: torch.nn.Module) -> CacheStats:
    """cache-dit's transformer-level entry: the last list's counters, and the first list's options
    (the last list's once ``refresh_context`` ran)."""
    contexts = [session.contexts[s.name] for s in session.specs if s.transformer is transformer]
    last = context_stats(contexts[-1])
    options = contexts[-1] if session.refreshed else contexts[0]
    return dataclasses.replace(last, cache_options=context_stats(options).cache_options)


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


StrifySource = Union[CacheStats, List[CacheStats], Dict[str, Any], SummarySource]


def strify(adapter_or_others: StrifySource) -> str:
    """cache-dit's tag: ``{cache}_{calibrator}[_{parallelism}][_{quantize}][_S{cached}]``.

    Of a pipeline, transformer or adapter it describes the last entry of :func:`summary` (as
    cache-dit does: ``strify(pipe.transformer)`` describes that transformer); of a list, its first.
    """
    obj = adapter_or_others
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
        elif isinstance(obj, (BlockAdapter, torch.nn.Module)) or is_pipeline(obj):
            stats = summary(obj, logging=False)[-1]
        else:
            raise ValueError(  # cache-dit's exception type
                "strify() takes a pipeline, a transformer, a BlockAdapter, a CacheStats, a list of "
                f"them or a dict of cache options, got {type(obj).__name__}"
            )
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
