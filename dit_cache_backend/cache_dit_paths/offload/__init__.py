"""``cache_dit.offload``: layer-wise offload, delegated to diffusers' group offloading."""

from dit_cache_backend.offload import (  # noqa: F401
    LayerwiseOffloadHandle,
    LayerwiseOffloadHandleGroup,
    get_layerwise_offload_handles,
    layerwise_cpu_offload,
    layerwise_offload,
    remove_layerwise_offload,
)
