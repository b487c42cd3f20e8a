"""``parallelism_config`` -> diffusers' native context parallelism (``enable_parallelism``).

Ulysses and Ring degrees (ints or ``"auto"``, resolved from the world size) become a
``ContextParallelConfig``; the attention backend is set first (diffusers requires a CP-capable
one when parallelism is enabled). Everything is checked before any model changes, because
diffusers cannot undo ``enable_parallelism``: ``disable_cache`` leaves parallelism on, and a later
``enable_cache`` with the same sizes finds it already applied and keeps it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.distributed as dist

from ..config import ParallelismBackend, ParallelismConfig
from ..errors import ConfigError, NotSupportedYetError
from . import attention

logger = logging.getLogger(__name__)

_CP_WORKS = (
    "context parallelism: ulysses_size and/or ring_size (diffusers' ContextParallelConfig), "
    "ulysses_anything, cp_plan, attention_backend"
)

# What diffusers' native context parallelism has no counterpart for: (field, is it set?, what works).
_REFUSED: Tuple[Tuple[str, Callable[[ParallelismConfig], bool], str], ...] = (
    (
        "tp_size",
        lambda c: c.tp_size == "auto" or (isinstance(c.tp_size, int) and c.tp_size > 1),
        _CP_WORKS + "; tensor parallelism is not supported yet (diffusers' TP runs only on GPUs "
        "and not together with CP)",
    ),
    ("backend", lambda c: c.backend == ParallelismBackend.NATIVE_HYBRID, _CP_WORKS),
    ("ulysses_float8", lambda c: bool(c.ulysses_float8), _CP_WORKS + " (full-precision all-to-all)"),
    ("ulysses_async", lambda c: bool(c.ulysses_async), _CP_WORKS + " (synchronous Ulysses)"),
    ("extra_parallel_kwargs", lambda c: bool(c.extra_parallel_kwargs), _CP_WORKS),
    ("use_ray", lambda c: bool(c.use_ray), _CP_WORKS + ", launched with torchrun"),
)
# Ring attention merges partial results with the log-sum-exp, which `native` SDPA does not return.
_RING_WORKS = "_native_flash, _native_cudnn, flash, sage and their hub variants"
_warned_extra_modules: Set[str] = set()


@dataclasses.dataclass
class ContextParallelPlan:
    """The resolved, checked sizes and options for ``enable_parallelism``."""

    ulysses: int
    ring: int
    ulysses_anything: bool
    convert_to_fp32: bool
    cp_plan: Optional[Any]
    backend: Any  # diffusers AttentionBackendName

    def context_parallel_config(self) -> Any:
        from diffusers import ContextParallelConfig

        return ContextParallelConfig(
            ring_degree=self.ring,
            ulysses_degree=self.ulysses,
            convert_to_fp32=self.convert_to_fp32,
            ulysses_anything=self.ulysses_anything,
        )


def _world_size() -> int:
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(
            "parallelism_config",
            "torch.distributed is not initialized",
            "a run launched with torchrun (e.g. torchrun --nproc_per_node=2 ...) that has called "
            "torch.distributed.init_process_group before enable_cache",
        )
    return dist.get_world_size()


def _resolve_sizes(config: ParallelismConfig, world: int) -> Tuple[int, int]:
    """(ulysses, ring) with ``"auto"`` = the world size divided by the other size."""
    ulysses, ring = config.ulysses_size or 1, config.ring_size or 1
    if ulysses == "auto":
        ulysses = world // ring
    if ring == "auto":
        ring = world // ulysses
    if ulysses < 1 or ring < 1 or ulysses * ring != world or world == 1:
        raise ConfigError(
            "parallelism_config",
            {"ulysses_size": config.ulysses_size, "ring_size": config.ring_size},
            f"ulysses_size * ring_size equal to the world size ({world}), at least 2 ranks "
            "(torchrun --nproc_per_node=N); 'auto' fills in one of them",
        )
    return ulysses, ring


def _check_heads(transformers: Sequence[torch.nn.Module], ulysses: int, anything: bool) -> None:
    for transformer in transformers:
        heads = getattr(getattr(transformer, "config", None), "num_attention_heads", None)
        if ulysses > 1 and not anything and isinstance(heads, int) and heads % ulysses:
            raise ConfigError(
                "ulysses_size",
                ulysses,
                f"a divisor of {type(transformer).__name__}'s {heads} attention heads",
                hint="or set ulysses_anything: true",
            )


def _applied_degrees(transformer: torch.nn.Module) -> Optional[Tuple[int, int]]:
    config = getattr(transformer, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None:
        return None
    return cp.ring_degree, cp.ulysses_degree


def _warn_skipped_modules(modules: Optional[List[Any]]) -> None:
    names = [m if isinstance(m, str) else type(m).__name__ for m in modules or []]
    new = [name for name in names if name not in _warned_extra_modules]
    if new:
        _warned_extra_modules.update(new)
        logger.warning(
            "parallelism_config.extra_parallel_modules %s: skipped, they run unparallelized on "
            "every rank (same outputs, less memory saved); only the transformer is context-"
            "parallel",
            new,
        )


def plan(
    config: ParallelismConfig,
    transformers: Sequence[torch.nn.Module],
    device: torch.device,
    attention_backend: Optional[str],
) -> ContextParallelPlan:
    """Check ``config`` against the world, the models and the device; nothing is changed."""
    for key, is_set, works in _REFUSED:
        if is_set(config):
            raise NotSupportedYetError(key, getattr(config, key), what_works=works)
    _warn_skipped_modules(config.extra_parallel_modules)
    world = _world_size()
    if config.attention_backend is not None and attention_backend not in (
        None,
        config.attention_backend,
    ):
        logger.warning(
            "attention_backend %r is overridden by parallelism_config.attention_backend %r",
            attention_backend,
            config.attention_backend,
        )
    name = config.attention_backend or attention_backend or "native"
    key = "parallelism_config.attention_backend" if config.attention_backend else "attention_backend"
    backend = attention.check_backend(name, device, key=key)
    if not attention.supports_context_parallel(backend):
        raise ConfigError(
            key,
            name,
            "an attention backend with context parallelism: "
            + ", ".join(attention.context_parallel_backends()),
        )
    ulysses, ring = _resolve_sizes(config, world)
    if ring > 1 and backend.value == "native":
        raise ConfigError(
            key,
            name,
            f"with ring_size > 1, a backend that returns the log-sum-exp: {_RING_WORKS}",
            hint="native SDPA cannot merge ring partial results",
        )
    anything = bool(config.ulysses_anything)
    _check_heads(transformers, ulysses, anything)
    for transformer in transformers:
        applied = _applied_degrees(transformer)
        if applied is not None and applied != (ring, ulysses):
            raise ConfigError(
                "parallelism_config",
                {"ring_size": ring, "ulysses_size": ulysses},
                f"the sizes already applied to {type(transformer).__name__} "
                f"(ring {applied[0]}, ulysses {applied[1]}): diffusers cannot change parallelism",
            )
    return ContextParallelPlan(
        ulysses=ulysses,
        ring=ring,
        ulysses_anything=anything,
        convert_to_fp32=config.ring_convert_to_fp32 is not False,
        cp_plan=config.cp_plan,
        backend=backend,
    )


@contextlib.contextmanager
def _one_device_without_accelerator() -> Iterator[None]:
    """diffusers 0.42.1 computes ``rank % torch.accelerator.device_count()``, which divides by zero
    on a CPU-only torch; for the duration of the call a CPU host counts as one device."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = original  # type: ignore[assignment]


def apply(cp: ContextParallelPlan, transformers: Sequence[torch.nn.Module]) -> None:
    """Set the attention backend, then enable context parallelism on each transformer that is not
    parallel yet. Both stay after ``disable_cache``: parallelism needs its backend."""
    todo = [t for t in transformers if _applied_degrees(t) is None]
    if not todo:
        return
    change = attention.set_backend(todo, cp.backend)
    try:
        with _one_device_without_accelerator():
            for transformer in todo:
                transformer.enable_parallelism(
                    config=cp.context_parallel_config(), cp_plan=cp.cp_plan
                )
    except BaseException:
        change.restore()
        raise
    logger.info(
        "context parallelism on %d transformer(s): ulysses %d, ring %d, attention %s",
        len(todo),
        cp.ulysses,
        cp.ring,
        cp.backend.value,
    )


def context_parallel_group(transformers: Sequence[torch.nn.Module]) -> Optional[Any]:
    """The process group of the first context-parallel transformer (its ring x ulysses mesh)."""
    for transformer in transformers:
        config = getattr(transformer, "_parallel_config", None)
        cp = getattr(config, "context_parallel_config", None)
        if cp is not None and cp._flattened_mesh is not None:
            return cp._flattened_mesh.get_group()
    return None
