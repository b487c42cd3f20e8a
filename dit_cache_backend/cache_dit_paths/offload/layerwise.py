"""``cache_dit.offload.layerwise``: the same names as ``cache_dit.offload``."""

from dit_cache_backend.offload import (  # noqa: F401
    LayerwiseOffloadHandle,
    LayerwiseOffloadHandleGroup,
    get_layerwise_offload_handles,
    layerwise_cpu_offload,
    layerwise_offload,
    remove_layerwise_offload,
)
