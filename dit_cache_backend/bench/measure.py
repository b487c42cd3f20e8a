"""How a run is measured: computed transformer steps, the memory a cache holds, PSNR / SSIM.

Computed steps are counted the same way for every engine: forward calls of a layer inside the
model's last block (a cached step skips it whatever the engine), divided by the transformer calls
of one uncached step (2 when a pipeline runs CFG as a second call).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch

from ..errors import DitCacheError
from .workloads import Workload


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def storages_bytes(tensors: List[torch.Tensor]) -> int:
    seen: Dict[Tuple[str, int], int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def context_tensors(obj: Any) -> List[torch.Tensor]:
    """Every tensor the cache contexts of ``obj`` (pipeline or transformer) hold right now."""
    from ..session import session_of

    session = session_of(obj)
    if session is None:
        return []
    found = [t for context in session.contexts.values() for t in context.tensors()]
    return [t for t in found if isinstance(t, torch.Tensor)]


class CallCounter:
    """Counts forward calls of a leaf module inside the last cached block (i.e. computed steps)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        lists = [m for n, m in transformer.named_children() if isinstance(m, torch.nn.ModuleList)]
        if not lists or len(lists[-1]) == 0:
            raise DitCacheError("cannot find the transformer's block lists to count computed steps")
        last_block = lists[-1][len(lists[-1]) - 1]
        leaves = [
            m
            for m in last_block.modules()
            if not list(m.children()) and list(m.parameters(recurse=False))
        ]
        self.count = 0
        self._handle = leaves[0].register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def remove(self) -> None:
        self._handle.remove()


def metrics(workload: Workload, reference: torch.Tensor, output: torch.Tensor) -> Dict[str, Any]:
    from ..metrics import max_abs_error, psnr, ssim

    ref, out = reference.float().cpu(), output.float().cpu()
    data_range = (ref.max() - ref.min()).item() or 1.0
    if workload.info.get("output", "").startswith("decoded images"):
        data_range = 1.0
    finite = bool(torch.isfinite(out).all())
    value = psnr(ref, out, data_range) if finite else float("nan")
    return {
        "psnr_db": value,
        "ssim": ssim(workload.to_images(ref), workload.to_images(out), data_range)
        if finite
        else None,
        "max_abs_error": max_abs_error(ref, out) if finite else None,
        "data_range": data_range,
        "finite_output": finite,
    }


def calls_per_step(workload: Workload) -> int:
    """Transformer calls of one uncached step (counted on a one-step run)."""
    counter = CallCounter(workload.transformer)
    try:
        workload.generate(1)
    finally:
        counter.remove()
    return max(1, counter.count)


def measure(
    workload: Workload,
    install: Callable[[], None],
    uninstall: Callable[[], Any],
    steps: int,
    per_step: int = 1,
) -> Tuple[torch.Tensor, float]:
    """Output and computed steps of one run of ``steps`` steps with a cache installed."""
    counter = CallCounter(workload.transformer)
    install()
    try:
        output = workload.generate(steps)
    finally:
        uninstall()
        counter.remove()
    return output, counter.count / per_step
