"""``cache_dit.platforms``: the accelerator this process runs on (``current_platform``)."""

from dit_cache_backend.platforms import Platform, current_platform  # noqa: F401
