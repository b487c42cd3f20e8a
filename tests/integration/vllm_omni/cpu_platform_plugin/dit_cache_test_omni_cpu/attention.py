"""SDPA attention for the test-only CPU platform.

vLLM-Omni's ``AttentionImpl.forward`` dispatches only to cuda/hip/npu/xpu/musa and raises for
out-of-tree platforms, so this calls the SDPA implementation directly.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm_omni.diffusion.attention.backends.sdpa import SDPABackend, SDPAImpl


class CpuSDPAImpl(SDPAImpl):
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_metadata: Any = None):
        return self._forward_impl(query, key, value, attn_metadata, mask_mode="broadcast_k")


class CpuSDPABackend(SDPABackend):
    @staticmethod
    def get_impl_cls() -> type:
        return CpuSDPAImpl
