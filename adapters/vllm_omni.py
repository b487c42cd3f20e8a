"""vLLM-Omni plugin: ``cache_backend="cache_dit"`` (and ``"dit_cache"``) run on dit_cache_backend.

vLLM-Omni calls :func:`register` (entry point ``vllm_omni.general_plugins``) in every process it
starts, before a diffusion worker loads its pipeline. Its backend selector is a hard-coded if/elif
chain, so we wrap ``get_cache_backend`` and rebind the wrapper wherever the original was imported
by name (the model runner does ``from ...selector import get_cache_backend``).

The backend we return subclasses vLLM-Omni's own ``CacheDiTBackend`` rather than only the abstract
``CacheBackend``: the runner hands a backend that ``isinstance(..., CacheDiTBackend)`` to pipelines
that own request-scoped Cache-DiT (MiniMax-H3, MammothModa2), and several pipelines decide what to
allow by that class or by the name ``"cache_dit"``. Every method vLLM-Omni calls is overridden, so
none of its cache-dit code runs on our modules.

Set ``DIT_CACHE_BACKEND_VLLM_OMNI=builtin`` to keep vLLM-Omni's own cache-dit for ``"cache_dit"``;
``"dit_cache"`` always selects this engine.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
import sys
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Tuple

from dit_cache_backend.backend import CacheDiTBackend, RequestRecord
from dit_cache_backend.errors import ConfigError

logger = logging.getLogger(__name__)

OUR_NAME = "dit_cache"
CACHE_DIT_NAME = "cache_dit"
SWITCH_ENV = "DIT_CACHE_BACKEND_VLLM_OMNI"
SWITCH_BUILTIN = "builtin"
SWITCH_DEFAULT = "dit_cache"

SELECTOR_MODULE = "vllm_omni.diffusion.cache.selector"
# Modules that bind ``get_cache_backend`` by name: the runner (0.14+) and the 0.12 GPU worker.
CALL_SITE_MODULES = (
    "vllm_omni.diffusion.worker.diffusion_model_runner",
    "vllm_omni.diffusion.worker.gpu_worker",
)
# Where vLLM-Omni's CacheDiTBackend lives: the cachedit package (0.26+), the single file (<= 0.22).
CACHE_DIT_MODULES = ("vllm_omni.diffusion.cache.cachedit", "vllm_omni.diffusion.cache.cache_dit_backend")
# The request-scoped runtime (0.30) builds a fresh CacheDiTBackend when a pipeline switches profile.
RUNTIME_MODULE = "vllm_omni.diffusion.cache.cachedit.runtime"
RUNNER_MODULE = CALL_SITE_MODULES[0]

_WRAPPED_MARK = "_dit_cache_backend_wrapped"
PIPELINE_ATTR = "_dit_cache_backend"


class RegistrationError(RuntimeError):
    """vLLM-Omni's hooks are not where this plugin expects them (an untested version)."""


# -- what the caller asked for ----------------------------------------------------------------


def builtin_cache_dit_requested() -> bool:
    """True when the user keeps vLLM-Omni's own cache-dit for the ``cache_dit`` name.

    Read at every backend selection (not once at registration) so the switch also works in a
    process that registered the plugin before the variable was set.
    """
    value = os.environ.get(SWITCH_ENV, SWITCH_DEFAULT).strip().lower()
    if value in ("", SWITCH_DEFAULT):
        return False
    if value == SWITCH_BUILTIN:
        return True
    _warn_bad_switch(value)
    return False


@functools.lru_cache(maxsize=None)
def _warn_bad_switch(value: str) -> None:
    logger.warning(
        "%s=%r is not recognised (use %r or %r); running %r on dit_cache_backend",
        SWITCH_ENV, value, SWITCH_BUILTIN, SWITCH_DEFAULT, CACHE_DIT_NAME,
    )


def our_names() -> Tuple[str, ...]:
    """Backend names that resolve to this engine right now."""
    return (OUR_NAME,) if builtin_cache_dit_requested() else (OUR_NAME, CACHE_DIT_NAME)


# -- the backend ------------------------------------------------------------------------------


def _parse_json_config(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("cache_config", text, f"a JSON object ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(value, dict):
        raise ConfigError("cache_config", text, "a JSON object")
    return value


def _vllm_omni_cache_dit_module() -> ModuleType:
    for name in CACHE_DIT_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise RegistrationError(f"vLLM-Omni has no CacheDiTBackend in any of {', '.join(CACHE_DIT_MODULES)}")


@functools.lru_cache(maxsize=None)
def backend_class() -> type:
    """Our backend as a subclass of this vLLM-Omni's ``CacheDiTBackend`` (built once per process)."""
    from vllm_omni.diffusion.cache.base import CacheBackend
    from vllm_omni.diffusion.data import DiffusionCacheConfig

    base = _vllm_omni_cache_dit_module().CacheDiTBackend
    if not issubclass(base, CacheBackend):
        raise RegistrationError(f"{base.__module__}.CacheDiTBackend is not a vLLM-Omni CacheBackend")

    class DitCacheBackend(base):  # type: ignore[misc, valid-type]
        """vLLM-Omni's cache backend interface, served by dit_cache_backend's engine."""

        def __init__(self, cache_config: Any = None) -> None:
            if cache_config is None:
                cache_config = DiffusionCacheConfig()
            elif isinstance(cache_config, str):
                # Stage-config overrides can leave the raw --cache-config JSON unparsed.
                cache_config = DiffusionCacheConfig.from_dict(_parse_json_config(cache_config))
            elif isinstance(cache_config, dict):
                cache_config = DiffusionCacheConfig.from_dict(cache_config)
            # Skip vLLM-Omni's CacheDiTBackend.__init__: its state belongs to cache-dit.
            CacheBackend.__init__(self, cache_config)
            # Translates and validates; a bad cache_config fails here, at worker start-up.
            self.engine = CacheDiTBackend(cache_config)

        def enable(self, pipeline: Any) -> None:
            self.engine.enable(pipeline)
            setattr(pipeline, PIPELINE_ATTR, self)
            self.enabled = True
            logger.info(
                "dit_cache_backend enabled on %s (%d target(s)): %r",
                type(pipeline).__name__, len(self.engine.targets), self.engine,
            )

        def refresh(self, pipeline: Any, num_inference_steps: int, verbose: bool = True) -> None:
            self.engine.refresh(pipeline, num_inference_steps, verbose)

        def disable(self, pipeline: Any) -> None:
            self.engine.disable(pipeline)
            if getattr(pipeline, PIPELINE_ATTR, None) is self:
                delattr(pipeline, PIPELINE_ATTR)
            self.enabled = False

        def is_enabled(self) -> bool:
            return self.engine.is_enabled()

        def request_records(self) -> List[RequestRecord]:
            """Finished requests (oldest first), then the one running or last run."""
            return self.engine.request_records()

        def log_summary(self, details: bool = True) -> None:
            self.engine.log_summary(details)

        def __repr__(self) -> str:
            return f"DitCacheBackend({self.engine!r})"

    # Importable as dit_cache_backend.adapters.vllm_omni.DitCacheBackend (see __getattr__ below).
    DitCacheBackend.__qualname__ = "DitCacheBackend"
    DitCacheBackend.__module__ = __name__
    return DitCacheBackend


def __getattr__(name: str) -> Any:
    # The class needs vLLM-Omni's base class, so it is built on first use rather than at import.
    if name == "DitCacheBackend":
        return backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- hooks into vLLM-Omni ---------------------------------------------------------------------


def _wrap_selector(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_cache_backend(cache_backend: Optional[str], cache_config: Any) -> Any:
        if cache_backend in our_names():
            return backend_class()(cache_config)
        return original(cache_backend, cache_config)

    setattr(get_cache_backend, _WRAPPED_MARK, True)
    return get_cache_backend


def _wrap_cache_summary(original: Callable[..., Any]) -> Callable[..., Any]:
    """``--enable-cache-dit-summary`` logs our statistics when our engine serves the pipeline."""

    @functools.wraps(original)
    def cache_summary(pipeline: Any, details: bool = True) -> None:
        backend = getattr(pipeline, PIPELINE_ATTR, None)
        if backend is not None and backend.is_enabled():
            backend.log_summary(details)
            return
        original(pipeline, details=details)

    setattr(cache_summary, _WRAPPED_MARK, True)
    return cache_summary


Patch = Tuple[ModuleType, str, Any]


def _rebinds(modules: Tuple[str, ...], name: str, original: Any, replacement: Any) -> List[Patch]:
    """Modules already imported that bound ``original`` by name (later importers get the new one)."""
    patches = []
    for module_name in modules:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, name, None) is original:
            patches.append((module, name, replacement))
    return patches


def _install() -> None:
    try:
        selector = importlib.import_module(SELECTOR_MODULE)
    except ImportError as exc:
        raise RegistrationError(f"cannot import {SELECTOR_MODULE}: {exc}") from exc
    original = getattr(selector, "get_cache_backend", None)
    if original is None:
        raise RegistrationError(f"{SELECTOR_MODULE} has no get_cache_backend")
    if getattr(original, _WRAPPED_MARK, False):
        return  # already registered in this process
    # Plan every patch first and apply them together: a failure leaves vLLM-Omni untouched.
    cls = backend_class()
    wrapper = _wrap_selector(original)
    patches = [(selector, "get_cache_backend", wrapper)]
    patches += _rebinds(CALL_SITE_MODULES, "get_cache_backend", original, wrapper)
    patches += _cache_dit_name_patches(cls)
    for module, name, value in patches:
        setattr(module, name, value)
    _share_vllm_log_handlers()
    logger.info(
        "dit_cache_backend registered with vLLM-Omni %s for cache_backend=%s",
        _vllm_omni_version(), " / ".join(repr(n) for n in our_names()),
    )


def _cache_dit_name_patches(cls: type) -> List[Patch]:
    """What else ``cache_dit`` reaches: the request-scoped runtime (0.30) and the summary log.

    Both defer to vLLM-Omni's own code whenever ``cache_dit`` is not ours or the pipeline is not
    served by us, so they are safe to install unconditionally.
    """
    patches: List[Patch] = []
    try:
        runtime = importlib.import_module(RUNTIME_MODULE)
    except ImportError:
        runtime = None  # before 0.30: no request-scoped runtime to redirect
    original_cls = getattr(runtime, "CacheDiTBackend", None)
    if runtime is not None and original_cls is not None:
        patches.append((runtime, "CacheDiTBackend", _runtime_backend_factory(original_cls, cls)))
    cache_dit_module = _vllm_omni_cache_dit_module()
    original_summary = getattr(cache_dit_module, "cache_summary", None)
    if original_summary is not None:
        wrapper = _wrap_cache_summary(original_summary)
        # The runner imports cache_summary by name from the package.
        patches.append((cache_dit_module, "cache_summary", wrapper))
        patches += _rebinds((RUNNER_MODULE,), "cache_summary", original_summary, wrapper)
    return patches


def _runtime_backend_factory(original: type, ours: type) -> Callable[[Any], Any]:
    """Stands in for the class name the runtime calls (only ever called, never isinstance-checked)."""

    def CacheDiTBackend(cache_config: Any = None) -> Any:
        return (ours if CACHE_DIT_NAME in our_names() else original)(cache_config)

    return CacheDiTBackend


def _share_vllm_log_handlers() -> None:
    """Show our INFO lines (backend enabled, ``--enable-cache-dit-summary``) in vLLM's log stream.

    Only when nobody configured logging: vLLM sets up its own logger and leaves the root bare, so
    without this our records would be dropped below WARNING.
    """
    ours = logging.getLogger("dit_cache_backend")
    vllm_logger = logging.getLogger("vllm")
    if ours.handlers or logging.getLogger().handlers or not vllm_logger.handlers:
        return
    for handler in vllm_logger.handlers:
        ours.addHandler(handler)
    ours.setLevel(vllm_logger.level)
    ours.propagate = False


def _vllm_omni_version() -> str:
    module = sys.modules.get("vllm_omni")
    return str(getattr(module, "__version__", "?"))


def register() -> None:
    """``vllm_omni.general_plugins`` entry point: idempotent, and never raises into vLLM-Omni."""
    try:
        _install()
    except Exception as exc:
        logger.warning(
            "dit_cache_backend is NOT active in vLLM-Omni %s (%s: %s); cache_backend=%r keeps "
            "vLLM-Omni's built-in backend and %r is unavailable",
            _vllm_omni_version(), type(exc).__name__, exc, CACHE_DIT_NAME, OUR_NAME,
        )


class DitCacheWorkerExtension:
    """Optional worker mix-in: ``Omni(..., worker_extension_cls=<this class's path>)``.

    Then ``omni.engine.collective_rpc("dit_cache_requests")`` returns, per worker, the recent
    requests' cache statistics as plain dicts (oldest first).
    """

    model_runner: Any

    def dit_cache_backend_class(self) -> Optional[str]:
        """The qualified class name of the runner's cache backend (None: no backend)."""
        backend = getattr(self.model_runner, "cache_backend", None)
        return None if backend is None else f"{type(backend).__module__}.{type(backend).__qualname__}"

    def dit_cache_requests(self) -> List[Dict[str, Any]]:
        backend = getattr(self.model_runner, "cache_backend", None)
        if backend is None or not hasattr(backend, "request_records"):
            return []
        # JSON-shaped (lists, not tuples) so the result survives any RPC transport unchanged.
        return json.loads(json.dumps([dataclasses.asdict(record) for record in backend.request_records()]))
