"""Test-only ``vllm_omni.platform_plugins`` entry: a CPU platform, active only when asked for.

Gated by ``DIT_CACHE_TEST_OMNI_CPU_PLATFORM=1`` so that installing it never changes the platform a
real machine resolves.
"""

from __future__ import annotations

import os
from typing import Optional

ENV = "DIT_CACHE_TEST_OMNI_CPU_PLATFORM"


def platform_plugin() -> Optional[str]:
    if os.environ.get(ENV) == "1":
        return "dit_cache_test_omni_cpu.platform.CpuOmniPlatform"
    return None
