"""``cache_dit.offload.layerwise``: the same names as ``cache_dit.offload``."""

from dit_cache_backend.offload import *  # noqa: F401,F403  (the names of offload.__all__)
