"""``enable_cache``, ``disable_cache`` and ``refresh_context``: cache-dit's entry points."""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Optional, Tuple

import torch

from .block_adapter import BlockAdapter, is_pipeline
from .config import (
    BasicCacheConfig,
    CacheType,
    CalibratorConfig,
    ConfigOverride,
    DBCacheConfig,
    ParallelismConfig,
    QuantizeConfig,
    load_cache_config,
)
from .config.flat import refreshed_calibrator, split_flat_options
from .errors import ConfigError, DitCacheError
from .resolve import (
    adapter_for,
    flatten_modifiers,
    merge_modifier,
    resolve_adapter,
    resolve_separate_cfg,
)
from .scaleout import ScaleOutPlan
from .scaleout.attention import check_backend, set_backend
from .scaleout.device import module_device
from .session import CacheSession, session_of

logger = logging.getLogger(__name__)

# The scale-out steps each session applied, for disable_cache to revert what can be reverted.
_SCALEOUT: "weakref.WeakKeyDictionary[CacheSession, ScaleOutPlan]" = weakref.WeakKeyDictionary()

_NO_ATTR = object()


def _merge_shorthand(
    cache_config: Optional[DBCacheConfig],
    calibrator_config: Optional[CalibratorConfig],
    shorthand: dict,
) -> Tuple[DBCacheConfig, Optional[CalibratorConfig]]:
    """Copies of the configs with cache-dit's flat keyword arguments (``Fn_compute_blocks=…``)
    folded in; the caller's objects are never kept (editing them later changes nothing)."""
    if isinstance(cache_config, (str, os.PathLike)):
        # Users pass a preset file here; read it like load_configs would.
        loaded, loaded_calibrator = load_cache_config(cache_config)
        if loaded is None:
            raise ConfigError("cache_config", str(cache_config), "a file with a cache_config section")
        cache_config = loaded
        calibrator_config = calibrator_config if calibrator_config is not None else loaded_calibrator
    _check_types(cache_config, calibrator_config)
    base = cache_config.copy() if cache_config is not None else DBCacheConfig()
    calibrator_config = calibrator_config.copy() if calibrator_config is not None else None
    if not shorthand:
        return base, calibrator_config
    override, calibrator_override = load_cache_config(shorthand, reset=True)
    if override is not None:
        base = override.apply_to(base)
    if calibrator_override is not None:
        calibrator_config = calibrator_override.apply_to(None)
    return base, calibrator_config


def _check_types(cache_config: Any, calibrator_config: Any) -> None:
    if cache_config is not None and not isinstance(cache_config, BasicCacheConfig):
        raise ConfigError(
            "cache_config", type(cache_config).__name__, "a DBCacheConfig (or DBPruneConfig)"
        )
    if calibrator_config is not None and not isinstance(calibrator_config, CalibratorConfig):
        raise ConfigError(
            "calibrator_config",
            type(calibrator_config).__name__,
            "None or a CalibratorConfig (TaylorSeer, FoCa or DMD)",
        )


def _check_against_blocks(name: str, blocks: int, config: DBCacheConfig) -> None:
    front, back = config.Fn_compute_blocks, config.Bn_compute_blocks
    if front > blocks:
        raise ConfigError(
            "Fn_compute_blocks",
            front,
            f"at most the {blocks} blocks of '{name}'",
        )
    if front + back > blocks:
        raise ConfigError(
            "Bn_compute_blocks",
            back,
            f"at most {blocks - front} for '{name}' (Fn_compute_blocks={front} + "
            f"Bn_compute_blocks must not exceed its {blocks} blocks)",
        )
    mask, steps = config.steps_computation_mask, config.num_inference_steps
    if mask is not None and steps is not None and len(mask) < steps:
        raise ConfigError(
            "steps_computation_mask",
            f"{len(mask)} entries",
            f"at least num_inference_steps={steps} entries",
        )
    if mask is not None and config.steps_computation_policy == "static" and mask and mask[0] != 1:
        raise ConfigError(
            "steps_computation_mask",
            "".join(map(str, mask)),
            "a mask whose first step is 1 with the static policy (there is nothing to reuse yet)",
        )


def enable_cache(
    pipe_or_adapter: Any,
    cache_config: Optional[DBCacheConfig] = None,
    calibrator_config: Optional[CalibratorConfig] = None,
    params_modifiers: Any = None,
    parallelism_config: Optional[ParallelismConfig] = None,
    attention_backend: Optional[str] = None,
    quantize_config: Optional[QuantizeConfig] = None,
    *,
    process_group: Optional[object] = None,
    **shorthand: Any,
) -> Any:
    """Cache the transformer block lists of a pipeline, a transformer or a ``BlockAdapter``.

    ``parallelism_config``, ``quantize_config`` and ``attention_backend`` are applied after the
    cache, in that order, by diffusers' context parallelism, torchao and diffusers' attention
    dispatch (docs/scaling.md). Every section is validated before the model is touched: a failed
    call leaves it exactly as it was. ``process_group`` (ours) is the group whose ranks must agree
    on every decision; by default the transformer's context-parallel group, else the world group
    when torch.distributed is initialized. Returns the object that was passed in.
    """
    cache_config, calibrator_config = _merge_shorthand(cache_config, calibrator_config, shorthand)
    if cache_config.cache_type == CacheType.NONE:
        # cache-dit means to skip caching here (its check never fires, and it caches anyway).
        logger.info("dit_cache_backend: cache_type NONE, %s left uncached", type(pipe_or_adapter).__name__)
        return pipe_or_adapter
    if not isinstance(pipe_or_adapter, (torch.nn.Module, BlockAdapter)) and (
        getattr(pipe_or_adapter, "transformer", _NO_ATTR) is None
    ):
        raise ConfigError(
            "pipe_or_adapter",
            f"a {type(pipe_or_adapter).__name__} whose transformer is None",
            "a pipeline with a loaded transformer (or a BlockAdapter naming one)",
        )
    if session_of(pipe_or_adapter) is not None:
        raise DitCacheError(
            f"caching is already enabled on this {type(pipe_or_adapter).__name__}; "
            "call disable_cache() first, or refresh_context() to change its settings"
        )
    adapter = adapter_for(pipe_or_adapter)
    specs = resolve_adapter(adapter)
    modifiers = flatten_modifiers(
        params_modifiers if params_modifiers is not None else adapter.params_modifiers, len(specs)
    )
    separate_cfg = resolve_separate_cfg(cache_config, adapter, pipe_or_adapter)
    configs = [merge_modifier(cache_config, calibrator_config, m) for m in modifiers]
    for spec, (config, _) in zip(specs, configs):
        # Our copies record the resolved value (cache-dit writes it into the user's object).
        config.enable_separate_cfg = separate_cfg
        config.validate()
        _check_against_blocks(spec.name, len(spec.blocks), config)
    pipeline = pipe_or_adapter if is_pipeline(pipe_or_adapter) else None
    if pipeline is None and adapter.pipe is not None and is_pipeline(adapter.pipe):
        pipeline = adapter.pipe
    scaleout = ScaleOutPlan.check(
        list({id(spec.transformer): spec.transformer for spec in specs}.values()),
        parallelism_config=parallelism_config,
        quantize_config=quantize_config,
        attention_backend=attention_backend,
        pipeline=pipeline,
    )
    session = CacheSession(
        specs,
        configs,
        pipeline=pipeline,
        separate_cfg=separate_cfg,
        process_group=process_group,
    )
    session.install()
    _apply_scaleout(session, scaleout, explicit_group=process_group is not None)
    logger.info(
        "dit_cache_backend: caching %d block list(s) of %s in %s mode: %s",
        len(specs),
        type(pipe_or_adapter).__name__,
        "pipeline" if pipeline is not None else "persistent",
        "; ".join(
            f"{spec.name} ({len(spec.blocks)} blocks, {spec.pattern.name}, {config.strify()})"
            for spec, (config, _) in zip(specs, configs)
        ),
    )
    return pipe_or_adapter


def _apply_scaleout(session: CacheSession, scaleout: ScaleOutPlan, *, explicit_group: bool) -> None:
    """Parallelism, quantization, attention backend after the cache; on failure nothing stays."""
    try:
        scaleout.apply()
    except BaseException:
        scaleout.undo()
        session.uninstall()
        raise
    _SCALEOUT[session] = scaleout
    group = None if explicit_group else scaleout.process_group()
    if group is not None:
        # Decisions must agree over the ranks that share one sample: the context-parallel group.
        for context in session.contexts.values():
            context.process_group = group


def disable_cache(pipe_or_adapter: Any) -> Any:
    """Remove caching: original forward, module tree and ``__call__`` restored exactly.

    A top-level ``attention_backend`` given to ``enable_cache`` is reverted too; parallelism
    (with its attention backend) and quantization stay, as in cache-dit.
    """
    session = session_of(pipe_or_adapter)
    if session is None:
        logger.warning("disable_cache: caching is not enabled on %s", type(pipe_or_adapter).__name__)
        return pipe_or_adapter
    session.uninstall()
    scaleout = _SCALEOUT.pop(session, None)
    if scaleout is not None:
        scaleout.undo()
    return pipe_or_adapter


def set_attn_backend(pipe_or_adapter: Any, attention_backend: Optional[str] = None) -> None:
    """cache-dit's ``set_attn_backend``: set a diffusers attention backend on the transformer(s).

    The name is checked for this device first; the process-wide default stays as it was (diffusers'
    ``set_attention_backend`` would change it for every model). Nothing happens for ``None``.
    """
    if attention_backend is None:
        return
    if isinstance(pipe_or_adapter, torch.nn.Module) and not is_pipeline(pipe_or_adapter):
        models = [pipe_or_adapter]
    else:
        specs = resolve_adapter(adapter_for(pipe_or_adapter))
        models = list({id(spec.transformer): spec.transformer for spec in specs}.values())
    set_backend(models, check_backend(attention_backend, module_device(models)))


def refresh_context(transformer: Any, **kwargs: Any) -> Any:
    """Start every context of ``transformer`` afresh, optionally with changed settings.

    ``kwargs`` holds either ``cache_config`` (+ ``calibrator_config``) or flat fields such as
    ``num_inference_steps=50``; only the fields given change, and a flat field given as ``None``
    is cleared (``num_inference_steps=None``: the next request's length is unknown). The next
    configs are built with ``dataclasses.replace`` and validated once each; a refused refresh
    changes nothing. ``verbose`` is accepted for compatibility. Works in both persistent and
    pipeline mode.
    """
    session = session_of(transformer)
    if session is None:
        raise DitCacheError(
            f"refresh_context: caching is not enabled on {type(transformer).__name__}; "
            "call enable_cache() first"
        )
    kwargs.pop("verbose", None)
    cache_override = kwargs.pop("cache_config", None)
    calibrator_override = kwargs.pop("calibrator_config", None)
    if (cache_override is not None or calibrator_override is not None) and kwargs:
        key = next(iter(kwargs))
        raise ConfigError(key, kwargs[key], "either cache_config/calibrator_config or flat fields, not both")
    _check_override("cache_config", cache_override, DBCacheConfig, "a DBCacheConfig (or DBPruneConfig), or DBCacheConfig().reset(field=value)")
    _check_override("calibrator_config", calibrator_override, CalibratorConfig, "a TaylorSeerCalibratorConfig, or TaylorSeerCalibratorConfig().reset(field=value)")
    new_configs = []
    for spec, context in zip(session.specs, session.contexts.values()):
        current = context.cache_config
        calibrator_fields: dict = {}
        if kwargs:
            cache_fields, calibrator_fields = split_flat_options(kwargs, type(current))
            config = current.with_fields(**cache_fields) if cache_fields else current
        else:
            config = _overridden(current, cache_override)
        _check_against_blocks(spec.name, len(session.current_blocks(spec)), config)
        calibrator = refreshed_calibrator(
            _overridden(context.calibrator_config, calibrator_override), calibrator_fields
        )
        new_configs.append((config, calibrator))
    separate_cfg = None
    changed = new_configs[0][0].enable_separate_cfg if new_configs else None
    if changed is not None and changed != session.separate_cfg:
        separate_cfg = bool(changed)
    session.reconfigure(new_configs, separate_cfg=separate_cfg)
    return transformer


def _check_override(key: str, value: Any, config_class: type, allowed: str) -> None:
    if value is None or isinstance(value, config_class):
        return
    if isinstance(value, ConfigOverride) and issubclass(value.config_class, config_class):
        return
    raise ConfigError(key, f"a {type(value).__name__} ({value!r})", allowed)


def _overridden(current: Any, override: Any) -> Any:
    """``current`` after a refresh's ``cache_config``/``calibrator_config`` (a copy, never the
    caller's object): an override mapping changes its keys; a whole config replaces the fields
    it sets (its None fields keep the current values, as cache-dit's ``update``)."""
    if override is None:
        return current
    if isinstance(override, ConfigOverride):
        return override.apply_to(current)
    if current is None or type(override) is not type(current):
        return override.copy()
    return ConfigOverride(type(override), override.as_dict()).apply_to(current)
