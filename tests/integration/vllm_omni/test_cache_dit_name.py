"""``Omni(cache_backend="cache_dit")`` runs on dit_cache_backend, inside real vLLM-Omni on CPU.

One engine serves the whole module: its start-up warm-up request (2 steps, run by vLLM-Omni itself),
then an 8-step request, then a 5-step one. Statistics come from our engine in the worker, through
``DitCacheWorkerExtension`` and vLLM-Omni's ``collective_rpc``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

import pytest
from vomni_helpers import SIZE, generate, make_omni, requests_seen, rpc

CONFIG = {
    "Fn_compute_blocks": 1,
    "Bn_compute_blocks": 0,
    "max_warmup_steps": 2,
    "max_continuous_cached_steps": 2,
    # The tiny random model's residuals change a lot between steps; this threshold still caches.
    "residual_diff_threshold": 0.5,
}
WARMUP_STEPS = 2  # vLLM-Omni's fixed start-up dummy request
FIRST, SECOND = 8, 5


@pytest.fixture(scope="module")
def run(tiny_flux: str) -> Iterator[Dict[str, Any]]:
    omni = make_omni(tiny_flux, cache_backend="cache_dit", cache_config=CONFIG)
    try:
        backend = rpc(omni, "dit_cache_backend_class")
        first_image = generate(omni, FIRST)
        after_first = requests_seen(omni)
        generate(omni, SECOND)
        after_second = requests_seen(omni)
        yield {
            "backend": backend,
            "first_image": first_image,
            "after_first": after_first,
            "after_second": after_second,
        }
    finally:
        omni.close()


def contexts(record: Dict[str, Any]) -> List[Dict[str, Any]]:
    assert record["contexts"], "our engine reported no cache context"
    return record["contexts"]


def test_cache_dit_name_selects_our_backend(run: Dict[str, Any]) -> None:
    assert run["backend"] == "dit_cache_backend.adapters.vllm_omni.DitCacheBackend"


def test_request_returns_an_image(run: Dict[str, Any]) -> None:
    assert run["first_image"].size == (SIZE, SIZE)


def test_our_engine_computes_and_caches_steps(run: Dict[str, Any]) -> None:
    request = run["after_first"][-1]
    assert request["num_inference_steps"] == FIRST
    for context in contexts(request):
        computed, cached = set(context["computed_steps"]), set(context["cached_steps"])
        assert cached, f"{context['name']}: nothing cached"
        assert set(range(CONFIG["max_warmup_steps"])) <= computed  # warm-up steps always compute
        assert computed | cached == set(range(FIRST)) and not computed & cached


def test_warmup_and_request_each_get_a_fresh_context(run: Dict[str, Any]) -> None:
    warmup, request = run["after_first"]
    assert warmup["num_inference_steps"] == WARMUP_STEPS
    for context in contexts(warmup):
        assert context["num_inference_steps"] == WARMUP_STEPS
        assert context["steps"] == list(range(WARMUP_STEPS))
    for context in contexts(request):
        assert context["num_inference_steps"] == FIRST
        assert context["steps"] == list(range(FIRST))  # counting restarts at 0: a fresh context


def test_next_request_with_other_step_count_gets_its_own_context(run: Dict[str, Any]) -> None:
    assert [r["num_inference_steps"] for r in run["after_second"]] == [WARMUP_STEPS, FIRST, SECOND]
    # The earlier request's record is unchanged by the later one.
    assert run["after_second"][1] == run["after_first"][1]
    for context in contexts(run["after_second"][-1]):
        assert context["num_inference_steps"] == SECOND
        assert context["steps"] == list(range(SECOND))
