"""The scale-out sections of one ``enable_cache`` call, checked together and applied in order.

cache-dit's order: the cache first, then parallelism, quantization, and the attention backend.
Every section is checked before the first step runs, against the world size, the device and the
models; parallelism and quantization cannot be undone, so their checks cover everything that
could make them fail. If a step still fails, the reversible steps already taken are undone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional, Sequence

import torch

from ..config import ParallelismConfig, QuantizeConfig
from ..errors import ConfigError
from . import attention, parallelism, quantization
from .device import module_device


def _check_type(key: str, value: Any, expected: type) -> None:
    if value is not None and not isinstance(value, expected):
        raise ConfigError(key, type(value).__name__, f"None or a {expected.__name__}")


@dataclasses.dataclass
class ScaleOutPlan:
    """Checked steps for some transformers; ``apply`` runs them, ``undo`` reverts what it can."""

    transformers: List[torch.nn.Module]
    context_parallel: Optional[parallelism.ContextParallelPlan] = None
    quantize: List[quantization.QuantizeTarget] = dataclasses.field(default_factory=list)
    attention_backend: Optional[Any] = None
    _undo: List[Callable[[], None]] = dataclasses.field(default_factory=list)

    @classmethod
    def check(
        cls,
        transformers: Sequence[torch.nn.Module],
        *,
        parallelism_config: Optional[ParallelismConfig] = None,
        quantize_config: Optional[QuantizeConfig] = None,
        attention_backend: Optional[str] = None,
        pipeline: Any = None,
    ) -> "ScaleOutPlan":
        """Validate every section; raise ConfigError before anything is changed."""
        _check_type("parallelism_config", parallelism_config, ParallelismConfig)
        _check_type("quantize_config", quantize_config, QuantizeConfig)
        transformers = list(transformers)
        device = module_device(transformers)
        result = cls(transformers)
        if parallelism_config is not None:
            # The backend is part of parallelism: set before it, as diffusers requires.
            result.context_parallel = parallelism.plan(
                parallelism_config, transformers, device, attention_backend
            )
        elif attention_backend is not None:
            result.attention_backend = attention.check_backend(attention_backend, device)
        if quantize_config is not None:
            result.quantize = quantization.plan(quantize_config, transformers, pipeline)
        return result

    @property
    def empty(self) -> bool:
        return self.context_parallel is None and not self.quantize and self.attention_backend is None

    def apply(self) -> None:
        if self.context_parallel is not None:
            parallelism.apply(self.context_parallel, self.transformers)
        quantization.apply(self.quantize)
        if self.attention_backend is not None:
            change = attention.set_backend(self.transformers, self.attention_backend)
            self._undo.append(change.restore)

    def undo(self) -> None:
        """Put back what can be put back (the attention backend); parallelism and quantization
        stay, as in cache-dit."""
        while self._undo:
            self._undo.pop()()

    def process_group(self) -> Optional[Any]:
        """The context-parallel group the cache's decisions must agree over, if any."""
        return parallelism.context_parallel_group(self.transformers)
