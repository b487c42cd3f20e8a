"""``CacheDiTBackend``: the object serving frameworks drive (enable once, refresh per request).

Frameworks load a pipeline, call :meth:`CacheDiTBackend.enable` once, then
:meth:`CacheDiTBackend.refresh` before every request (batch) with its step count. Which block lists
get cached is decided by an *enabler*, looked up in :data:`CUSTOM_DIT_ENABLERS` by
``type(pipeline).__name__``; pipelines without one use the standard enabler, which caches every DiT
module the pipeline lists in ``_dit_modules`` (default ``("transformer",)``).

An enabler is ``(pipeline, FrameworkCacheConfig) -> refresh | EnableResult`` where ``refresh`` is
``(pipeline, num_inference_steps, verbose) -> None``. Register more with :func:`register_enabler`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import operator
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .adapter import BlockAdapter
from .api import disable_cache, enable_cache, refresh_context
from .errors import ConfigError, UnsupportedModelError, UnsupportedStepCountError
from .framework_config import FrameworkCacheConfig
from .patterns import ForwardPattern
from .scm import steps_mask
from .session import session_of

logger = logging.getLogger(__name__)

RefreshFn = Callable[[Any, int, bool], None]


@dataclasses.dataclass(frozen=True)
class EnableResult:
    """What an enabler set up: how to refresh it, and which modules now carry caching."""

    refresh: RefreshFn
    targets: Tuple[Any, ...]


Enabler = Callable[[Any, FrameworkCacheConfig], Union[RefreshFn, EnableResult]]

CUSTOM_DIT_ENABLERS: Dict[str, Enabler] = {}


def register_enabler(*pipeline_class_names: str) -> Callable[[Enabler], Enabler]:
    """Decorator: use ``enabler`` for pipelines whose ``type(pipeline).__name__`` is listed."""
    if not pipeline_class_names:
        raise ValueError("register_enabler needs at least one pipeline class name")

    def decorator(enabler: Enabler) -> Enabler:
        for name in pipeline_class_names:
            CUSTOM_DIT_ENABLERS[name] = enabler
        return enabler

    return decorator


# -- per-request configuration ------------------------------------------------------------------


def request_settings(config: FrameworkCacheConfig, num_inference_steps: Optional[int]) -> Dict[str, Any]:
    """The fields that change per request: the step count and the SCM mask built for it.

    ``None`` values clear the field (see ``refresh_context``): an unknown step count means no step
    limit and no mask.
    """
    settings: Dict[str, Any] = {"num_inference_steps": num_inference_steps}
    policy = config.scm_steps_mask_policy
    if policy is not None:
        mask = None
        if num_inference_steps is not None:
            try:
                mask = steps_mask(total_steps=num_inference_steps, mask_policy=policy)
            except UnsupportedStepCountError:
                # A request the preset cannot describe still runs: plain DBCache, no mask.
                logger.warning(
                    "SCM preset %r has no mask for %d steps; this request runs without a mask",
                    policy,
                    num_inference_steps,
                )
        settings["steps_computation_mask"] = mask
        if mask is not None:
            settings["steps_computation_policy"] = config.scm_steps_policy
    hint = config.cache_config.force_refresh_step_hint
    if hint is not None:
        # Re-arm the hint for every request ("once" clears it after its first refresh).
        settings["force_refresh_step_hint"] = hint
    return settings


def _refresh_targets(
    targets: Sequence[Any],
    config: FrameworkCacheConfig,
    counts: Sequence[Optional[int]],
    verbose: bool,
) -> None:
    for target, steps in zip(targets, counts):
        # An expert that sees no step this request (Wan 2.2 split) just starts clean.
        refresh_context(target, **request_settings(config, steps or None))
        if verbose:
            logger.debug("refreshed %s for %s steps", type(target).__name__, steps)


# -- enablers -----------------------------------------------------------------------------------


def _framework_adapter(module: torch.nn.Module) -> Optional[BlockAdapter]:
    """A BlockAdapter from a transformer's ``_cache_dit_adapter_config`` (vLLM-Omni ≥ 0.26)."""
    declared = getattr(type(module), "_cache_dit_adapter_config", None)
    if declared is None:
        return None
    patterns = dict(declared.block_forward_patterns)
    return BlockAdapter(
        transformer=module,
        blocks=[getattr(module, name) for name in patterns],
        blocks_name=list(patterns),
        forward_pattern=[ForwardPattern[getattr(p, "name", p)] for p in patterns.values()],
        has_separate_cfg=bool(getattr(declared, "has_separate_cfg", False)),
        check_forward_pattern=bool(getattr(declared, "check_forward_pattern", True)),
    )


def dit_modules(pipeline: Any) -> List[torch.nn.Module]:
    """The pipeline's DiT modules: ``_dit_modules`` (dotted paths allowed), else ``transformer``."""
    names = getattr(pipeline, "_dit_modules", None) or ("transformer",)
    modules = []
    for name in names:
        try:
            module = operator.attrgetter(name)(pipeline)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.Module):
            modules.append(module)
    return modules


def _enable_all(targets: Sequence[Any], config: FrameworkCacheConfig, **kwargs: Any) -> None:
    """Enable every target, or none: a failure part-way undoes the ones already enabled."""
    done: List[Any] = []
    try:
        for target in targets:
            enable_cache(
                target,
                cache_config=config.cache_config,
                calibrator_config=config.calibrator_config,
                **kwargs,
            )
            done.append(target)
    except BaseException:
        for target in done:
            disable_cache(target)
        raise


def standard_enabler(pipeline: Any, config: FrameworkCacheConfig) -> EnableResult:
    """Cache each DiT module on its own (persistent contexts, refreshed per request)."""
    modules = dit_modules(pipeline)
    if not modules:
        raise UnsupportedModelError(
            f"{type(pipeline).__name__} has no DiT module to cache: neither `_dit_modules` nor "
            "`transformer` names an nn.Module. Register an enabler with "
            "dit_cache_backend.register_enabler('" + type(pipeline).__name__ + "')."
        )
    targets = [_framework_adapter(module) or module for module in modules]
    _enable_all(targets, config)

    def refresh(pipe: Any, num_inference_steps: int, verbose: bool = True) -> None:
        _refresh_targets(targets, config, [num_inference_steps] * len(targets), verbose)

    return EnableResult(refresh, tuple(targets))


# Wan 2.2's denoising loop switches to the low-noise expert below this fraction of the training
# timesteps when the pipeline does not set its own ratio (vLLM-Omni's and diffusers' default).
WAN22_DEFAULT_BOUNDARY_RATIO = 0.875


def wan22_step_split(pipeline: Any, num_inference_steps: int) -> Tuple[int, int]:
    """(high-noise steps, low-noise steps) from the scheduler's real timesteps for this request."""
    ratio = getattr(pipeline, "boundary_ratio", None)
    if ratio is None:
        ratio = getattr(getattr(pipeline, "config", None), "boundary_ratio", None)
    if ratio is None:
        ratio = WAN22_DEFAULT_BOUNDARY_RATIO
    scheduler = copy.deepcopy(pipeline.scheduler)  # never disturb the pipeline's own scheduler
    scheduler.set_timesteps(num_inference_steps)
    boundary = ratio * scheduler.config.num_train_timesteps
    high = int(sum(1 for t in scheduler.timesteps if float(t) >= boundary))
    return high, num_inference_steps - high


@register_enabler(
    "Wan22Pipeline", "Wan22I2VPipeline", "Wan22TI2VPipeline", "Wan22VACEPipeline", "WanPipeline",
    "WanImageToVideoPipeline",
)
def wan22_enabler(pipeline: Any, config: FrameworkCacheConfig) -> EnableResult:
    """Wan 2.1/2.2: each expert (``transformer``, ``transformer_2``) gets its own context.

    The low-noise expert starts counting at the switch-over, so it gets its own warmup; per request
    each context is sized with its share of the steps, split at the boundary timestep.
    """
    experts = [m for m in (getattr(pipeline, "transformer", None), getattr(pipeline, "transformer_2", None))
               if isinstance(m, torch.nn.Module)]
    if not experts:
        raise UnsupportedModelError(f"{type(pipeline).__name__} has no transformer to cache")
    targets = [
        BlockAdapter(
            transformer=expert,
            blocks=expert.blocks,
            blocks_name="blocks",
            forward_pattern=ForwardPattern.Pattern_2,
            has_separate_cfg=True,
            check_forward_pattern=False,
        )
        for expert in experts
    ]
    _enable_all(targets, config)

    def refresh(pipe: Any, num_inference_steps: int, verbose: bool = True) -> None:
        counts = (
            wan22_step_split(pipe, num_inference_steps)
            if len(targets) == 2
            else (num_inference_steps,)
        )
        _refresh_targets(targets, config, counts, verbose)

    return EnableResult(refresh, tuple(targets))


@register_enabler("LongCatImagePipeline", "LongCatImageEditPipeline")
def longcat_image_enabler(pipeline: Any, config: FrameworkCacheConfig) -> EnableResult:
    """LongCat-Image: two block lists of one transformer, each with its own context."""
    transformer = pipeline.transformer
    target = BlockAdapter(
        transformer=transformer,
        blocks=[transformer.transformer_blocks, transformer.single_transformer_blocks],
        blocks_name=["transformer_blocks", "single_transformer_blocks"],
        forward_pattern=[ForwardPattern.Pattern_1, ForwardPattern.Pattern_1],
        has_separate_cfg=True,
        check_forward_pattern=False,
    )
    _enable_all([target], config)

    def refresh(pipe: Any, num_inference_steps: int, verbose: bool = True) -> None:
        _refresh_targets([target], config, [num_inference_steps], verbose)

    return EnableResult(refresh, (target,))


@register_enabler("BagelPipeline")
def bagel_enabler(pipeline: Any, config: FrameworkCacheConfig) -> EnableResult:
    """BAGEL: the language model's decoder layers (Pattern_0), as vLLM-Omni wires it.

    The layers' second positional slot carries the KV-cache object, not an encoder tensor; the
    engine threads it through untouched and caches only tensor streams.
    """
    model = operator.attrgetter("language_model.model")(pipeline)
    target = BlockAdapter(
        transformer=model,
        blocks=model.layers,
        blocks_name="layers",
        forward_pattern=ForwardPattern.Pattern_0,
        check_forward_pattern=False,
    )
    _enable_all([target], config)

    def refresh(pipe: Any, num_inference_steps: int, verbose: bool = True) -> None:
        _refresh_targets([target], config, [num_inference_steps], verbose)

    return EnableResult(refresh, (target,))


# -- the backend --------------------------------------------------------------------------------


class CacheDiTBackend:
    """enable / refresh / disable / is_enabled, as vLLM-Omni and SGLang call them."""

    def __init__(self, cache_config: Any = None) -> None:
        self.config = FrameworkCacheConfig.from_any(cache_config)
        self.enabled = False
        self._refresh: Optional[RefreshFn] = None
        self._targets: Tuple[Any, ...] = ()

    def enable(self, pipeline: Any) -> None:
        if self.enabled:
            raise ConfigError(
                "pipeline", type(pipeline).__name__, "one enable() per backend; call disable() first"
            )
        enabler = CUSTOM_DIT_ENABLERS.get(type(pipeline).__name__, standard_enabler)
        result = enabler(pipeline, self.config)
        if not isinstance(result, EnableResult):
            result = EnableResult(result, (pipeline.transformer,))
        self._refresh, self._targets = result.refresh, result.targets
        self.enabled = True

    def refresh(self, pipeline: Any, num_inference_steps: Optional[int], verbose: bool = True) -> None:
        """Start the next request clean, sized for ``num_inference_steps`` (None: unknown)."""
        if not self.enabled or self._refresh is None:
            return
        if num_inference_steps is None:
            _refresh_targets(self._targets, self.config, [None] * len(self._targets), verbose)
            return
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ConfigError("num_inference_steps", num_inference_steps, "a positive integer or None")
        self._refresh(pipeline, num_inference_steps, verbose)

    def disable(self, pipeline: Any) -> None:
        for target in self._targets:
            if session_of(target) is not None:
                disable_cache(target)
        self._targets, self._refresh, self.enabled = (), None, False

    def is_enabled(self) -> bool:
        return self.enabled

    @property
    def targets(self) -> Tuple[Any, ...]:
        return self._targets

    def __repr__(self) -> str:
        return f"{type(self).__name__}(enabled={self.enabled}, config={self.config.cache_config.strify()})"
