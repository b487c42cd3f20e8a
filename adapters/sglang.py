"""SGLang Diffusion plugin: SGLang's own cache-dit integration points run on dit_cache_backend.

SGLang (0.5.21+) discovers :func:`register` through the ``sglang.multimodal_gen.plugins`` entry
point, in the CLI/server process and again in every spawned GPU worker, *before* its runtime
modules are imported. ``register`` therefore only registers hooks by dotted name; SGLang resolves
and applies them later. The hooks replace, with the same signatures:

* ``cache_dit_integration.{enable_cache_on_transformer, enable_cache_on_dual_transformer,
  refresh_context_on_transformer, refresh_context_on_dual_transformer,
  disable_cache_on_transformer, get_scm_mask}``: the native pipelines (``DenoisingStage``), so
  SGLang keeps doing what it does well (``SGLANG_CACHE_DIT_*`` parsing, per-request
  ``enable_cache_dit``/``cache_dit_params``, warmup skip, mount before torch.compile, Wan 2.2 step
  split, remount on knob change, SP/TP groups) and only the caching itself changes engine;
* ``DiffusersPipeline._apply_cache_dit``: ``--backend diffusers --cache-dit-config FILE``.

``DIT_CACHE_BACKEND_SGLANG=stock`` leaves SGLang's stock cache-dit integration untouched. With
``DIT_CACHE_STATS_FILE=PATH`` every finished denoising pass appends one JSON line per cache
context to PATH (see docs/sglang.md), which is how tests observe the worker process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from dit_cache_backend.backend import (
    EnablePlan,
    context_records,
    declared_adapter,
    disable_all,
    enable_all,
    enable_from_configs,
    is_cached,
    refresh_target,
    request_mask,
)
from dit_cache_backend.config.framework import FrameworkCacheConfig
from dit_cache_backend.errors import ConfigError

logger = logging.getLogger(__name__)

SWITCH_ENV = "DIT_CACHE_BACKEND_SGLANG"
STOCK = "stock"
STATS_FILE_ENV = "DIT_CACHE_STATS_FILE"

_INTEGRATION = "sglang.multimodal_gen.runtime.cache.cache_dit_integration"
_DENOISING_STAGE = "sglang.multimodal_gen.runtime.pipelines_core.stages.denoising.DenoisingStage"
_DIFFUSERS = "sglang.multimodal_gen.runtime.pipelines.diffusers_pipeline"

# SGLang's CacheDitConfig fields that configure its DMD calibrator (DMDCalibratorConfig's names).
DMD_FIELDS = ("dmd_history", "dmd_rank", "dmd_ridge", "dmd_svd_precision")

# Where each field of SGLang's CacheDitConfig (or steps_mask argument) comes from: (env variable,
# cache_dit_params key), to name them in error messages.
_SOURCES: Dict[str, Tuple[str, str]] = {
    "Fn_compute_blocks": ("SGLANG_CACHE_DIT_FN", "Fn_compute_blocks"),
    "Bn_compute_blocks": ("SGLANG_CACHE_DIT_BN", "Bn_compute_blocks"),
    "max_warmup_steps": ("SGLANG_CACHE_DIT_WARMUP", "max_warmup_steps"),
    "residual_diff_threshold": ("SGLANG_CACHE_DIT_RDT", "residual_diff_threshold"),
    "max_continuous_cached_steps": ("SGLANG_CACHE_DIT_MC", "max_continuous_cached_steps"),
    "taylorseer_order": ("SGLANG_CACHE_DIT_TS_ORDER", "taylorseer_order"),
    "enable_dmd": ("SGLANG_CACHE_DIT_DMD", "enable_dmd"),
    "dmd_history": ("SGLANG_CACHE_DIT_DMD_HISTORY", "dmd_history"),
    "dmd_rank": ("SGLANG_CACHE_DIT_DMD_RANK", "dmd_rank"),
    "dmd_ridge": ("SGLANG_CACHE_DIT_DMD_RIDGE", "dmd_ridge"),
    "dmd_svd_precision": ("SGLANG_CACHE_DIT_DMD_SVD_PRECISION", "dmd_svd_precision"),
    "steps_computation_policy": ("SGLANG_CACHE_DIT_SCM_POLICY", "scm_policy"),
    "steps_computation_mask": ("SGLANG_CACHE_DIT_SCM_PRESET", "scm_preset"),
    "mask_policy": ("SGLANG_CACHE_DIT_SCM_PRESET", "scm_preset"),
    "compute_bins+cache_bins": (
        "SGLANG_CACHE_DIT_SCM_COMPUTE_BINS/CACHE_BINS",
        "scm_compute_bins/scm_cache_bins",
    ),
}


# -- registration -------------------------------------------------------------------------------


def register() -> None:
    """Entry point of ``sglang.multimodal_gen.plugins``: register hooks, import nothing of SGLang's
    runtime (the plugin loader module itself is already imported by the caller)."""
    mode = os.environ.get(SWITCH_ENV, "").strip().lower()
    if mode == STOCK:
        logger.info("%s=stock: leaving SGLang's stock cache-dit integration in place", SWITCH_ENV)
        return
    if mode not in ("", "dit_cache_backend"):
        logger.warning(
            "%s=%r is not recognised (use 'stock' to keep SGLang's cache-dit integration); "
            "using dit_cache_backend",
            SWITCH_ENV,
            mode,
        )
    from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry, HookType

    replacements = {
        f"{_INTEGRATION}.enable_cache_on_transformer": enable_cache_on_transformer,
        f"{_INTEGRATION}.enable_cache_on_dual_transformer": enable_cache_on_dual_transformer,
        f"{_INTEGRATION}.refresh_context_on_transformer": refresh_context_on_transformer,
        f"{_INTEGRATION}.refresh_context_on_dual_transformer": refresh_context_on_dual_transformer,
        f"{_INTEGRATION}.disable_cache_on_transformer": disable_cache_on_transformer,
        f"{_INTEGRATION}.get_scm_mask": get_scm_mask,
        f"{_DIFFUSERS}.DiffusersPipeline._apply_cache_dit": apply_cache_dit,
    }
    for target, hook in replacements.items():
        HookRegistry.register(target, hook, HookType.REPLACE)
    # Only when asked: these hooks import the stage modules when SGLang applies them.
    if os.environ.get(STATS_FILE_ENV):
        HookRegistry.register(f"{_DENOISING_STAGE}.forward", record_native_stats, HookType.AFTER)
        HookRegistry.register(
            f"{_DIFFUSERS}.DiffusersExecutionStage.forward", record_diffusers_stats, HookType.AFTER
        )


# -- SGLang's CacheDitConfig -> our configs --------------------------------------------------------


@contextlib.contextmanager
def naming_sources(label: str) -> Iterator[None]:
    """Re-raise our ConfigError also naming the SGLang env variable / request key that set the
    field, so a user of SGLang knows what to change (used once, at the outermost call)."""
    try:
        yield
    except ConfigError as error:
        if error.key not in _SOURCES:
            raise
        env, request_key = _SOURCES[error.key]
        where = f"{env} or cache_dit_params['{request_key}']"
        if label == "secondary" and not request_key.startswith("scm_"):  # SCM settings are shared
            where = f"{env.replace('CACHE_DIT_', 'CACHE_DIT_SECONDARY_')} or cache_dit_params['secondary']"
        raise ConfigError(
            error.key,
            error.value,
            error.allowed,
            message=f"{error} [dit_cache_backend: {label} config, set by {where}]",
        ) from error


def _calibrator_settings(config: Any, label: str) -> Dict[str, Any]:
    if config.enable_dmd and config.enable_taylorseer:
        # Same rule and wording as SGLang's _assert_calibrator_exclusive.
        raise ValueError(
            f"DMD and TaylorSeer calibrators are mutually exclusive on {label}, but both are "
            "enabled. Please set only one of SGLANG_CACHE_DIT_DMD / SGLANG_CACHE_DIT_TAYLORSEER "
            "(or their SECONDARY_ variants) to true."
        )
    if config.enable_dmd:
        return {"enable_dmd": True, **{key: getattr(config, key) for key in DMD_FIELDS}}
    return {"enable_taylorseer": bool(config.enable_taylorseer), "taylorseer_order": config.taylorseer_order}


def translate(config: Any, has_separate_cfg: bool, label: str = "transformer") -> FrameworkCacheConfig:
    """Our configs from SGLang's ``CacheDitConfig`` (duck-typed), through the flat translation
    vLLM-Omni's settings take too, so both validate alike."""
    return FrameworkCacheConfig.from_flat(
        {
            "num_inference_steps": config.num_inference_steps,
            "Fn_compute_blocks": config.Fn_compute_blocks,
            "Bn_compute_blocks": config.Bn_compute_blocks,
            "max_warmup_steps": config.max_warmup_steps,
            "residual_diff_threshold": config.residual_diff_threshold,
            "max_continuous_cached_steps": config.max_continuous_cached_steps,
            "steps_computation_mask": config.steps_computation_mask,
            "steps_computation_policy": config.steps_computation_policy or "dynamic",
            # SGLang knows whether this run makes separate cond/uncond calls (CFG on and not
            # CFG-parallel); the registry's per-family guess would miscount otherwise.
            "enable_separate_cfg": has_separate_cfg,
            **_calibrator_settings(config, label),
        }
    )


def _plan(target: Any, config: Any, has_separate_cfg: bool, label: str, group: Any) -> EnablePlan:
    translated = translate(config, has_separate_cfg, label)
    return EnablePlan(
        target, translated.cache_config, translated.calibrator_config, group, label=label
    )


def _require_steps(config: Any) -> None:
    if config.num_inference_steps is None:
        raise ValueError(
            "num_inference_steps is required for transformer-only mode. "
            "Please provide it in CacheDitConfig."
        )


# -- which blocks ---------------------------------------------------------------------------------


def _custom_adapter(transformer: torch.nn.Module, has_separate_cfg: bool) -> Optional[Any]:
    """SGLang's own block specs for models cache-dit's registry lacks, read from SGLang at call
    time so new SGLang specs are picked up; None for every other model (our registry decides)."""
    from sglang.multimodal_gen.runtime.cache import cache_dit_integration as integration

    specs = integration._CUSTOM_BLOCK_ADAPTER_SPECS
    # FSDP adds a runtime subclass, so match anywhere in the MRO (as SGLang does).
    name = next(
        (
            cls.__name__
            for cls in type(transformer).__mro__
            if cls.__name__ == "Kandinsky6Transformer3DModel" or cls.__name__ in specs
        ),
        None,
    )
    if name is None:
        return None
    if name == "Kandinsky6Transformer3DModel":
        # The second stream is evolving audio, not static text conditioning.
        attr = "visual_transformer_blocks"
        pattern = "Pattern_0" if transformer.config.is_multimodal else "Pattern_2"
    else:
        attr, pattern = specs[name].blocks_attr, specs[name].forward_pattern
    if getattr(transformer, attr, None) is None:
        raise ValueError(
            f"Transformer {type(transformer).__name__} has no attribute {attr!r} for cache-dit blocks."
        )
    return declared_adapter(transformer, {attr: pattern}, has_separate_cfg=has_separate_cfg)


def _dual_adapters(
    model_name: str, transformers: Sequence[torch.nn.Module], has_separate_cfg: bool
) -> List[Any]:
    """One adapter per transformer, from SGLang's DUAL_TRANSFORMER_BLOCK_ADAPTER_SPECS."""
    from sglang.multimodal_gen.runtime.cache import cache_dit_integration as integration

    spec = integration.DUAL_TRANSFORMER_BLOCK_ADAPTER_SPECS.get(model_name)
    if spec is None:
        raise ValueError(
            "Dual-transformer cache-dit is only supported for "
            f"{sorted(integration.DUAL_TRANSFORMER_BLOCK_ADAPTER_SPECS)}, got {model_name}."
        )
    adapters = []
    for module, attr, pattern in zip(transformers, spec.blocks_attr, spec.forward_pattern):
        blocks = getattr(module, attr, None)
        if blocks is None:
            raise ValueError(
                f"Dual transformers for {model_name} must expose cache-dit block attributes "
                f"{spec.blocks_attr}; {type(module).__name__} has no {attr!r}"
            )
        adapters.append(
            declared_adapter(
                module,
                {attr: pattern},
                has_separate_cfg=spec.has_separate_cfg and has_separate_cfg,
                check_forward_pattern=spec.check_forward_pattern,
            )
        )
    return adapters


# -- which ranks agree ----------------------------------------------------------------------------


def decision_group(
    sp_group: Optional[Any], tp_group: Optional[Any], joint_cfg_decision: bool = False
) -> Optional[Any]:
    """The process group whose ranks must take identical cache decisions, chosen as SGLang does.

    Mixed SP+TP (or one forward carrying both CFG branches across CFG-parallel ranks) uses the
    DiT group, otherwise the SP or TP group. With neither, CFG/DP peers run different inputs and
    must decide alone: a singleton group, since our engine's default would be the world group.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from sglang.multimodal_gen.runtime.distributed import parallel_state

    if joint_cfg_decision and parallel_state.get_classifier_free_guidance_world_size() > 1:
        return parallel_state.get_dit_group()
    if sp_group is not None and tp_group is not None:
        return parallel_state.get_dit_group()
    if sp_group is not None or tp_group is not None:
        return sp_group if sp_group is not None else tp_group
    # No SP/TP slice here, so this rank's SP group holds only itself.
    return parallel_state.get_sp_group().device_group


# -- the five integration functions ----------------------------------------------------------------


def _guard(plan: EnablePlan) -> contextlib.AbstractContextManager:
    return naming_sources(plan.label)


def enable_cache_on_transformer(
    transformer: torch.nn.Module,
    config: Any,
    model_name: str = "transformer",
    sp_group: Optional[Any] = None,
    tp_group: Optional[Any] = None,
    has_separate_cfg: bool = False,
    joint_cfg_decision: bool = False,
) -> torch.nn.Module:
    """Replaces SGLang's function of the same name: cache ``transformer`` with our engine.

    The block lists come from SGLang's own specs for the models it declares, else from the model
    table or inference, exactly as ``enable_cache`` and ``CacheDiTBackend`` find them.
    """
    if not config.enabled:
        return transformer
    _require_steps(config)
    target = _custom_adapter(transformer, has_separate_cfg) or transformer
    group = decision_group(sp_group, tp_group, joint_cfg_decision)
    with naming_sources(model_name):
        plan = _plan(target, config, has_separate_cfg, model_name, group)
    enable_all([plan], guard=_guard)
    logger.info(
        "dit_cache_backend enabled on %s (%s, steps=%s)",
        model_name,
        type(transformer).__name__,
        config.num_inference_steps,
    )
    return transformer


def enable_cache_on_dual_transformer(
    transformer: torch.nn.Module,
    transformer_2: torch.nn.Module,
    primary_config: Any,
    secondary_config: Any,
    model_name: str = "wan2.2",
    sp_group: Optional[Any] = None,
    tp_group: Optional[Any] = None,
    has_separate_cfg: bool = True,
) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """Replaces SGLang's dual-DiT mount (Wan 2.2 experts, Ideogram 4).

    Each transformer gets its own context with its own config (primary: ``SGLANG_CACHE_DIT_*``,
    secondary: ``SGLANG_CACHE_DIT_SECONDARY_*``) and step count, as cache-dit's two
    ParamsModifiers do; both are validated before either is touched, and both are enabled or
    neither.
    """
    adapters = _dual_adapters(model_name, (transformer, transformer_2), has_separate_cfg)
    if not primary_config.enabled:
        return transformer, transformer_2
    _require_steps(primary_config)
    group = decision_group(sp_group, tp_group)
    plans = []
    for adapter, config, label in zip(
        adapters, (primary_config, secondary_config), ("primary", "secondary")
    ):
        with naming_sources(label):
            plans.append(_plan(adapter, config, adapter.has_separate_cfg, label, group))
    enable_all(plans, guard=_guard)
    logger.info(
        "dit_cache_backend enabled on %s dual transformers (steps=%s, %s)",
        model_name,
        primary_config.num_inference_steps,
        secondary_config.num_inference_steps,
    )
    return transformer, transformer_2


def _refresh(
    transformer: torch.nn.Module,
    num_inference_steps: int,
    mask: Optional[List[int]],
    scm_preset: Optional[str],
    policy: Optional[str],
) -> None:
    if not is_cached(transformer):
        logger.warning("refresh skipped: caching is not enabled on %s", type(transformer).__name__)
        return
    if mask is None and scm_preset not in (None, "none"):
        with naming_sources("SCM"):
            mask = request_mask(scm_preset, num_inference_steps)
    # Every field is given (a None mask clears the previous request's), so each request starts
    # with fresh state sized for its own step count.
    refresh_target(
        transformer,
        num_inference_steps,
        steps_computation_mask=mask,
        steps_computation_policy=policy or "dynamic",
    )


def refresh_context_on_transformer(
    transformer: torch.nn.Module,
    num_inference_steps: int,
    scm_preset: Optional[str] = None,
    verbose: bool = False,
    steps_computation_mask: Optional[List[int]] = None,
    steps_computation_policy: Optional[str] = None,
) -> None:
    """Replaces SGLang's per-request refresh: fresh context sized for this request."""
    _refresh(
        transformer, num_inference_steps, steps_computation_mask, scm_preset, steps_computation_policy
    )


def refresh_context_on_dual_transformer(
    transformer: torch.nn.Module,
    transformer_2: torch.nn.Module,
    num_high_noise_steps: int,
    num_low_noise_steps: int,
    scm_preset: Optional[str] = None,
    verbose: bool = False,
    steps_computation_mask: Optional[List[int]] = None,
    steps_computation_mask_2: Optional[List[int]] = None,
    steps_computation_policy: Optional[str] = None,
) -> None:
    """Replaces SGLang's dual refresh: each expert sized with its share of the steps."""
    masks = [steps_computation_mask, steps_computation_mask_2]
    counts = [num_high_noise_steps, num_low_noise_steps]
    for module, steps, mask in zip((transformer, transformer_2), counts, masks):
        _refresh(module, steps, mask, scm_preset, steps_computation_policy)


def disable_cache_on_transformer(transformer: torch.nn.Module) -> torch.nn.Module:
    """Replaces SGLang's unmount: original forward and block lists restored exactly."""
    disable_all([transformer])
    return transformer


def get_scm_mask(
    preset: str,
    num_inference_steps: int,
    compute_bins: Optional[List[int]] = None,
    cache_bins: Optional[List[int]] = None,
) -> Optional[List[int]]:
    """Replaces SGLang's SCM mask builder with our ``steps_mask`` (same masks as cache-dit's).

    A preset that has no table for this step count (below 8 steps, other than 4 or 6) runs without
    a mask and logs a warning, as SGLang's docs promise, where cache-dit fails the request.
    """
    if preset == "none" and not (compute_bins and cache_bins):
        return None
    with naming_sources("SCM"):
        return request_mask(
            preset if preset != "none" else None,
            num_inference_steps,
            compute_bins=compute_bins,
            cache_bins=cache_bins,
        )


# -- the diffusers backend ------------------------------------------------------------------------


def apply_cache_dit(self: Any, pipe: Any, server_args: Any) -> Any:
    """Replaces ``DiffusersPipeline._apply_cache_dit``: ``--cache-dit-config`` through our loader.

    Every section applies (docs/scaling.md): ``parallelism_config`` on diffusers' context
    parallelism over the torchrun world, ``quantize_config`` on torchao, ``attention_backend``.
    """
    source = server_args.cache_dit_config
    if not source:
        return pipe
    enable_from_configs(pipe, source)
    logger.info("dit_cache_backend enabled on diffusers pipeline %s", type(pipe).__name__)
    self._cache_dit_enabled = True
    return pipe


# -- stats channel (DIT_CACHE_STATS_FILE) ----------------------------------------------------------


def stats_records(backend: str, modules: Sequence[Any]) -> List[Dict[str, Any]]:
    """One JSON-ready record per cache context of the cached modules (others are skipped)."""
    return [
        {
            "engine": "dit_cache_backend",
            "backend": backend,
            "pid": os.getpid(),
            "module": type(module).__name__,
            "context": record.name,
            **{k: v for k, v in dataclasses.asdict(record).items() if k != "name"},
            "executed_steps": len(record.steps),
        }
        for module in modules
        for record in context_records([module])
    ]


def _append_stats(backend: str, modules: Sequence[Any]) -> None:
    path = os.environ.get(STATS_FILE_ENV)
    if not path:
        return
    with open(path, "a") as handle:
        for record in stats_records(backend, modules):
            handle.write(json.dumps(record) + "\n")


def record_native_stats(result: Any, stage: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER hook on ``DenoisingStage.forward``; returns None so SGLang keeps the result."""
    _append_stats("sglang", (stage.transformer, getattr(stage, "transformer_2", None)))


def record_diffusers_stats(result: Any, stage: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER hook on ``DiffusersExecutionStage.forward``."""
    _append_stats("diffusers", (stage.diffusers_pipe,))
