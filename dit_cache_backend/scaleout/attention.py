"""``attention_backend`` -> diffusers' ``set_attention_backend``, checked first and undoable.

diffusers' ``ModelMixin.set_attention_backend`` sets every attention processor's backend and then
also makes the name the *process-wide* default, which changes every other model in the process.
We put the process default back right away, and record each processor's previous backend so that
``disable_cache`` can restore it exactly (``reset_attention_backend`` would wipe values the user
had set).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, List, Sequence, Tuple

import torch

from ..errors import ConfigError, NotSupportedYetError
from .device import describe

logger = logging.getLogger(__name__)

# cache-dit's own kernels, which diffusers does not have.
CACHE_DIT_ONLY = frozenset(
    {
        "sage3",
        "_sdpa_cudnn",
        "ffpa",
        "ffpa_fp8",
        "ffpa_fp4",
        "ffpa_fp8_per_block",
        "_npu_fia",
        "_mindiesd_laser",
    }
)
# Accepted by diffusers on CPU at set time, but torch has no CPU kernel for them: the first forward
# would fail with "No viable backend for scaled_dot_product_attention".
ACCELERATOR_ONLY = frozenset({"_native_cudnn", "_native_efficient"})
CPU_BACKENDS = "native, _native_math, _native_flash, flex"


def _registry() -> Any:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry


def _processors(model: torch.nn.Module) -> Iterator[Any]:
    """The processors diffusers' set_attention_backend changes (same selection as diffusers)."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention, MochiAttention

    for module in model.modules():
        if not isinstance(module, (Attention, MochiAttention, AttentionModuleMixin)):
            continue
        processor = module.processor
        if processor is not None and hasattr(processor, "_attention_backend"):
            yield processor


def check_backend(name: Any, device: torch.device, *, key: str = "attention_backend") -> Any:
    """The ``AttentionBackendName`` for ``name`` if it can run on ``device``; else ConfigError.

    Runs diffusers' own requirement checks (packages, kernels) now rather than at the first
    forward.
    """
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
        _maybe_download_kernel_for_backend,
    )

    if not isinstance(name, str):
        raise ConfigError(key, name, "an attention backend name (str)")
    lowered = name.lower()
    known = sorted(member.value for member in AttentionBackendName)
    if lowered in CACHE_DIT_ONLY:
        raise NotSupportedYetError(
            key, name, what_works="a diffusers attention backend: " + ", ".join(known)
        )
    if lowered not in known:
        raise ConfigError(key, name, "a diffusers attention backend: " + ", ".join(known))
    if device.type == "cpu" and lowered in ACCELERATOR_ONLY:
        raise ConfigError(
            key, name, f"on {describe(device)}: {CPU_BACKENDS}", hint=f"{name} needs a GPU"
        )
    backend = AttentionBackendName(lowered)
    try:
        _check_attention_backend_requirements(backend)
        _maybe_download_kernel_for_backend(backend)
    except (RuntimeError, ImportError, OSError) as error:
        raise ConfigError(
            key,
            name,
            f"a backend this machine can run (on {describe(device)}: {CPU_BACKENDS} and, on "
            "GPUs, the ones whose packages are installed)",
            hint=str(error),
        ) from error
    return backend


def supports_context_parallel(backend: Any) -> bool:
    return _registry()._is_context_parallel_available(backend)


def context_parallel_backends() -> List[str]:
    return sorted(_registry()._supports_context_parallel)


@dataclasses.dataclass
class AttentionBackendChange:
    """The processors whose backend we set, each with its previous value."""

    previous: List[Tuple[Any, Any]]

    def restore(self) -> None:
        for processor, backend in self.previous:
            processor._attention_backend = backend


def set_backend(models: Sequence[torch.nn.Module], backend: Any) -> AttentionBackendChange:
    """Set ``backend`` on every processor of ``models``; the process default stays as it was."""
    registry = _registry()
    change = AttentionBackendChange(
        [(p, p._attention_backend) for model in models for p in _processors(model)]
    )
    default = registry._active_backend
    try:
        for model in models:
            model.set_attention_backend(backend.value)
    except BaseException:
        change.restore()
        raise
    finally:
        registry._active_backend = default
    logger.info("attention backend %s set on %d model(s)", backend.value, len(models))
    return change

