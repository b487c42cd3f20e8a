"""What to cache, as data: ``BlockAdapter``, ``ParamsModifier``, ``PatchFunctor``, ``CachedListSpec``.

A :class:`BlockAdapter` names the transformer(s), their block lists and each list's forward
pattern (cache-dit's fields, same names and defaults). Turning one into :class:`CachedListSpec`
records — one per cache context — is :mod:`.resolve`'s job; knowing which adapter a model family
needs is :mod:`.registry`'s. This module holds only the types, so every layer above can import it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import torch

from .config import CalibratorConfig, DBCacheConfig
from .errors import ConfigError
from .patterns import ENCODER, HIDDEN, ForwardPattern

# The pipeline attributes that hold transformers when nothing more specific is known (a registry
# row, a framework's `_dit_modules`): Wan 2.2 pipelines carry a second expert in `transformer_2`.
TRANSFORMER_ATTRS: Tuple[str, ...] = ("transformer", "transformer_2")

DEFAULT_ALLOW_PREFIXES = [
    "transformer",
    "single_transformer",
    "blocks",
    "layers",
    "single_stream_blocks",
    "double_stream_blocks",
]


@dataclasses.dataclass
class ParamsModifier:
    """Per-block-list overrides, matched positionally against the adapter's flattened lists.

    As in cache-dit, only the fields set on the override configs apply: build them with
    ``DBCacheConfig().reset(field=value)`` (a plain ``DBCacheConfig(...)`` sets every field).
    """

    cache_config: Optional[DBCacheConfig] = None
    calibrator_config: Optional[CalibratorConfig] = None

    def __init__(
        self,
        cache_config: Optional[DBCacheConfig] = None,
        calibrator_config: Optional[CalibratorConfig] = None,
        **cache_fields: Any,
    ) -> None:
        if cache_fields:
            override = DBCacheConfig().reset(**cache_fields)
            cache_config = override if cache_config is None else cache_config.copy().update(
                **cache_fields
            )
        self.cache_config = cache_config
        self.calibrator_config = calibrator_config


class PatchFunctor(Protocol):
    """Model-specific help for models whose loop varies a block argument by block index.

    ``install`` prepares the transformer (e.g. a hook capturing a tensor the per-block arguments
    are sliced from) and returns the function that undoes it; ``block_kwargs`` returns the keyword
    arguments for block ``index`` of the list ``attr``, given the ones the model passed.
    """

    def install(self, transformer: torch.nn.Module) -> Callable[[], None]: ...

    def block_kwargs(self, attr: str, index: int, kwargs: Dict[str, Any]) -> Dict[str, Any]: ...


@dataclasses.dataclass
class BlockAdapter:
    """The explicit description of what to cache (cache-dit's fields, same names and defaults).

    ``auto=True`` picks one block list per transformer among its direct-child ``ModuleList``s
    named like block lists, filtered by ``allow_prefixes`` (when ``check_prefixes``) and by the
    block class suffixes ``allow_suffixes`` (when ``check_suffixes``); ``blocks_policy`` "max" or
    "min" picks the longest or shortest.
    """

    pipe: Any = None
    transformer: Any = None
    blocks: Any = None
    blocks_name: Any = None
    unique_blocks_name: List[str] = dataclasses.field(default_factory=list)
    dummy_blocks_names: List[str] = dataclasses.field(default_factory=list)
    forward_pattern: Any = None
    params_modifiers: Any = None
    check_forward_pattern: Optional[bool] = None
    # With the forward-pattern check on (and no accelerate/diffusers hooks wrapping the blocks):
    # each block's annotated outputs must be as many tensors as the pattern returns.
    check_num_outputs: bool = False
    patch_functor: Optional[PatchFunctor] = None
    has_separate_cfg: bool = False
    auto: bool = False
    allow_prefixes: List[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_ALLOW_PREFIXES)
    )
    check_prefixes: bool = True
    allow_suffixes: List[str] = dataclasses.field(default_factory=lambda: ["TransformerBlock"])
    check_suffixes: bool = False
    blocks_policy: str = "max"
    # Ours: the block argument that carries the hidden stream (Z-Image's blocks take `x`).
    hidden_argument: str = HIDDEN
    encoder_argument: str = ENCODER
    # cache-dit's: build without the construction-time check (enable_cache still validates).
    skip_post_init: bool = False

    def __post_init__(self) -> None:
        if self.skip_post_init:
            return
        # An empty list caches nothing; say so now rather than fail later at enable_cache.
        if isinstance(self.blocks, (list, tuple, torch.nn.ModuleList)) and len(self.blocks) == 0:
            raise ConfigError(
                "BlockAdapter.blocks",
                self.blocks,
                "a non-empty nn.ModuleList of blocks (or a list of them); or blocks=None with auto=True",
            )


@dataclasses.dataclass
class CachedListSpec:
    """One block list to cache: where it lives, its blocks, its pattern and its context name."""

    transformer: torch.nn.Module
    transformer_key: str
    attr: str
    blocks: List[torch.nn.Module]
    dummy_attrs: List[str]
    pattern: ForwardPattern
    hidden_arg: str
    encoder_arg: str
    name: str
    patch_functor: Optional[PatchFunctor] = None


def is_pipeline(obj: Any) -> bool:
    """A diffusers-style pipeline: callable, not a module, holding modules as attributes (its
    transformer may be `transformer`, Shap-E's `prior`, BAGEL's `language_model`, ...)."""
    return (
        not isinstance(obj, torch.nn.Module)
        and callable(obj)
        and any(isinstance(v, torch.nn.Module) for v in getattr(obj, "__dict__", {}).values())
    )


def get_submodule_parent(module: torch.nn.Module, path: str) -> Tuple[torch.nn.Module, str]:
    """(the module holding the attribute at dotted ``path``, the attribute's own name)."""
    *parents, leaf = path.split(".")
    parent = module
    for name in parents:
        parent = getattr(parent, name)
    return parent, leaf
