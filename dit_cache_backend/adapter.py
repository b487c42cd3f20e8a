"""Which block lists of which model get cached: ``BlockAdapter``, ``ParamsModifier``, the registry.

A :class:`BlockAdapter` names the transformer(s), their block lists and each list's forward
pattern. :func:`resolve` turns a pipeline, a transformer or an adapter into a flat list of
:class:`CachedListSpec` — one per cache context — validating everything before anything is changed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from .config import CalibratorConfig, DBCacheConfig
from .errors import ConfigError, UnsupportedModelError
from .patterns import ENCODER, HIDDEN, ForwardPattern

logger = logging.getLogger(__name__)

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


@dataclasses.dataclass
class BlockAdapter:
    """The explicit description of what to cache (cache-dit's fields, same names and defaults)."""

    pipe: Any = None
    transformer: Any = None
    blocks: Any = None
    blocks_name: Any = None
    unique_blocks_name: List[str] = dataclasses.field(default_factory=list)
    dummy_blocks_names: List[str] = dataclasses.field(default_factory=list)
    forward_pattern: Any = None
    params_modifiers: Any = None
    check_forward_pattern: Optional[bool] = None
    check_num_outputs: bool = False
    patch_functor: Any = None
    has_separate_cfg: bool = False
    auto: bool = False
    allow_prefixes: List[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_ALLOW_PREFIXES)
    )
    check_prefixes: bool = True
    allow_suffixes: List[str] = dataclasses.field(default_factory=lambda: ["TransformerBlock"])
    check_suffixes: bool = False
    blocks_policy: str = "max"
    skip_post_init: bool = False
    # Ours: the block argument that carries the hidden stream (Z-Image's blocks take `x`).
    hidden_argument: str = HIDDEN
    encoder_argument: str = ENCODER


class PatchFunctor(Protocol):
    """Model-specific help for models whose loop varies a block argument by block index.

    ``install`` prepares the transformer (e.g. a hook capturing a tensor the per-block arguments
    are sliced from) and returns the function that undoes it; ``block_kwargs`` returns the keyword
    arguments for block ``index`` of the list ``attr``, given the ones the model passed.
    """

    def install(self, transformer: torch.nn.Module) -> Callable[[], None]: ...

    def block_kwargs(self, attr: str, index: int, kwargs: Dict[str, Any]) -> Dict[str, Any]: ...


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


# -- registry -----------------------------------------------------------------------------------

AdapterFactory = Callable[[Any], BlockAdapter]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    prefix: str
    factory: AdapterFactory
    has_separate_cfg: bool


class BlockAdapterRegister:
    """Known model families, matched by class-name prefix in registration order (as cache-dit)."""

    _entries: List[ModelEntry] = []

    @classmethod
    def register(cls, prefix: str, *, has_separate_cfg: bool = False) -> Callable:
        def decorator(factory: AdapterFactory) -> AdapterFactory:
            cls._entries.append(ModelEntry(prefix, factory, has_separate_cfg))
            return factory

        return decorator

    @classmethod
    def entry_for(cls, obj_or_name: Any) -> Optional[ModelEntry]:
        names = _candidate_names(obj_or_name)
        for entry in cls._entries:
            if any(name.startswith(entry.prefix) for name in names):
                return entry
        return None

    @classmethod
    def is_supported(cls, obj_or_name: Any) -> bool:
        return cls.entry_for(obj_or_name) is not None

    @classmethod
    def has_separate_cfg(cls, obj_or_name: Any) -> bool:
        entry = cls.entry_for(obj_or_name)
        return bool(entry and entry.has_separate_cfg)

    @classmethod
    def get_adapter(cls, obj: Any) -> Optional[BlockAdapter]:
        entry = cls.entry_for(obj)
        return None if entry is None else entry.factory(obj)

    @classmethod
    def supported_pipelines(cls) -> Tuple[int, List[str]]:
        prefixes = list(dict.fromkeys(entry.prefix for entry in cls._entries))
        return len(prefixes), prefixes


def _candidate_names(obj_or_name: Any) -> List[str]:
    if isinstance(obj_or_name, str):
        return [obj_or_name]
    names = [type(obj_or_name).__name__]
    transformer = getattr(obj_or_name, "transformer", None)
    if isinstance(transformer, torch.nn.Module):
        names.append(type(transformer).__name__)
    return names


def supported_pipelines() -> Tuple[int, List[str]]:
    """(count, prefixes) of the model families enable_cache knows without a BlockAdapter."""
    return BlockAdapterRegister.supported_pipelines()


def get_adapter(obj: Any) -> Optional[BlockAdapter]:
    return BlockAdapterRegister.get_adapter(obj)


# -- resolution ---------------------------------------------------------------------------------


def is_pipeline(obj: Any) -> bool:
    """A diffusers-style pipeline: callable, not a module, with at least one transformer."""
    return not isinstance(obj, torch.nn.Module) and callable(obj) and hasattr(obj, "transformer")


def _as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _is_block_list(value: Any) -> bool:
    # A plain list of ModuleLists is several block lists, not one list whose blocks are lists.
    return isinstance(value, torch.nn.ModuleList) or (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(
            isinstance(item, torch.nn.Module) and not isinstance(item, torch.nn.ModuleList)
            for item in value
        )
    )


def _lists_per_transformer(blocks: Any, num_transformers: int) -> List[List[Any]]:
    """Normalize ``blocks`` to one list of block lists per transformer."""
    if _is_block_list(blocks):
        return [[blocks]]
    items = _as_list(blocks)
    if all(_is_block_list(item) for item in items):
        if num_transformers > 1 and len(items) == num_transformers:
            return [[item] for item in items]
        return [items]
    return [_as_list(item) if not _is_block_list(item) else [item] for item in items]


def _per_list(value: Any, lists: List[List[Any]], key: str) -> List[List[Any]]:
    """Broadcast a per-list field (pattern, name) to the shape of ``lists``."""
    total = sum(len(group) for group in lists)
    flat = _as_list(value)
    if len(flat) == 1 and not isinstance(flat[0], (list, tuple)):
        flat = flat * total
    elif flat and isinstance(flat[0], (list, tuple)):
        flat = [item for group in flat for item in _as_list(group)]
    if len(flat) != total:
        raise ConfigError(
            key,
            value,
            f"one value, or one per block list ({total} block lists)",
        )
    shaped, index = [], 0
    for group in lists:
        shaped.append(flat[index : index + len(group)])
        index += len(group)
    return shaped


def _find_attr(module: torch.nn.Module, target: Any) -> Optional[str]:
    for name, child in module.named_children():
        if child is target:
            return name
    for name, child in module.named_modules():
        if child is target and name:
            return name
    return None


def get_submodule_parent(module: torch.nn.Module, path: str) -> Tuple[torch.nn.Module, str]:
    *parents, leaf = path.split(".")
    parent = module
    for name in parents:
        parent = getattr(parent, name)
    return parent, leaf


def _auto_block_lists(transformer: torch.nn.Module, adapter: BlockAdapter) -> List[str]:
    candidates = []
    for name, child in transformer.named_children():
        if not isinstance(child, torch.nn.ModuleList) or len(child) == 0:
            continue
        if adapter.check_prefixes and not any(name.startswith(p) for p in adapter.allow_prefixes):
            continue
        if adapter.check_suffixes and not any(
            type(child[0]).__name__.endswith(s) for s in adapter.allow_suffixes
        ):
            continue
        candidates.append(name)
    if not candidates:
        return []
    pick = max if adapter.blocks_policy == "max" else min
    return [pick(candidates, key=lambda n: len(getattr(transformer, n)))]


def _pattern(value: Any, key: str) -> ForwardPattern:
    if isinstance(value, ForwardPattern):
        return value
    if isinstance(value, str) and value in ForwardPattern.__members__:
        return ForwardPattern[value]
    raise ConfigError(key, value, "a ForwardPattern (Pattern_0 … Pattern_5)")


def resolve_adapter(adapter: BlockAdapter, *, has_hooks: bool = False) -> List[CachedListSpec]:
    """Validate ``adapter`` and flatten it into one spec per cached block list."""
    transformers = _as_list(adapter.transformer)
    if not transformers and adapter.pipe is not None:
        transformers = [adapter.pipe.transformer]
    if not transformers or not all(isinstance(t, torch.nn.Module) for t in transformers):
        raise ConfigError(
            "BlockAdapter.transformer", adapter.transformer, "an nn.Module or a list of them"
        )
    if adapter.blocks is None:
        if not adapter.auto:
            raise ConfigError(
                "BlockAdapter.blocks", None, "an nn.ModuleList (or list of them); or auto=True"
            )
        names_per = [_auto_block_lists(t, adapter) for t in transformers]
        if not all(names_per):
            raise UnsupportedModelError(
                "BlockAdapter(auto=True) found no block list "
                f"(an nn.ModuleList whose name starts with one of {adapter.allow_prefixes}) "
                f"in {[type(t).__name__ for t in transformers]}"
            )
        lists = [[getattr(t, n) for n in names] for t, names in zip(transformers, names_per)]
        blocks_names: List[List[Any]] = names_per
    else:
        lists = _lists_per_transformer(adapter.blocks, len(transformers))
        blocks_names = (
            _per_list(adapter.blocks_name, lists, "BlockAdapter.blocks_name")
            if adapter.blocks_name is not None
            else [[None] * len(group) for group in lists]
        )
    if len(lists) != len(transformers):
        raise ConfigError(
            "BlockAdapter.blocks",
            f"{len(lists)} groups",
            f"one group of block lists per transformer ({len(transformers)})",
        )
    if adapter.forward_pattern is None:
        raise ConfigError("BlockAdapter.forward_pattern", None, "a ForwardPattern per block list")
    patterns = _per_list(adapter.forward_pattern, lists, "BlockAdapter.forward_pattern")
    dummies = _as_list(adapter.dummy_blocks_names)
    check = adapter.check_forward_pattern
    if check is None:
        check = not has_hooks and all(
            type(t).__module__.startswith("diffusers") for t in transformers
        )
    specs: List[CachedListSpec] = []
    for t_index, (transformer, group) in enumerate(zip(transformers, lists)):
        key = "transformer" if t_index == 0 else f"transformer_{t_index + 1}"
        for l_index, blocks in enumerate(group):
            pattern = _pattern(patterns[t_index][l_index], "BlockAdapter.forward_pattern")
            attr = blocks_names[t_index][l_index] or _find_attr(transformer, blocks)
            if attr is None:
                raise ConfigError(
                    "BlockAdapter.blocks_name",
                    None,
                    "the attribute name of the block list on the transformer "
                    "(required when the list is not itself an attribute)",
                )
            block_list = list(blocks)
            if not block_list:
                raise ConfigError("BlockAdapter.blocks", attr, "a non-empty block list")
            if check:
                for block in block_list:
                    problem = pattern.signature_mismatch(block)
                    if problem:
                        raise ConfigError(
                            "BlockAdapter.forward_pattern",
                            pattern.name,
                            "a pattern whose inputs the blocks accept",
                            hint=f"{problem}; pass check_forward_pattern=False to skip this check",
                        )
            unique = _as_list(adapter.unique_blocks_name)
            index = len(specs)
            name = unique[index] if index < len(unique) else f"{key}.{attr}"
            specs.append(
                CachedListSpec(
                    transformer=transformer,
                    transformer_key=key,
                    attr=attr,
                    blocks=block_list,
                    dummy_attrs=[d for d in dummies if d != attr] if index == 0 else [],
                    pattern=pattern,
                    hidden_arg=adapter.hidden_argument,
                    encoder_arg=adapter.encoder_argument,
                    name=name,
                    patch_functor=adapter.patch_functor,
                )
            )
    return specs


def adapter_for(obj: Any) -> BlockAdapter:
    """The adapter for a pipeline, a transformer or an explicit adapter; clear error otherwise."""
    if isinstance(obj, BlockAdapter):
        return obj
    from .inference import infer_adapter  # here: inference.py imports this module

    adapter = BlockAdapterRegister.get_adapter(obj) or infer_adapter(obj)
    if adapter is not None:
        return adapter
    kind = "pipeline" if is_pipeline(obj) else "model"
    raise UnsupportedModelError(
        f"dit_cache_backend does not know which blocks of the {kind} {type(obj).__name__} to cache. "
        "Pass a BlockAdapter(pipe=..., transformer=..., blocks=transformer.<block list>, "
        "forward_pattern=ForwardPattern.Pattern_N), or register the class with "
        "@BlockAdapterRegister.register('<ClassPrefix>'). Known families: "
        + ", ".join(supported_pipelines()[1])
    )


def flatten_modifiers(modifiers: Any, count: int) -> List[Optional[ParamsModifier]]:
    """One modifier (or None) per cached block list, in adapter order."""
    items = _as_list(modifiers)
    flat = []
    for item in items:
        flat.extend(_as_list(item) if isinstance(item, (list, tuple)) else [item])
    if len(flat) > count:
        raise ConfigError(
            "params_modifiers", f"{len(flat)} modifiers", f"at most one per block list ({count})"
        )
    for item in flat:
        if not isinstance(item, ParamsModifier):
            raise ConfigError("params_modifiers", item, "ParamsModifier objects")
    return flat + [None] * (count - len(flat))


def merge_modifier(
    cache_config: DBCacheConfig,
    calibrator_config: Optional[CalibratorConfig],
    modifier: Optional[ParamsModifier],
) -> Tuple[DBCacheConfig, Optional[CalibratorConfig]]:
    """Apply the set fields of a modifier on copies of the base configs."""
    cache = cache_config.copy()
    calibrator = calibrator_config
    if modifier is not None:
        if modifier.cache_config is not None:
            cache.update(**modifier.cache_config.as_dict())
        if modifier.calibrator_config is not None:
            if calibrator is None:
                calibrator = modifier.calibrator_config
            else:
                calibrator = dataclasses.replace(calibrator)
                calibrator.update(**modifier.calibrator_config.as_dict())
    return cache, calibrator


def register_model(
    prefix: str,
    block_attrs: Sequence[str],
    patterns: Sequence[ForwardPattern],
    *,
    has_separate_cfg: bool = False,
    transformer_attrs: Sequence[str] = ("transformer",),
    hidden_argument: str = HIDDEN,
    dummy_blocks_names: Sequence[str] = (),
) -> None:
    """Register a model family whose block lists are plain attributes of its transformer(s)."""

    def factory(obj: Any) -> BlockAdapter:
        pipe = obj if is_pipeline(obj) else None
        transformers = (
            [getattr(pipe, attr) for attr in transformer_attrs if getattr(pipe, attr, None) is not None]
            if pipe is not None
            else [obj]
        )
        blocks = [[getattr(t, attr) for attr in block_attrs] for t in transformers]
        return BlockAdapter(
            pipe=pipe,
            transformer=transformers if len(transformers) > 1 else transformers[0],
            blocks=blocks if len(transformers) > 1 else blocks[0],
            blocks_name=[list(block_attrs)] * len(transformers),
            forward_pattern=[list(patterns)] * len(transformers),
            has_separate_cfg=has_separate_cfg,
            check_forward_pattern=False,
            hidden_argument=hidden_argument,
            dummy_blocks_names=list(dummy_blocks_names),
        )

    BlockAdapterRegister.register(prefix, has_separate_cfg=has_separate_cfg)(factory)
