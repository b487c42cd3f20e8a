"""``CacheDiTBackend`` and the operations every serving framework's plugin goes through.

Frameworks load a pipeline, call :meth:`CacheDiTBackend.enable` once, then
:meth:`CacheDiTBackend.refresh` before every request (batch) with its step count. Which modules
get cached is decided by an *enabler*, looked up in :data:`CUSTOM_DIT_ENABLERS` by
``type(pipeline).__name__``; pipelines without one use the standard enabler. The built-in enablers
are made by :func:`make_enabler` from the model table's rows (:mod:`.registry`), which also give
every target its block lists, so a model the backend caches is a model ``enable_cache`` caches.

An enabler is ``(pipeline, FrameworkCacheConfig) -> refresh | EnableResult`` where ``refresh`` is
``(pipeline, num_inference_steps, verbose) -> None``. Register more with :func:`register_enabler`.

The module-level operations (:func:`enable_all`, :func:`refresh_target`, :func:`disable_all`,
:func:`context_records`, :func:`enable_from_configs`) are the one seam through which the plugins in
``adapters/`` reach the engine: all-or-nothing enabling, per-request refreshes and the per-context
records of what a request did.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import numbers
import operator
from typing import (
    Any,
    Callable,
    ContextManager,
    Deque,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch

from .api import disable_cache, enable_cache, refresh_context
from .block_adapter import BlockAdapter
from .config import CalibratorConfig, DBCacheConfig, load_configs
from .errors import ConfigError, DitCacheError, UnsupportedModelError
from .config.framework import FrameworkCacheConfig
from .patterns import ForwardPattern
from .policy import COND
from .registry import FAMILIES, StepSplit, transformer_attrs
# The plugins build a request's mask through the backend; the one rule lives in scm.
from .scm import request_mask  # noqa: F401
from .session import session_of
from .stats import context_stats, summary

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


# -- the operations the framework plugins use ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EnablePlan:
    """One module (or BlockAdapter) to cache, with its configs; ``label`` names it in errors."""

    target: Any
    cache_config: DBCacheConfig
    calibrator_config: Optional[CalibratorConfig] = None
    process_group: Optional[object] = None
    label: str = "transformer"


def _no_guard(plan: EnablePlan) -> ContextManager[None]:
    return contextlib.nullcontext()


def enable_all(
    plans: Sequence[EnablePlan],
    guard: Callable[[EnablePlan], ContextManager[None]] = _no_guard,
) -> Tuple[Any, ...]:
    """Enable every plan, or none: a failure part-way disables the ones already enabled.

    ``guard(plan)`` wraps each enable (a plugin re-raises errors naming its own settings).
    """
    done: List[Any] = []
    try:
        for plan in plans:
            with guard(plan):
                enable_cache(
                    plan.target,
                    cache_config=plan.cache_config,
                    calibrator_config=plan.calibrator_config,
                    process_group=plan.process_group,
                )
            done.append(plan.target)
    except BaseException:
        for target in done:
            disable_cache(target)
        raise
    return tuple(done)


def disable_all(targets: Sequence[Any]) -> None:
    """Take caching off every target that still carries it (others are left alone)."""
    for target in targets:
        if is_cached(target):
            disable_cache(target)


def is_cached(target: Any) -> bool:
    return target is not None and session_of(target) is not None


# Passed as a refresh's mask: keep the mask the target was enabled with.
KEEP = object()


def refresh_target(
    target: Any,
    num_inference_steps: Optional[int],
    *,
    steps_computation_mask: Any = KEEP,
    steps_computation_policy: str = "dynamic",
    force_refresh_step_hint: Optional[int] = None,
    compute_budget: Any = None,
) -> None:
    """Start every context of ``target`` clean, sized for a request of ``num_inference_steps``.

    ``None`` steps: unknown length (no step limit). A given mask (None clears it) comes with its
    policy; ``force_refresh_step_hint`` is re-armed for this request when given, and so is a
    ``compute_budget`` (a count, or a fraction of this request's steps).
    """
    settings: Dict[str, Any] = {"num_inference_steps": num_inference_steps}
    if compute_budget is not None:
        settings["compute_budget"] = compute_budget
    if steps_computation_mask is not KEEP:
        settings["steps_computation_mask"] = steps_computation_mask
        if steps_computation_mask is not None:
            settings["steps_computation_policy"] = steps_computation_policy
    if force_refresh_step_hint is not None:
        settings["force_refresh_step_hint"] = force_refresh_step_hint
    refresh_context(target, **settings)


@dataclasses.dataclass(frozen=True)
class ContextRecord:
    """What one cache context did during one request (plain data: it crosses process boundaries)."""

    name: str
    num_inference_steps: Optional[int]  # the step count the context was sized for
    config: str  # the cache config's strify() tag
    calibrator: Optional[str]  # the calibrator config's class name
    steps: Tuple[int, ...]  # every diffusion step the context saw (cond branch)
    computed_steps: Tuple[int, ...]
    cached_steps: Tuple[int, ...]
    decisions: int  # transformer calls decided (both CFG branches)
    cached_tensors: int  # what the context holds until the next request (memory accounting)


def context_records(targets: Sequence[Any]) -> Tuple[ContextRecord, ...]:
    """One record per cache context of the cached targets, in enable order (others skipped)."""
    records = []
    for target in targets:
        session = session_of(target) if target is not None else None
        if session is None:
            continue
        for context in session.contexts.values():
            stats = context_stats(context)
            calibrator = stats.cache_options.get("calibrator_config")
            records.append(
                ContextRecord(
                    name=stats.name,
                    num_inference_steps=context.cache_config.num_inference_steps,
                    config=context.cache_config.strify(),
                    calibrator=None if calibrator is None else type(calibrator).__name__,
                    steps=tuple(sorted({d.step for d in stats.decisions if d.branch == COND})),
                    computed_steps=tuple(stats.computed_steps),
                    cached_steps=tuple(stats.cached_steps),
                    decisions=len(stats.decisions),
                    cached_tensors=stats.cached_tensors,
                )
            )
    return tuple(records)


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One refresh of a backend and what the request after it did."""

    num_inference_steps: Optional[int]
    contexts: Tuple[ContextRecord, ...]


# Per-request records a backend keeps: enough to look back over a warm-up and a few requests.
REQUEST_LOG_SIZE = 32


def enable_from_configs(pipeline: Any, source: Any) -> None:
    """Cache a diffusers pipeline as a cache-dit YAML/JSON file (or dict) describes it."""
    enable_cache(pipeline, **load_configs(source))


def log_summary(targets: Sequence[Any], details: bool = True) -> None:
    """Log every cached target's statistics (cache-dit's summary format)."""
    for target in targets:
        if is_cached(target):
            summary(target, details=details)


# -- enablers -----------------------------------------------------------------------------------


def declared_adapter(
    module: torch.nn.Module,
    patterns: Mapping[str, Any],
    *,
    has_separate_cfg: bool = False,
    check_forward_pattern: Optional[bool] = None,
) -> BlockAdapter:
    """A BlockAdapter from a framework's own block declaration: ``{list attribute: pattern}``,
    patterns given as cache-dit ``ForwardPattern`` members or their names."""
    missing = [name for name in patterns if not isinstance(getattr(module, name, None), torch.nn.Module)]
    if missing:
        raise UnsupportedModelError(
            f"{type(module).__name__} declares cache-dit block list(s) {missing} it does not have"
        )
    return BlockAdapter(
        transformer=module,
        blocks=[getattr(module, name) for name in patterns],
        blocks_name=list(patterns),
        forward_pattern=[ForwardPattern[getattr(p, "name", p)] for p in patterns.values()],
        has_separate_cfg=has_separate_cfg,
        check_forward_pattern=check_forward_pattern,
    )


def _framework_adapter(module: torch.nn.Module) -> Optional[BlockAdapter]:
    """A BlockAdapter from a transformer's ``_cache_dit_adapter_config`` (vLLM-Omni ≥ 0.26)."""
    declared = getattr(type(module), "_cache_dit_adapter_config", None)
    if declared is None:
        return None
    return declared_adapter(
        module,
        dict(declared.block_forward_patterns),
        has_separate_cfg=bool(getattr(declared, "has_separate_cfg", False)),
        check_forward_pattern=bool(getattr(declared, "check_forward_pattern", True)),
    )


def dit_modules(pipeline: Any) -> List[torch.nn.Module]:
    """The pipeline's DiT modules: ``_dit_modules`` (dotted paths allowed), else its model-table
    row's transformer attributes (default ``transformer``, ``transformer_2``)."""
    names = getattr(pipeline, "_dit_modules", None) or transformer_attrs(pipeline)
    modules = []
    for name in names:
        try:
            module = operator.attrgetter(name)(pipeline)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.Module):
            modules.append(module)
    return modules


def make_enabler(
    targets: Callable[[Any], Sequence[torch.nn.Module]],
    split_steps: Optional[StepSplit] = None,
) -> Enabler:
    """An enabler caching each module ``targets(pipeline)`` returns, all or none.

    Each module's block lists come from its ``_cache_dit_adapter_config`` (vLLM-Omni), else the
    model table, else inference — exactly as ``enable_cache(module)`` resolves them. Per request,
    ``split_steps(pipeline, n)`` gives each module its share of the steps (Wan 2.2's experts);
    without it every module is sized for the whole request.
    """

    def enabler(pipeline: Any, config: FrameworkCacheConfig) -> EnableResult:
        modules = list(targets(pipeline))
        if not modules:
            raise UnsupportedModelError(
                f"{type(pipeline).__name__} has no DiT module to cache: neither `_dit_modules` "
                "nor its transformer attributes name an nn.Module. Register an enabler with "
                f"dit_cache_backend.register_enabler('{type(pipeline).__name__}')."
            )
        done = enable_all(
            [
                EnablePlan(_framework_adapter(m) or m, config.cache_config, config.calibrator_config)
                for m in modules
            ]
        )

        def refresh(pipe: Any, num_inference_steps: int, verbose: bool = True) -> None:
            counts: Sequence[int] = [num_inference_steps] * len(done)
            if split_steps is not None and len(done) > 1:
                counts = split_steps(pipe, num_inference_steps)
            _refresh_all(done, config, counts, verbose)

        return EnableResult(refresh, done)

    return enabler


standard_enabler = make_enabler(dit_modules)

for _family in FAMILIES:
    if _family.pipelines:
        register_enabler(*_family.pipelines)(
            make_enabler(_family.pipeline_transformers, _family.split_steps)
        )


def _refresh_all(
    targets: Sequence[Any],
    config: FrameworkCacheConfig,
    counts: Sequence[Optional[int]],
    verbose: bool,
) -> None:
    """Refresh each target for its step count, with the backend's per-request SCM mask."""
    policy = config.scm_steps_mask_policy
    for target, steps in zip(targets, counts):
        # An expert that sees no step this request (Wan 2.2 split) just starts clean.
        steps = steps or None
        refresh_target(
            target,
            steps,
            steps_computation_mask=KEEP if policy is None else request_mask(policy, steps),
            steps_computation_policy=config.scm_steps_policy,
            # Re-armed for every request ("once" clears it after its first refresh).
            force_refresh_step_hint=config.cache_config.force_refresh_step_hint,
            # An expert that sees no step this request has no budget to size.
            compute_budget=None if steps is None else config.compute_budget,
        )
        if verbose:
            logger.debug("refreshed %s for %s steps", type(target).__name__, steps)


# -- the backend --------------------------------------------------------------------------------


def _framework_config(cache_config: Any) -> FrameworkCacheConfig:
    """Accept what the frameworks pass, plus ``load_configs``' result; refuse the rest clearly."""
    if isinstance(cache_config, Mapping) and isinstance(cache_config.get("cache_config"), DBCacheConfig):
        # The framework owns parallelism, quantization and attention; a file setting them is
        # meant for enable_cache, not for a serving backend.
        unexpected = sorted(
            key
            for key, value in cache_config.items()
            if key not in ("cache_config", "calibrator_config") and value is not None
        )
        if unexpected:
            raise ConfigError(
                "cache_config",
                unexpected,
                "a load_configs() result with only cache_config and calibrator_config set "
                "(the serving framework configures parallelism, quantization and attention)",
            )
        return FrameworkCacheConfig(
            cache_config["cache_config"].copy(), cache_config.get("calibrator_config")
        )
    if cache_config is not None and not isinstance(
        cache_config, (Mapping, DBCacheConfig, FrameworkCacheConfig)
    ) and not (dataclasses.is_dataclass(cache_config) or hasattr(cache_config, "__dict__")):
        raise ConfigError(
            "cache_config",
            cache_config,
            "None, a flat dict of cache settings (vLLM-Omni's --cache-config), a DBCacheConfig, "
            "load_configs(<preset or file>)'s result, or a framework config object",
            hint="for a preset or YAML file use CacheDiTBackend(dit_cache_backend.load_configs(path))",
        )
    return FrameworkCacheConfig.from_any(cache_config)


def _step_count(num_inference_steps: Any) -> int:
    # numpy and torch integers are step counts too; bool is an int subclass, but never one.
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise ConfigError("num_inference_steps", num_inference_steps, "a positive integer or None")
    steps = int(num_inference_steps)
    if steps < 1:
        raise ConfigError("num_inference_steps", num_inference_steps, "a positive integer or None")
    return steps


class CacheDiTBackend:
    """enable / refresh / disable / is_enabled, as vLLM-Omni and SGLang call them."""

    def __init__(self, cache_config: Any = None) -> None:
        self.config = _framework_config(cache_config)
        self.enabled = False
        self._refresh: Optional[RefreshFn] = None
        self._targets: Tuple[Any, ...] = ()
        self._requests: Deque[RequestRecord] = collections.deque(maxlen=REQUEST_LOG_SIZE)
        self._open_request: Optional[Tuple[Optional[int]]] = None  # (steps,) while one runs

    def enable(self, pipeline: Any) -> None:
        if self.enabled:
            raise DitCacheError(
                f"this CacheDiTBackend is already enabled on {type(pipeline).__name__}; "
                "call disable() first (one enable() per backend)"
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
        steps = None if num_inference_steps is None else _step_count(num_inference_steps)
        self._close_request()
        if steps is None:
            _refresh_all(self._targets, self.config, [None] * len(self._targets), verbose)
        else:
            self._refresh(pipeline, steps, verbose)
        self._open_request = (steps,)

    def disable(self, pipeline: Any) -> None:
        self._close_request()
        disable_all(self._targets)
        self._targets, self._refresh, self.enabled = (), None, False

    def is_enabled(self) -> bool:
        return self.enabled

    @property
    def targets(self) -> Tuple[Any, ...]:
        return self._targets

    def request_records(self) -> List[RequestRecord]:
        """Finished requests (oldest first, at most REQUEST_LOG_SIZE), then the one running."""
        records = list(self._requests)
        if self._open_request is not None:
            records.append(RequestRecord(self._open_request[0], context_records(self._targets)))
        return records

    def _close_request(self) -> None:
        # Snapshot the finished request before a refresh starts its contexts afresh.
        if self._open_request is not None:
            self._requests.append(
                RequestRecord(self._open_request[0], context_records(self._targets))
            )
            self._open_request = None

    def log_summary(self, details: bool = True) -> None:
        log_summary(self._targets, details)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(enabled={self.enabled}, config={self.config.cache_config.strify()})"
