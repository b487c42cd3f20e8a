"""``cache_dit.caching.cache_interface``: enable, refresh, disable, and the registry queries."""

from dit_cache_backend.registry import get_adapter, supported_pipelines  # noqa: F401
from dit_cache_backend.api import disable_cache, enable_cache, refresh_context  # noqa: F401
from dit_cache_backend.scm import steps_mask  # noqa: F401
