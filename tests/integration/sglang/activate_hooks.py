"""pytest plugin (``-p activate_hooks``): apply SGLang's diffusion plugin hooks before SGLang's own
unit tests run, so that they run with dit_cache_backend's integration in place."""

from __future__ import annotations

from typing import Any


def pytest_configure(config: Any) -> None:
    from sglang.multimodal_gen.runtime.cache import cache_dit_integration
    from sglang.multimodal_gen.runtime.platforms.plugins import apply_plugin_hooks, load_plugins

    load_plugins()
    apply_plugin_hooks()
    # SGLang's REPLACE wrapper keeps the original as __wrapped__; the tests grep this line.
    active = hasattr(cache_dit_integration.enable_cache_on_transformer, "__wrapped__")
    print(f"DIT_CACHE_BACKEND_HOOKS_ACTIVE={active}", flush=True)
