"""cache-dit 1.5.3's small public helpers, and the names that have no meaning here.

The helpers keep cache-dit's names and parameters (``init_logger``, ``load_options``,
``cache_type``, ``block_range``, ``supported_matrix``, ...). A cache-dit name that this package
does not implement is listed in :data:`NOT_PROVIDED` with what to use instead; the package's
``__getattr__`` raises :class:`NotProvidedError` (a ``NotImplementedError``) with that advice when
code touches the name, so nothing silently does nothing.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import logging
from typing import Any, Dict, Iterator, List, Optional, Union

from .registry import supported_pipelines
from .config import CacheType, load_cache_config
from .platforms import current_platform

PathOrDict = Union[str, Dict[str, Any]]

# cache-dit name -> what to use instead (one sentence, shown in the error).
NOT_PROVIDED: Dict[str, str] = {
    "ENV": "cache-dit's CACHE_DIT_* environment switches have no counterpart; configure "
    "dit_cache_backend through enable_cache()/load_configs() arguments",
    "ProfilerContext": "use torch.profiler.profile",
    "profile_function": "use torch.profiler.profile / torch.profiler.record_function",
    "create_profiler_context": "use torch.profiler.profile",
    "get_profiler_output_dir": "use torch.profiler.profile(on_trace_ready=tensorboard_trace_handler(dir))",
    "set_profiler_output_dir": "use torch.profiler.profile(on_trace_ready=tensorboard_trace_handler(dir))",
    "parse_extra_modules": "pass the modules themselves (pipe.text_encoder, pipe.vae, ...)",
    "quantize": "use torchao.quantization.quantize_(module, config) directly",
    "load": "load quantized weights with torchao / diffusers' from_pretrained(quantization_config=...)",
    "PatchFunctor": "dit_cache_backend's patch functors are objects with install(transformer) and "
    "block_kwargs(attr, index, kwargs) (see dit_cache_backend.block_adapter.PatchFunctor); "
    "cache-dit's _apply-style subclasses are not accepted",
}


class NotProvidedError(NotImplementedError):
    """A cache-dit name that dit_cache_backend does not implement; the message says what to use."""


def not_provided(name: str) -> NotProvidedError:
    return NotProvidedError(
        f"cache_dit.{name} is not provided by dit_cache_backend: {NOT_PROVIDED[name]} "
        "(see docs/compatibility.md)"
    )


def init_logger(name: str) -> logging.Logger:
    """A logger for ``name`` (cache-dit's helper). Quiet by default: configure it with logging."""
    return logging.getLogger(name)


def load_options(path_or_dict: PathOrDict, reset: bool = False) -> dict:
    """Deprecated in cache-dit in favour of ``load_configs``: ``{"cache_config", "calibrator_config"}``.

    Reads both the flat (legacy) and the nested ``cache_config:`` form.
    """
    logging.getLogger(__name__).warning(
        "load_options is deprecated (as in cache-dit); use load_configs instead"
    )
    cache_config, calibrator_config = load_cache_config(path_or_dict, reset=reset)
    options: Dict[str, Any] = {"cache_config": cache_config}
    if calibrator_config is not None:
        options["calibrator_config"] = calibrator_config
    return options


def cache_type(type_hint: Union[CacheType, str, None]) -> CacheType:
    """``CacheType`` from a name or alias (``"DBCache"``, ``"db"``, ``"DBPrune"``, ``None``, ...).

    An unknown name raises ConfigError (cache-dit returns ``CacheType.NONE``, silently disabling
    the cache).
    """
    return CacheType.parse(type_hint)


def block_range(start: int, end: int, step: int = 1) -> List[int]:
    """cache-dit's block-id helper: ``range(start, end, step)`` plus blocks 0 and ``end - 1``."""
    if start > end or end <= 0 or step <= 1:
        return []
    return sorted({0, *range(start, end, step), end - 1})


def supported_matrix() -> Optional[str]:
    """A markdown table of the supported model families (cache-dit's layout, cache column only)."""
    _, names = supported_pipelines()
    half = (len(names) + 1) // 2
    lines = ["| Model | Cache | Model | Cache |", "|:---|:---|:---|:---|"]
    for left, right in zip(names[:half], names[half:] + [""]):
        lines.append(f"| {left} | ✅ | {right} | {'✅' if right else ''} |")
    return "\n".join(lines)


def maybe_empty_cache() -> None:
    """Collect garbage and release the accelerator's cached memory (cache-dit's helper)."""
    gc.collect()
    current_platform.empty_cache()
    current_platform.ipc_collect()


@contextlib.contextmanager
def disable_print() -> Iterator[None]:
    """Silence ``print`` inside the block (cache-dit's helper)."""
    original = builtins.print
    builtins.print = lambda *args, **kwargs: None
    try:
        yield
    finally:
        builtins.print = original
