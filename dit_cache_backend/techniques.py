"""Which context, block-list runner and stats each cache type uses: one table, no dispatch.

Adding a technique means one row here and one module holding its context and runner (as
``prune.py`` does for DBPrune); ``session.py`` and ``stats.py`` only look the row up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Type

from .blocks import BlockListRunner, CachedBlocks
from .config import CacheType
from .context import BlockListContext, DBCacheContext
from .prune import PruneContext, PrunedBlocks, prune_stats


@dataclasses.dataclass(frozen=True)
class Technique:
    context: Type[BlockListContext]
    runner: Type[BlockListRunner]
    # The CacheStats fields this technique fills beyond the shared ones.
    stats_fields: Callable[[Any], Dict[str, Any]]


def _no_extra_fields(context: Any) -> Dict[str, Any]:
    return {}


TECHNIQUES: Dict[CacheType, Technique] = {
    CacheType.DBCache: Technique(DBCacheContext, CachedBlocks, _no_extra_fields),
    CacheType.DBPrune: Technique(PruneContext, PrunedBlocks, prune_stats),
}


def technique_for(cache_type: CacheType) -> Technique:
    """The row of ``cache_type``; ``CacheType.NONE`` has none (nothing is installed for it)."""
    return TECHNIQUES[cache_type]
