"""``vllm serve <tiny Flux> --omni --cache-backend cache_dit --cache-config '<json>'`` over HTTP.

Two fresh servers, each started exactly as a user types the command (on 127.0.0.1, a free port):

- ``solo``: the 16 burst requests sent one at a time: the reference answers;
- ``loaded``: the same 16 requests as a burst, up to 4 in flight; then a request refused by
  validation and a client that disconnects mid-request, each followed by a request whose answer
  must equal its reference.

Our engine's per-request statistics are read from the server's log (``--enable-cache-dit-summary``
logs one line per cache context after every request batch). vLLM-Omni has no per-request cache
field (``extra_params`` reach the pipeline, never the cache backend), so the requests vary
``num_inference_steps``, ``seed`` and the prompt; a bad cache parameter can only come from
``--cache-config``, and fails ``vllm serve`` at start-up.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from http_load import (ENDPOINT, HOST, MAX_IN_FLIGHT, PROMPTS, Response, Server, assert_burst_equals_solo,
                       assert_every_answer_is_an_image, burst_requests, free_port, send_all)  # fmt: skip

CACHE_CONFIG = {"max_warmup_steps": 2, "residual_diff_threshold": 0.5}
# One line per cache context, e.g. "transformer.transformer_blocks: DBCache_..._N8_..., cached 5/8
# steps [2, 3, 5, 6, 7], holding 2 tensors".
SUMMARY = re.compile(
    r"\] (?P<context>transformer\.\w+): (?P<tag>\S+), cached (?P<cached>\d+)/(?P<executed>\d+) steps "
    r"\[(?P<steps>[\d, ]*)\].*, holding (?P<held>\d+) tensors"
)


def serve_argv(model: str, port: int, cache_config: Optional[Dict[str, Any]] = None) -> List[str]:
    """The documented command line; ``cache_config=None`` serves without a cache backend."""
    vllm = str(Path(sys.executable).parent / "vllm")  # this venv's console script, by its interpreter
    argv = [sys.executable, vllm, "serve", model, "--omni", "--host", HOST, "--port", str(port)]
    if cache_config is None:
        argv += ["--cache-backend", "none"]
    else:
        argv += ["--cache-backend", "cache_dit", "--cache-config", json.dumps(cache_config)]
    return argv + ["--enable-cache-dit-summary", "--enforce-eager", "--dtype", "float32"]


def make_server(model: str, log_path: Path, cache_config: Optional[Dict[str, Any]] = CACHE_CONFIG) -> Server:
    port = free_port()
    env = {**os.environ, "DIT_CACHE_TEST_OMNI_CPU_PLATFORM": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_COLOR": "0",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    return Server(serve_argv(model, port, cache_config), env, port, log_path, "/health")


def image_body(steps: int, seed: int, prompt: str = PROMPTS[0], size: str = "32x32") -> Dict[str, Any]:
    return {"prompt": prompt, "size": size, "num_inference_steps": steps, "seed": seed, "guidance_scale": 0.0}


BURST = [
    image_body(fields["num_inference_steps"], fields["seed"], PROMPTS[index % len(PROMPTS)])
    for index, fields in enumerate(burst_requests())
]


def summaries(log: str) -> List[List[Dict[str, Any]]]:
    """Our per-request summaries in log order: one list of per-context entries per request batch."""
    entries = []
    for match in SUMMARY.finditer(log):
        steps = [int(step) for step in match["steps"].split(",") if step.strip()]
        entries.append({**match.groupdict(), "steps": steps, "executed": int(match["executed"]),
                        "held": int(match["held"])})  # fmt: skip
    contexts = len({entry["context"] for entry in entries})
    return [entries[start : start + contexts] for start in range(0, len(entries), contexts)]


def sized_for(entry: Dict[str, Any]) -> int:
    """The step count the context was sized for, from its config tag (``..._N<steps>_...``)."""
    return int(re.search(r"_N(\d+)_", entry["tag"])[1])


class Session:
    """What one server answered, and the log it wrote after a given point."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.mark = len(server.log())

    def post(self, body: Dict[str, Any]) -> Response:
        return self.server.post(ENDPOINT, body)

    def requests_since(self, mark: int) -> List[List[Dict[str, Any]]]:
        return summaries(self.server.log()[mark:])


@pytest.fixture(scope="module")
def solo(tiny_flux: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    server = make_server(tiny_flux, tmp_path_factory.mktemp("solo") / "serve.log")
    try:
        session = Session(server.start())  # after start-up: its warm-up request is not ours
        responses, _ = send_all(session.post, BURST, in_flight=1)
        yield {"responses": responses, "requests": session.requests_since(session.mark), "log": server.log()}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def loaded(tiny_flux: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    server = make_server(tiny_flux, tmp_path_factory.mktemp("loaded") / "serve.log")
    try:
        session = Session(server.start())
        result: Dict[str, Any] = {}
        result["burst"], _ = send_all(session.post, BURST, in_flight=MAX_IN_FLIGHT)
        result["burst_requests"] = session.requests_since(session.mark)

        mark = len(server.log())
        result["refused"] = session.post({**BURST[0], "num_inference_steps": 0})
        result["after_refused"] = session.post(BURST[1])
        result["after_refused_requests"] = session.requests_since(mark)

        # A larger image so that the request is surely still denoising when its client goes away.
        mark = len(server.log())
        server.post_and_disconnect(ENDPOINT, image_body(28, 5, size="256x256"), after_s=0.5)
        result["after_disconnect"] = session.post(BURST[3])
        result["after_disconnect_requests"] = session.requests_since(mark)
        result["after_disconnect_answered"] = server.log()[mark:].count(f'"POST {ENDPOINT} HTTP/1.1" 200')
        result["log"] = server.log()
        yield result
    finally:
        server.stop()


def test_serve_answers_every_image_request_over_http(solo: Dict[str, Any]) -> None:
    assert_every_answer_is_an_image(solo["responses"], solo["log"], size=(32, 32))


def test_our_engine_caches_steps_of_served_requests(solo: Dict[str, Any]) -> None:
    assert "dit_cache_backend enabled on FluxPipeline" in solo["log"]
    requests = solo["requests"]
    assert len(requests) == len(BURST)
    contexts = {entry["context"] for request in requests for entry in request}
    assert contexts and all(name.startswith("transformer.") for name in contexts), contexts  # Flux's block lists
    for body, request in zip(BURST, requests):
        if body["num_inference_steps"] >= 8:
            assert all(entry["steps"] for entry in request), request
        # W=2: never a cached step during warm-up.
        assert all(min(entry["steps"], default=2) >= 2 for entry in request), request


def test_every_burst_response_equals_the_same_request_sent_alone(solo: Dict[str, Any], loaded: Dict[str, Any]) -> None:
    assert_burst_equals_solo(solo["responses"], loaded["burst"], BURST, loaded["log"])


def test_each_burst_request_gets_a_fresh_context_sized_for_its_steps(loaded: Dict[str, Any]) -> None:
    requests = loaded["burst_requests"]
    assert len(requests) == len(BURST)
    for request in requests:
        for entry in request:
            # Executed steps = the request's own steps: nothing carried over from the one before.
            assert entry["executed"] == sized_for(entry), entry
    steps = collections.Counter(sized_for(request[0]) for request in requests)
    assert steps == collections.Counter(body["num_inference_steps"] for body in BURST)


def test_burst_cache_decisions_equal_those_of_the_solo_requests(solo: Dict[str, Any], loaded: Dict[str, Any]) -> None:
    def decisions(requests: List[List[Dict[str, Any]]]) -> collections.Counter:
        return collections.Counter(tuple((e["context"], e["tag"], tuple(e["steps"])) for e in r) for r in requests)

    assert decisions(loaded["burst_requests"]) == decisions(solo["requests"])


def test_cache_memory_after_the_burst_equals_that_after_one_request(
    solo: Dict[str, Any], loaded: Dict[str, Any]
) -> None:
    def held(request: List[Dict[str, Any]]) -> Dict[str, int]:
        return {entry["context"]: entry["held"] for entry in request}

    after_one = held(solo["requests"][0])
    assert all(count > 0 for count in after_one.values()), after_one  # it does hold the last residuals
    assert held(loaded["burst_requests"][-1]) == after_one


def test_a_refused_request_gets_a_400_naming_the_field(loaded: Dict[str, Any]) -> None:
    refused = loaded["refused"]
    assert refused.status == 400
    assert "num_inference_steps" in refused.body["error"]["message"]


def test_the_request_after_a_refused_one_is_unaffected(solo: Dict[str, Any], loaded: Dict[str, Any]) -> None:
    assert loaded["after_refused"].image_pixels() == solo["responses"][1].image_pixels()
    (request,) = loaded["after_refused_requests"]  # the refused one never reached the engine
    assert [entry["executed"] for entry in request] == [BURST[1]["num_inference_steps"]] * len(request)


def test_a_client_disconnecting_mid_request_leaves_nothing_for_the_next_one(
    solo: Dict[str, Any], loaded: Dict[str, Any]
) -> None:
    assert loaded["after_disconnect_answered"] == 1  # the next request only: the client had gone
    assert loaded["after_disconnect"].image_pixels() == solo["responses"][3].image_pixels()
    last = loaded["after_disconnect_requests"][-1]
    assert [entry["executed"] for entry in last] == [28] * len(last)
    assert last == solo["requests"][3]


def test_bad_cache_config_fails_serve_at_start_up_with_our_message(
    tiny_flux: str, tmp_path: Path
) -> None:
    server = make_server(tiny_flux, tmp_path / "serve.log", {**CACHE_CONFIG, "residual_diff_treshold": 0.3})
    try:
        with pytest.raises(RuntimeError, match="server exited"):
            server.start()
    finally:
        server.stop()
    assert "unknown key 'residual_diff_treshold'" in server.log()
    assert "did you mean 'residual_diff_threshold'?" in server.log()
