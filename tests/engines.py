"""Drive either caching engine from one test body.

``Engine("ours", dit_cache_backend)`` or ``Engine("cache_dit", cache_dit)`` (the reference, 1.5.3).
The public API is the same by design, so a test writes ``engine.module.DBCacheConfig(...)`` etc.;
the helpers here cover the few places where reading the engine's state differs.

:func:`load_engine` skips the calling test when its engine is not available: cache-dit not
installed (or not 1.5.3, the version the golden traces were recorded with), or our engine not yet
importable as ``dit_cache_backend`` with a top-level ``enable_cache``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn

ENGINE_NAMES = ("ours", "cache_dit")
REFERENCE_VERSION = "1.5.3"


@dataclasses.dataclass(frozen=True)
class Engine:
    name: str
    module: ModuleType

    def __repr__(self) -> str:
        return self.name

    @property
    def is_reference(self) -> bool:
        return self.name == "cache_dit"

    def adapter(
        self,
        transformer: nn.Module,
        *,
        pipe: Any = None,
        pattern: int = 3,
        separate_cfg: bool = False,
    ) -> Any:
        """A BlockAdapter caching ``transformer.transformer_blocks``; pattern checks off (toys)."""
        return self.module.BlockAdapter(
            pipe=pipe,
            transformer=transformer,
            blocks=transformer.transformer_blocks,
            forward_pattern=self.module.ForwardPattern[f"Pattern_{pattern}"],
            check_forward_pattern=False,
            has_separate_cfg=separate_cfg,
        )

    def enable(
        self,
        adapter: Any,
        *,
        taylorseer_order: Optional[int] = None,
        calibrator: Optional[Tuple[str, Dict[str, Any]]] = None,
        **cache_kwargs: Any,
    ) -> Any:
        """``enable_cache(adapter, DBCacheConfig(**cache_kwargs), calibrator config or None)``.

        ``calibrator`` names a config class of the engine and its fields, e.g.
        ``("DMDCalibratorConfig", {"dmd_history": 5})``; ``taylorseer_order=k`` is short for
        ``("TaylorSeerCalibratorConfig", {"taylorseer_order": k})``.
        """
        if taylorseer_order is not None:
            calibrator = ("TaylorSeerCalibratorConfig", {"taylorseer_order": taylorseer_order})
        calibrator_config = (
            None if calibrator is None else getattr(self.module, calibrator[0])(**calibrator[1])
        )
        return self.module.enable_cache(
            adapter,
            cache_config=self.module.DBCacheConfig(**cache_kwargs),
            calibrator_config=calibrator_config,
        )

    def enable_prune(self, adapter: Any, **prune_kwargs: Any) -> Any:
        return self.module.enable_cache(
            adapter, cache_config=self.module.DBPruneConfig(**prune_kwargs)
        )

    def stats(self, obj: Any) -> Any:
        """The CacheStats of the first (here: only) cached block list."""
        return self.module.summary(obj, logging=False)[0]

    def current_step(self, transformer: nn.Module) -> int:
        """The diffusion-step index of the latest transformer call."""
        if self.is_reference:
            return transformer._context_manager.current_context.get_current_step()
        return self.stats(transformer).decisions[-1].step

    def record_steps(self, transformer: nn.Module) -> List[int]:
        """A list that receives :meth:`current_step` after every later transformer call."""
        steps: List[int] = []
        transformer.register_forward_hook(
            lambda module, args, output: steps.append(self.current_step(module))
        )
        return steps


def _quiet_cache_dit() -> None:
    # cache-dit logs every enable/context at INFO on stdout; its loggers do not propagate.
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "WARNING")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("cache_dit") or name == "CACHE_DIT":
            logging.getLogger(name).setLevel(logging.WARNING)


def load_engine(name: str) -> Engine:
    """The named engine, or skip the calling test with the reason it is unavailable."""
    if name == "cache_dit":
        _quiet_cache_dit()
        module = pytest.importorskip(
            "cache_dit",
            reason="the reference cache-dit is not installed (pip install cache-dit==1.5.3)",
        )
        _quiet_cache_dit()
        if module.__version__ != REFERENCE_VERSION:
            pytest.skip(
                f"cache-dit {module.__version__} installed; the reference traces are for "
                f"{REFERENCE_VERSION}"
            )
        return Engine(name, module)
    try:
        module = importlib.import_module("dit_cache_backend")
        module.enable_cache  # noqa: B018  (feature probe)
    except Exception as error:  # noqa: BLE001  (any failure means: not ready yet)
        pytest.skip(f"our engine is not importable as dit_cache_backend yet: {error!r}")
    return Engine(name, module)


def outputs_close(a: Any, b: Any, atol: float, rtol: float = 0.0) -> bool:
    """Whether two transformer outputs (tensors or tuples of tensors) agree within the tolerances."""
    a_items = (a,) if isinstance(a, torch.Tensor) else tuple(a)
    b_items = (b,) if isinstance(b, torch.Tensor) else tuple(b)
    return len(a_items) == len(b_items) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=rtol, atol=atol)
        for x, y in zip(a_items, b_items)
    )
