"""``cache_dit.offload``: layer-wise offload, delegated to diffusers' group offloading."""

from dit_cache_backend.offload import *  # noqa: F401,F403  (the names of offload.__all__)
