"""A CPU ``OmniPlatform`` for vLLM-Omni 0.30 (test-only).

It combines vLLM-Omni's ``OmniPlatform`` with vLLM's own ``CpuPlatform`` (gloo, device "cpu") and
names its own attention backend (``attention.py``; imported by vLLM-Omni later, by name, because
the attention modules import the platform being resolved here).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import psutil
import torch
from vllm.platforms.cpu import CpuPlatform
from vllm_omni.platforms.interface import OmniPlatform, OmniPlatformEnum


class CpuOmniPlatform(OmniPlatform, CpuPlatform):
    _omni_enum = OmniPlatformEnum.OOT

    @classmethod
    def get_diffusion_attn_backend_cls(cls, selected_backend: Any, head_size: int, allow_trtllm_default: bool = False) -> str:
        return "dit_cache_test_omni_cpu.attention.CpuSDPABackend"

    @classmethod
    def supports_diffusion_dense_flash_attention(cls) -> bool:
        return False

    @classmethod
    def supports_torch_inductor(cls) -> bool:
        return False

    @classmethod
    def get_default_stage_config_path(cls) -> str:
        return "vllm_omni/model_executor/stage_configs"

    @classmethod
    def get_torch_device(cls, local_rank: Optional[int] = None) -> torch.device:
        return torch.device("cpu")

    @classmethod
    def set_device(cls, device: Any) -> None:
        return None

    @classmethod
    def get_device_count(cls) -> int:
        return 1

    @classmethod
    def get_device_version(cls) -> None:
        return None

    @classmethod
    def synchronize(cls) -> None:
        return None

    @classmethod
    def empty_cache(cls) -> None:
        return None

    @classmethod
    def get_free_memory(cls, device: Any = None) -> int:
        return psutil.virtual_memory().available

    @classmethod
    def get_device_memory(cls, device: Any = None) -> Tuple[int, int]:
        memory = psutil.virtual_memory()
        return memory.available, memory.total

    @classmethod
    def max_memory_reserved(cls, device: Any = None) -> int:
        return 0

    @classmethod
    def max_memory_allocated(cls, device: Any = None) -> int:
        return 0

    @classmethod
    def reset_peak_memory_stats(cls, device: Any = None) -> None:
        return None
