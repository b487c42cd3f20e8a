"""cache-dit's module paths (``cache_dit.platforms``, ``cache_dit.caching.cache_contexts``, ...)
as thin aliases onto this package, for code that imports cache-dit's submodules.

``import dit_cache_backend as cache_dit`` is enough for code that only uses top-level names. Code
that imports submodules (``from cache_dit.platforms import current_platform``) runs unchanged
after one call, made before its first ``import cache_dit``::

    import dit_cache_backend.cache_dit_paths
    dit_cache_backend.cache_dit_paths.install()   # ``import cache_dit`` now gives this package

Every module here only re-exports objects of ``dit_cache_backend`` (absolute imports, so loading
one under its ``cache_dit.*`` name creates no second copy of anything). A cache-dit path without
a counterpart here raises an ImportError that says what to use instead (:data:`NOT_PROVIDED_PATHS`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any, Optional, Sequence

import dit_cache_backend as _package

from . import summary  # noqa: F401  (the module first: the star import rebinds `summary`)
from dit_cache_backend import *  # noqa: F401,F403
from dit_cache_backend import __version__  # noqa: F401

ALIAS = "cache_dit"

# cache-dit path (and everything below it) -> what to use instead.
NOT_PROVIDED_PATHS = {
    "cache_dit._utils": "cache-dit's example CLI (get_args, example registers) has no counterpart; "
    "load the model with diffusers and call enable_cache, or use `dit-cache bench`",
    "cache_dit.generate": "cache-dit's example CLI has no counterpart; use `dit-cache demo` / `dit-cache bench`",
    "cache_dit.utils": "cache-dit's internal helpers; the public ones are top-level names here",
    "cache_dit.envs": "cache-dit's CACHE_DIT_* environment switches have no counterpart; pass arguments",
    "cache_dit.kernels": "cache-dit's CUDA/Triton kernels have no counterpart (the cache needs none)",
    "cache_dit.metrics": "use dit_cache_backend.metrics (psnr, ssim, max_abs_error on tensors)",
    "cache_dit.profiler": "use torch.profiler",
    "cache_dit.ray": "no counterpart; serve with vLLM-Omni or SGLang (docs/serving.md)",
    "cache_dit.attention.": "cache-dit's own attention kernels and registry have no counterpart; "
    "choose a backend through diffusers (transformer.set_attention_backend(name)) or set_attn_backend",
    "cache_dit.distributed.": "cache-dit's parallel planners have no counterpart; parallelism goes "
    "to diffusers' ContextParallelConfig / enable_parallelism through parallelism_config",
    "cache_dit.quantization.": "cache-dit's quantizers have no counterpart; use torchao's quantize_ "
    "through quantize_config",
    "cache_dit.offload.": "cache_dit.offload and cache_dit.offload.layerwise are provided, nothing below",
    "cache_dit.caching.cache_contexts.calibrators": "cache-dit's stand-alone calibrator classes "
    "have no counterpart; ours is dit_cache_backend.calibrators.TaylorSeerCalibrator "
    "(update(name, value, step) / approximate(name, step)), driven by the cache",
    "cache_dit.caching.cache_contexts.": "cache-dit's context internals; the configs are in "
    "cache_dit.caching.cache_contexts",
    "cache_dit.caching.patch_functors": "cache-dit's patch functors; ours are in dit_cache_backend.functors",
    "cache_dit.caching.cache_blocks": "cache-dit internals; ours are dit_cache_backend.blocks / prune",
    "cache_dit.caching.cache_adapters": "cache-dit internals; ours are dit_cache_backend.session / api",
}


def __getattr__(name: str) -> Any:
    # Everything else the package has (Pattern_0, NotProvidedError advice, ...).
    return getattr(_package, name)


class _NotProvidedFinder(importlib.abc.MetaPathFinder):
    """Refuses cache-dit paths that have no counterpart, saying what to use instead."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> None:
        if not fullname.startswith(ALIAS + ".") or (
            path is not None and importlib.machinery.PathFinder.find_spec(fullname, path) is not None
        ):
            return None  # not cache-dit's, or one of the alias modules here
        for prefix, advice in NOT_PROVIDED_PATHS.items():
            # "a.b" refuses a.b and everything below it; "a.b." only what is below a.b.
            below = prefix if prefix.endswith(".") else prefix + "."
            if fullname == prefix or fullname.startswith(below):
                raise ImportError(
                    f"{fullname} is not provided by dit_cache_backend: {advice}", name=fullname
                )
        return None


_FINDER = _NotProvidedFinder()


def install() -> None:
    """Make ``import cache_dit`` (and its submodule paths) give this package.

    Refuses when the real cache-dit is already imported in this process: both cannot be
    ``cache_dit`` at once.
    """
    current = sys.modules.get(ALIAS)
    if current is not None and current is not sys.modules[__name__]:
        raise RuntimeError(
            "the real cache-dit is already imported as `cache_dit`; call "
            "dit_cache_backend.cache_dit_paths.install() before the first `import cache_dit`"
        )
    sys.modules[ALIAS] = sys.modules[__name__]
    # Alias modules already loaded under their own name keep serving (``cache_dit.summary`` must
    # not be loaded again: binding the module would hide the ``summary`` function).
    for name, module in list(sys.modules.items()):
        if name.startswith(__name__ + "."):
            sys.modules.setdefault(ALIAS + name[len(__name__):], module)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Undo :func:`install`: ``cache_dit`` and its loaded submodule paths are forgotten."""
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        if sys.modules[name].__name__.startswith(__name__) or name.startswith(ALIAS + "."):
            del sys.modules[name]
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
