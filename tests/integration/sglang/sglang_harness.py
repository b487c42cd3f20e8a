"""Running real SGLang in a subprocess and reading back what our plugin recorded.

Each scenario starts SGLang once (about 30-60 s on CPU, mostly start-up), so the tests keep
scenarios in module-scoped fixtures and assert one thing each. Results come back through the
plugin's ``DIT_CACHE_STATS_FILE`` JSON lines and the process output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent

SCENARIO_TIMEOUT_S = 300


@dataclasses.dataclass
class Run:
    returncode: int
    output: str
    records: List[Dict]
    workdir: Path

    def request_ok(self, index: int) -> bool:
        return f"REQUEST {index} OK" in self.output

    def request_failed(self, index: int) -> bool:
        return f"REQUEST {index} FAILED" in self.output


def run_sglang(
    args: Sequence[str], env: Dict[str, str], workdir: Path
) -> Run:
    """Run ``python ARGS`` with a clean cache env (only ``env``) and collect stats records."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SGLANG_CACHE_DIT_", "DIT_CACHE_", "SGLANG_PLUGINS"))
    }
    stats_file = workdir / "stats.jsonl"
    clean.update(HF_HUB_OFFLINE="1", **env)
    clean["DIT_CACHE_STATS_FILE"] = str(stats_file)
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=workdir,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
    )
    records = []
    if stats_file.exists():
        records = [json.loads(line) for line in stats_file.read_text().splitlines() if line]
    return Run(proc.returncode, proc.stdout, records, workdir)


def generate_requests(
    model: str,
    backend: str,
    requests: List[Dict],
    env: Dict[str, str],
    workdir: Path,
    config: Optional[str] = None,
) -> Run:
    args = [str(HERE / "generate_requests.py"), model, backend, json.dumps(requests)]
    if config is not None:
        args.append(config)
    return run_sglang(args, env, workdir)


def sglang_cli_generate(model: str, env: Dict[str, str], workdir: Path, steps: int = 8) -> Run:
    """``sglang generate`` of the native Flux pipeline, as a user would type it."""
    # The `sglang` console script of this venv, run by its own interpreter.
    args = [
        str(Path(sys.executable).parent / "sglang"), "generate",
        "--backend", "sglang", "--model-id", "FLUX.1-dev", "--model-path", model,
        "--prompt", "a cat", "--num-inference-steps", str(steps),
        "--height", "32", "--width", "32", "--output-path", str(workdir / "out"),
    ]  # fmt: skip
    return run_sglang(args, env, workdir)
