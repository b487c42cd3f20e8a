"""The accelerator this process runs on, as cache-dit's ``current_platform`` describes it.

cache-dit users write ``current_platform.device_type`` / ``.device_count()`` /
``.is_accelerator_available()`` to pick a device; here one class answers from torch's own
accelerator API (``torch.accelerator``), so CUDA, ROCm, XPU, NPU and plain CPU all work.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


class Platform:
    """The current accelerator (or the CPU when there is none)."""

    def __init__(self) -> None:
        available = torch.accelerator.is_available()
        accelerator = torch.accelerator.current_accelerator() if available else None
        self.device_type: str = accelerator.type if accelerator is not None else "cpu"
        self.dispatch_key: str = self.device_type.upper()
        self.dist_backend: str = (
            torch.distributed.get_default_backend_for_device(self.device_type)
            if torch.distributed.is_available()
            else "gloo"
        )
        self.full_dist_backend: str = f"{self.device_type}:{self.dist_backend}"

    def _module(self) -> Optional[Any]:
        return None if self.device_type == "cpu" else torch.get_device_module(self.device_type)

    def is_accelerator_available(self) -> bool:
        return self.device_type != "cpu"

    def device_count(self) -> int:
        return torch.accelerator.device_count() if self.is_accelerator_available() else 1

    def default_device(self) -> torch.device:
        return torch.device(self.device_type)

    def current_device(self) -> int:
        return torch.accelerator.current_device_index() if self.is_accelerator_available() else 0

    def set_device(self, device: Any) -> None:
        if self.is_accelerator_available():
            torch.accelerator.set_device_index(device)

    def synchronize(self, device: Any = None) -> None:
        if self.is_accelerator_available():
            torch.accelerator.synchronize(device)

    def empty_cache(self) -> None:
        if self.is_accelerator_available():
            torch.accelerator.empty_cache()

    def ipc_collect(self) -> None:
        module = self._module()
        if module is not None and hasattr(module, "ipc_collect"):
            module.ipc_collect()

    def get_device_name(self, device: Any = None) -> str:
        module = self._module()
        return "cpu" if module is None else module.get_device_name(device)

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        if self.is_accelerator_available():
            torch.accelerator.reset_peak_memory_stats(device)

    def max_memory_allocated(self, device: Any = None) -> int:
        return torch.accelerator.max_memory_allocated(device) if self.is_accelerator_available() else 0

    def get_device_properties(self, device: Any = None) -> Any:
        module = self._module()
        return None if module is None else module.get_device_properties(device)

    def get_device_capability(self, device: Any = None) -> Optional[tuple]:
        module = self._module()
        return None if module is None else module.get_device_capability(device)


current_platform = Platform()
