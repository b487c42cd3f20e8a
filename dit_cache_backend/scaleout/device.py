"""Which device a model runs on, in the terms the engines' requirements are stated in."""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch


def module_device(modules: Iterable[torch.nn.Module]) -> torch.device:
    """The device of the first parameter of the first module that has one (CPU if none)."""
    for module in modules:
        for parameter in module.parameters():
            return parameter.device
    return torch.device("cpu")


def cuda_capability(device: torch.device) -> Optional[Tuple[int, int]]:
    """The compute capability of a CUDA device, ``None`` for any other device."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def describe(device: torch.device) -> str:
    """``cpu``, ``cuda sm90`` …: how error messages name a device."""
    capability = cuda_capability(device)
    if capability is None:
        return device.type
    return f"cuda sm{capability[0]}{capability[1]}"
