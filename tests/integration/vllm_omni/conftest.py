"""Fixtures for running real vLLM-Omni 0.30 on CPU (ci/vllm_omni/run.sh sets all of this up).

The suite needs vllm-omni, the test-only CPU platform plugin (``cpu_platform_plugin/``) and a tiny
Flux directory. Without vllm-omni it is not collected, so the project's plain ``pytest`` run is
unaffected.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
# A spec without an origin is a namespace package: with tests/integration on sys.path (the SGLang
# suite's conftest puts it there too), this very folder would pass for vllm_omni.
_VLLM_OMNI = importlib.util.find_spec("vllm_omni")
VLLM_OMNI_MISSING = _VLLM_OMNI is None or not _VLLM_OMNI.origin
sys.path.insert(0, str(HERE.parent))  # build_tiny_flux.py and http_load.py

if VLLM_OMNI_MISSING:
    collect_ignore_glob = ["test_*.py"]
else:
    # Both must be set before vLLM-Omni resolves its platform or touches the Hub.
    os.environ.setdefault("DIT_CACHE_TEST_OMNI_CPU_PLATFORM", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Flux directory: ``DIT_CACHE_TINY_FLUX`` if set (CI builds it once), else built here."""
    given = os.environ.get("DIT_CACHE_TINY_FLUX")
    if given:
        return given
    from build_tiny_flux import build

    out = str(tmp_path_factory.mktemp("tiny") / "flux")
    build(out)
    return out


@pytest.fixture
def close_after() -> Iterator[List[Any]]:
    """Omni instances a test opens, closed even when the test fails."""
    opened: List[Any] = []
    yield opened
    for omni in opened:
        omni.close()
