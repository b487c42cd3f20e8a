"""``cache_dit.logger``: ``init_logger``."""

from dit_cache_backend.compat import init_logger  # noqa: F401
