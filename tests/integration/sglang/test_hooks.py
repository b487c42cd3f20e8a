"""``register()`` against SGLang's real plugin machinery, without starting a pipeline."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest

from dit_cache_backend.adapters import sglang as plugin

INTEGRATION_FUNCTIONS = [
    "enable_cache_on_transformer",
    "enable_cache_on_dual_transformer",
    "refresh_context_on_transformer",
    "refresh_context_on_dual_transformer",
    "disable_cache_on_transformer",
    "get_scm_mask",
]
# Modules SGLang's own bootstrap test requires to be unimported while plugins register.
RUNTIME_MODULES = [
    "sglang.multimodal_gen.runtime.managers.gpu_worker",
    "sglang.multimodal_gen.runtime.entrypoints.diffusion_generator",
    "sglang.multimodal_gen.runtime.server_args.server_args",
    "sglang.multimodal_gen.runtime.cache.cache_dit_integration",
    "sglang.multimodal_gen.runtime.pipelines_core.stages.denoising",
]
PROBE = """
import json, sys
from sglang.multimodal_gen.runtime.platforms.plugins import HookRegistry
from dit_cache_backend.adapters import sglang as plugin
plugin.register()
print(json.dumps({"targets": sorted(HookRegistry._hooks), "imported": [m for m in %r if m in sys.modules]}))
"""


def _register_in_fresh_process(env: Dict[str, str]) -> Dict[str, List[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DIT_CACHE_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE % RUNTIME_MODULES],
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default() -> Dict[str, List[str]]:
    return _register_in_fresh_process({})


def test_register_imports_no_sglang_runtime_module(default: Dict[str, List[str]]) -> None:
    assert default["imported"] == []


def test_register_hooks_all_integration_points_by_name(default: Dict[str, List[str]]) -> None:
    targets = default["targets"]
    expected = [f"{plugin._INTEGRATION}.{name}" for name in INTEGRATION_FUNCTIONS]
    expected.append(f"{plugin._DIFFUSERS}.DiffusersPipeline._apply_cache_dit")
    assert sorted(expected) == targets  # the stats hooks only come with DIT_CACHE_STATS_FILE


def test_stock_switch_registers_nothing() -> None:
    assert _register_in_fresh_process({"DIT_CACHE_BACKEND_SGLANG": "stock"})["targets"] == []


@pytest.mark.parametrize("name", INTEGRATION_FUNCTIONS)
def test_replacement_keeps_sglang_signature(name: str) -> None:
    from sglang.multimodal_gen.runtime.cache import cache_dit_integration

    # Unwrap in case hooks were applied in this process by another test module.
    original = inspect.unwrap(getattr(cache_dit_integration, name))
    ours = getattr(plugin, name)
    assert list(inspect.signature(ours).parameters) == list(inspect.signature(original).parameters)
