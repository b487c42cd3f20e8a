"""Wall time of the serve tests' burst (16 requests, up to 4 in flight) with the cache on and off.

Usage, inside the framework's CI venv (ci/vllm_omni/run.sh or ci/sglang/run.sh builds it):

    python tests/integration/serve_burst.py vllm-omni TINY_FLUX_DIR
    python tests/integration/serve_burst.py sglang TINY_FLUX_DIR

vLLM-Omni: two servers in turn, ``--cache-backend cache_dit`` and ``--cache-backend none``.
SGLang: one server (``SGLANG_CACHE_DIT_ENABLED=true``); the same burst with caching on, then with
``enable_cache_dit: false`` in every request. Each server first answers one untimed request. A
figure for the docs, not a test: it prints one line per configuration and asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_load import MAX_IN_FLIGHT, Server, send_all  # noqa: E402


def _suite(name: str) -> Any:
    """The framework's serve test module: its command line and burst are the ones measured."""
    path = HERE / name / "test_serve.py"
    spec = importlib.util.spec_from_file_location(f"{name}_test_serve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed_burst(server: Server, endpoint: str, bodies: List[Dict[str, Any]]) -> float:
    server.post(endpoint, bodies[0])  # untimed: first-request costs (text encoder, allocator)
    responses, wall = send_all(lambda body: server.post(endpoint, body), bodies, in_flight=MAX_IN_FLIGHT)
    assert all(response.status == 200 for response in responses), [r.body for r in responses if r.status != 200]
    return wall


def vllm_omni(model: str, workdir: Path) -> Dict[str, float]:
    suite = _suite("vllm_omni")
    walls = {}
    for label, config in (("cache on (cache_dit)", suite.CACHE_CONFIG), ("cache off (none)", None)):
        server = suite.make_server(model, workdir / f"{len(walls)}.log", config)
        try:
            walls[label] = _timed_burst(server.start(), suite.ENDPOINT, suite.BURST)
        finally:
            server.stop()
    return walls


def sglang(model: str, workdir: Path) -> Dict[str, float]:
    suite = _suite("sglang")
    cache_on = [{k: v for k, v in body.items() if k != "enable_cache_dit"} for body in suite.BURST]
    cache_off = [{**body, "enable_cache_dit": False} for body in cache_on]
    server = suite.make_server(model, workdir)
    try:
        server.start()
        return {
            "cache on (SGLANG_CACHE_DIT_ENABLED=true)": _timed_burst(server, suite.ENDPOINT, cache_on),
            "cache off (enable_cache_dit=false)": _timed_burst(server, suite.ENDPOINT, cache_off),
        }
    finally:
        server.stop()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=("vllm-omni", "sglang"))
    parser.add_argument("model")
    args = parser.parse_args(argv)
    run = vllm_omni if args.framework == "vllm-omni" else sglang
    steps = [body["num_inference_steps"] for body in _suite(args.framework.replace("-", "_")).BURST]
    with tempfile.TemporaryDirectory() as workdir:
        walls = run(args.model, Path(workdir))
    for label, wall in walls.items():
        print(f"{args.framework}: {len(steps)} requests ({sum(steps)} steps), {MAX_IN_FLIGHT} in flight, "
              f"{label}: {wall:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
