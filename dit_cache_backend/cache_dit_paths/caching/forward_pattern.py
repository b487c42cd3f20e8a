"""``cache_dit.caching.forward_pattern``: ``ForwardPattern``."""

from dit_cache_backend.patterns import ForwardPattern  # noqa: F401
