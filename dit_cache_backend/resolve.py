"""From what the user passed to what gets cached: explicit adapter -> model table -> inference.

:func:`adapter_for` answers "which BlockAdapter?" for a pipeline, a transformer or an adapter;
:func:`resolve_adapter` validates an adapter and flattens it into one :class:`CachedListSpec` per
cache context; :func:`flatten_modifiers` and :func:`merge_modifier` give each context its
configs; :func:`resolve_separate_cfg` decides whether CFG branches are counted apart. Everything
here validates and builds records; nothing touches the model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, List, Optional, Tuple

import torch

from .block_adapter import BlockAdapter, CachedListSpec, ParamsModifier, is_pipeline
from .config import CalibratorConfig, DBCacheConfig
from .errors import ConfigError, UnsupportedModelError
from .inference import candidate_lists, infer_adapter
from .patterns import ForwardPattern
from .registry import BlockAdapterRegister, separate_cfg, supported_pipelines

logger = logging.getLogger(__name__)


def adapter_for(obj: Any) -> BlockAdapter:
    """The adapter for a pipeline, a transformer or an explicit adapter; clear error otherwise."""
    if isinstance(obj, BlockAdapter):
        return obj
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


def resolve_separate_cfg(config: DBCacheConfig, adapter: BlockAdapter, obj: Any) -> bool:
    """The config's explicit choice, else the adapter's, else the pipeline's family row."""
    if config.enable_separate_cfg is not None:
        return bool(config.enable_separate_cfg)
    if adapter.has_separate_cfg:
        return True
    pipe = adapter.pipe if adapter.pipe is not None else (obj if is_pipeline(obj) else None)
    return pipe is not None and separate_cfg(pipe)


# -- flattening an adapter ----------------------------------------------------------------------


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
    if not items:
        raise ConfigError(
            "BlockAdapter.blocks", blocks, "an nn.ModuleList of blocks (or a list of them); or auto=True"
        )
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


def _auto_block_lists(
    transformer: torch.nn.Module, adapter: BlockAdapter, outputs: bool
) -> List[str]:
    """``auto=True``: inference's block-list candidates, filtered and picked as cache-dit does
    (with ``outputs``, lists whose blocks return another number of tensors are no candidates)."""
    pattern = _pattern(adapter.forward_pattern, "BlockAdapter.forward_pattern") if outputs else None
    candidates = []
    for candidate in candidate_lists(transformer):
        if adapter.check_prefixes and not candidate.attr.startswith(tuple(adapter.allow_prefixes)):
            continue
        if adapter.check_suffixes and not type(candidate.blocks[0]).__name__.endswith(
            tuple(adapter.allow_suffixes)
        ):
            continue
        if pattern is not None and any(pattern.output_count_mismatch(b) for b in candidate.blocks):
            continue
        candidates.append(candidate)
    if not candidates:
        return []
    pick = max if adapter.blocks_policy == "max" else min
    return [pick(candidates, key=lambda c: len(c.blocks)).attr]


def _pattern(value: Any, key: str) -> ForwardPattern:
    if isinstance(value, ForwardPattern):
        return value
    if isinstance(value, str) and value in ForwardPattern.__members__:
        return ForwardPattern[value]
    raise ConfigError(key, value, "a ForwardPattern (Pattern_0 … Pattern_5)")


def _has_hooks(transformers: List[torch.nn.Module]) -> bool:
    """accelerate or diffusers hooks wrap the blocks, so their signatures are not the blocks'."""
    return any(hasattr(t, "_hf_hook") or hasattr(t, "_diffusers_hook") for t in transformers)


def _transformers(adapter: BlockAdapter) -> List[torch.nn.Module]:
    transformers = _as_list(adapter.transformer)
    if not transformers and adapter.pipe is not None:
        transformers = [getattr(adapter.pipe, "transformer", None)]
    if not transformers or not all(isinstance(t, torch.nn.Module) for t in transformers):
        raise ConfigError(
            "BlockAdapter.transformer", adapter.transformer, "an nn.Module or a list of them"
        )
    return transformers


def resolve_adapter(adapter: BlockAdapter) -> List[CachedListSpec]:
    """Validate ``adapter`` and flatten it into one spec per cached block list."""
    transformers = _transformers(adapter)
    if adapter.blocks is None:
        if not adapter.auto:
            raise ConfigError(
                "BlockAdapter.blocks", None, "an nn.ModuleList (or list of them); or auto=True"
            )
        outputs = _checks_outputs(adapter, transformers)
        names_per = [_auto_block_lists(t, adapter, outputs) for t in transformers]
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
        check = not _has_hooks(transformers) and all(
            type(t).__module__.startswith("diffusers") for t in transformers
        )
    unique = _as_list(adapter.unique_blocks_name)
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
                _check_signatures(pattern, block_list, _checks_outputs(adapter, transformers))
            index = len(specs)
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
                    name=unique[index] if index < len(unique) else f"{key}.{attr}",
                    patch_functor=adapter.patch_functor,
                )
            )
    return specs


def _checks_outputs(adapter: BlockAdapter, transformers: List[torch.nn.Module]) -> bool:
    # As in cache-dit, hooks turn it off: their wrappers' annotations are not the blocks'.
    return adapter.check_num_outputs and not _has_hooks(transformers)


def _check_signatures(
    pattern: ForwardPattern, blocks: List[torch.nn.Module], outputs: bool
) -> None:
    # Each check, with the BlockAdapter switch that turns it off.
    checks = [(pattern.signature_mismatch, "check_forward_pattern")]
    if outputs:
        checks.append((pattern.output_count_mismatch, "check_num_outputs"))
    for block in blocks:
        for mismatch, switch in checks:
            problem = mismatch(block)
            if problem:
                raise ConfigError(
                    "BlockAdapter.forward_pattern",
                    pattern.name,
                    "a pattern whose inputs the blocks accept and whose outputs they return",
                    hint=f"{problem}; pass the pattern the blocks follow, "
                    f"or {switch}=False to skip this check",
                )


# -- per-list configs ---------------------------------------------------------------------------


def flatten_modifiers(modifiers: Any, count: int) -> List[Optional[ParamsModifier]]:
    """One modifier (or None) per cached block list, in adapter order.

    More modifiers than lists: the first ``count`` apply and the rest are ignored with a
    warning, as cache-dit does.
    """
    flat = []
    for item in _as_list(modifiers):
        flat.extend(_as_list(item) if isinstance(item, (list, tuple)) else [item])
    for item in flat:
        if not isinstance(item, ParamsModifier):
            raise ConfigError("params_modifiers", item, "ParamsModifier objects")
    if len(flat) > count:
        logger.warning(
            "dit_cache_backend: %d params_modifiers for %d block list(s); using the first %d",
            len(flat),
            count,
            count,
        )
        flat = flat[:count]
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
