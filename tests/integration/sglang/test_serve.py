"""``SGLANG_CACHE_DIT_ENABLED=true sglang serve --model-path <tiny Flux> ...`` over HTTP.

Two fresh servers, each started as a user types the command (on 127.0.0.1, a free port, start-up
warm-up off):

- ``solo``: the 16 burst requests sent one at a time: the reference answers;
- ``loaded``: the same 16 requests as a burst, up to 4 in flight; then requests with a bad
  ``cache_dit_params`` value and key, and a client that disconnects mid-request, each followed by
  a request whose answer must equal its reference.

The requests mix step counts, seeds, per-request knobs (``cache_dit_params``, a knob change
remounts the cache) and ``enable_cache_dit``. Our engine's per-request statistics come from
``DIT_CACHE_STATS_FILE`` (one JSON line per cache context, written by the worker process after each
denoising pass).
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from http_load import (ENDPOINT, HOST, MAX_IN_FLIGHT, PROMPTS, Response, Server, assert_burst_equals_solo,
                       assert_every_answer_is_an_image, burst_requests, free_port, send_all)  # fmt: skip

ENV = {"SGLANG_CACHE_DIT_ENABLED": "true", "SGLANG_CACHE_DIT_WARMUP": "2", "SGLANG_CACHE_DIT_RDT": "0.5"}
KNOBS = {"max_warmup_steps": 3, "residual_diff_threshold": 0.6}


def serve_argv(model: str, port: int) -> List[str]:
    sglang = str(Path(sys.executable).parent / "sglang")  # this venv's console script, by its interpreter
    return [
        sys.executable, sglang, "serve", "--model-path", model, "--model-id", "FLUX.1-dev", "--backend", "sglang",
        "--host", HOST, "--port", str(port), "--warmup-mode", "off",
    ]  # fmt: skip


def make_server(model: str, workdir: Path) -> Server:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_CACHE_DIT_", "DIT_CACHE_"))}
    full_env = {**clean, **ENV, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "DIT_CACHE_STATS_FILE": str(workdir / "stats.jsonl")}  # fmt: skip
    return Server(serve_argv(model, port), full_env, port, workdir / "serve.log", "/health")


def stats(workdir: Path) -> List[Dict[str, Any]]:
    path = workdir / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def per_request(index: int) -> Dict[str, Any]:
    """Every third request brings its own knobs, request 6 and 14 switch caching off."""
    if index in (6, 14):
        return {"enable_cache_dit": False}
    return {"cache_dit_params": KNOBS} if index % 3 == 1 else {}


def image_body(steps: int, seed: int, prompt: str = PROMPTS[0], **extra: Any) -> Dict[str, Any]:
    return {"prompt": prompt, "size": "32x32", "num_inference_steps": steps, "seed": seed,
            "response_format": "b64_json", "output_format": "png", **extra}  # fmt: skip


BURST = [
    image_body(fields.pop("num_inference_steps"), fields.pop("seed"), PROMPTS[index % len(PROMPTS)], **fields)
    for index, fields in enumerate(burst_requests(per_request))
]
CACHED = [body for body in BURST if body.get("enable_cache_dit", True)]


def decisions(records: List[Dict[str, Any]]) -> collections.Counter:
    """What our engine decided per request, independent of the order requests ran in."""
    return collections.Counter(
        (r["num_inference_steps"], r["config"], tuple(r["cached_steps"]), r["decisions"]) for r in records
    )


@pytest.fixture(scope="module")
def solo(tiny_flux: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("serve-solo")
    server = make_server(tiny_flux, workdir)
    try:
        session = server.start()
        responses, _ = send_all(lambda body: session.post(ENDPOINT, body), BURST, in_flight=1)
        yield {"responses": responses, "records": stats(workdir), "log": server.log()}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def loaded(tiny_flux: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("serve-loaded")
    server = make_server(tiny_flux, workdir)

    def post(body: Dict[str, Any]) -> Response:
        return server.post(ENDPOINT, body)

    try:
        server.start()
        result: Dict[str, Any] = {}
        result["burst"], _ = send_all(post, BURST, in_flight=MAX_IN_FLIGHT)
        result["burst_records"] = stats(workdir)

        mark = len(result["burst_records"])
        result["bad_value"] = post({**BURST[0], "cache_dit_params": {"Fn_compute_blocks": 99}})
        result["bad_key"] = post({**BURST[0], "cache_dit_params": {"residual_diff_treshold": 0.3}})
        result["after_bad"] = post(BURST[1])
        result["after_bad_records"] = stats(workdir)[mark:]

        mark = len(stats(workdir))
        server.post_and_disconnect(ENDPOINT, image_body(28, 5), after_s=1.0)
        result["after_disconnect"] = post(BURST[3])
        result["after_disconnect_records"] = stats(workdir)[mark:]
        result["log"] = server.log()
        yield result
    finally:
        server.stop()


def test_serve_answers_every_image_request_over_http(solo: Dict[str, Any]) -> None:
    assert_every_answer_is_an_image(solo["responses"], solo["log"], size=(32, 32))


def test_our_engine_caches_steps_of_served_requests(solo: Dict[str, Any]) -> None:
    records = solo["records"]
    assert len(records) == len(CACHED)  # one cache context (Flux's block list) per cached request
    assert {(r["engine"], r["module"], r["context"]) for r in records} == {
        ("dit_cache_backend", "FluxTransformer2DModel", "transformer.transformer_blocks")
    }
    assert [r["num_inference_steps"] for r in records] == [b["num_inference_steps"] for b in CACHED]
    assert all(r["cached_steps"] for r in records if r["num_inference_steps"] >= 8), records


def test_per_request_knobs_reach_our_engine(solo: Dict[str, Any]) -> None:
    configs = [r["config"] for r in solo["records"]]
    with_knobs = [b.get("cache_dit_params") == KNOBS for b in CACHED]
    assert [("_W3I1M0MC3_R0.6_" in c) for c in configs] == with_knobs
    assert [("_W2I1M0MC3_R0.5_" in c) for c in configs] == [not k for k in with_knobs]  # the env's


def test_every_burst_response_equals_the_same_request_sent_alone(solo: Dict[str, Any], loaded: Dict[str, Any]) -> None:
    assert_burst_equals_solo(solo["responses"], loaded["burst"], BURST, loaded["log"])


def test_each_burst_request_gets_a_fresh_context_sized_for_its_steps(loaded: Dict[str, Any]) -> None:
    records = loaded["burst_records"]
    assert len(records) == len(CACHED)
    for record in records:
        # One decision per step of this request only: nothing carried over from the one before.
        assert record["decisions"] == record["executed_steps"] == record["num_inference_steps"], record
    assert collections.Counter(r["num_inference_steps"] for r in records) == collections.Counter(
        b["num_inference_steps"] for b in CACHED
    )


def test_burst_cache_decisions_equal_those_of_the_solo_requests(solo: Dict[str, Any], loaded: Dict[str, Any]) -> None:
    assert decisions(loaded["burst_records"]) == decisions(solo["records"])


def test_cache_memory_after_the_burst_equals_that_after_one_request(
    solo: Dict[str, Any], loaded: Dict[str, Any]
) -> None:
    after_one = solo["records"][0]["cached_tensors"]
    assert after_one > 0  # it does hold the last request's residuals
    assert loaded["burst_records"][-1]["cached_tensors"] == after_one


def test_a_bad_cache_dit_params_value_fails_that_request_with_our_message(loaded: Dict[str, Any]) -> None:
    # SGLang 0.5.23 answers any failed generation with a bare 500; the message is in its log.
    assert (loaded["bad_value"].status, loaded["bad_value"].body) == (500, {"text": "Internal Server Error"})
    assert "invalid value for 'Fn_compute_blocks': got 99" in loaded["log"]
    assert "cache_dit_params['Fn_compute_blocks']" in loaded["log"]


def test_a_misspelt_cache_dit_params_key_fails_that_request(loaded: Dict[str, Any]) -> None:
    assert loaded["bad_key"].status == 500
    assert "Unknown cache_dit_params keys: ['residual_diff_treshold']" in loaded["log"]  # SGLang's check


def test_the_request_after_failed_ones_is_unaffected(solo: Dict[str, Any], loaded: Dict[str, Any]) -> None:
    assert loaded["after_bad"].image_pixels() == solo["responses"][1].image_pixels()
    (record,) = loaded["after_bad_records"]  # the failed requests cached nothing
    assert decisions([record]) == decisions([solo["records"][1]])


def test_a_client_disconnecting_mid_request_leaves_nothing_for_the_next_one(
    solo: Dict[str, Any], loaded: Dict[str, Any]
) -> None:
    assert loaded["after_disconnect"].image_pixels() == solo["responses"][3].image_pixels()
    last = loaded["after_disconnect_records"][-1]
    assert decisions([last]) == decisions([solo["records"][CACHED.index(BURST[3])]])
