"""Fixtures for the tests that run real SGLang (run them with ci/sglang/run.sh)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # http_load.py

# Outside the SGLang CI venv (e.g. `pytest tests` in the dev venv) there is nothing to run. A spec
# without an origin is a namespace package: with tests/integration on sys.path, this very folder.
_SGLANG = importlib.util.find_spec("sglang")
collect_ignore_glob = [] if _SGLANG is not None and _SGLANG.origin else ["test_*.py"]


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Flux dir: $TINY_FLUX (built by ci/sglang/run.sh) or built here."""
    existing = os.environ.get("TINY_FLUX")
    if existing and (Path(existing) / "model_index.json").exists():
        return existing
    target = tmp_path_factory.mktemp("model") / "tiny-flux"
    subprocess.run([sys.executable, str(HERE.parent / "build_tiny_flux.py"), str(target)], check=True)
    return str(target)


@pytest.fixture(scope="session")
def sglang_hooks() -> None:
    """Our hooks applied in this process, through SGLang's own plugin loader (idempotent)."""
    from sglang.multimodal_gen.runtime.platforms.plugins import apply_plugin_hooks, load_plugins

    load_plugins()
    apply_plugin_hooks()
