"""SGLang's own unit tests for its cache-dit integration, run with our hooks applied.

They ship in the wheel under ``sglang/multimodal_gen/test/unit/``. One test is deselected as a
deliberate difference (docs/sglang.md, "SGLang's own tests"): it patches
``cache_dit.refresh_context`` to watch which transformers the stock refresh reaches, and with our
plugin refreshes never go through the cache_dit module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sglang

HERE = Path(__file__).resolve().parent
UNIT = Path(sglang.__file__).parent / "multimodal_gen" / "test" / "unit"
FILES = ["test_cache_dit_integration.py", "test_cache_dit_per_request.py"]
# Test names (unique across FILES) that check stock behaviour we change on purpose.
DELIBERATE_DIFFERENCES = ["test_request_override_and_active_transformers_survive_transition"]


def test_sglang_cache_dit_unit_tests_pass_with_our_hooks_applied() -> None:
    deselect = " and ".join(f"not {name}" for name in DELIBERATE_DIFFERENCES)
    paths = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "activate_hooks",
         "-k", deselect, *[str(UNIT / name) for name in FILES]],
        cwd=UNIT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert "DIT_CACHE_BACKEND_HOOKS_ACTIVE=True" in proc.stdout, proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert " 1 deselected" in proc.stdout  # exactly the documented difference was left out
