"""At threshold 0 nothing is cached, so our backend's image equals vLLM-Omni's uncached one bit for bit.

The cached run uses our own backend name, so this module also shows ``cache_backend="dit_cache"``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator

import numpy as np
import pytest
from vomni_helpers import generate, make_omni, requests_seen, rpc

STEPS = 6


@pytest.fixture(scope="module")
def images(tiny_flux: str) -> Iterator[Dict[str, Any]]:
    results: Dict[str, Any] = {}
    omni = make_omni(tiny_flux, cache_backend=None)
    try:
        results["uncached"] = np.asarray(generate(omni, STEPS))
    finally:
        omni.close()
    omni = make_omni(tiny_flux, cache_backend="dit_cache", cache_config={"residual_diff_threshold": 0.0})
    try:
        results["backend"] = rpc(omni, "dit_cache_backend_class")
        results["ours"] = np.asarray(generate(omni, STEPS))
        results["requests"] = requests_seen(omni)
    finally:
        omni.close()
    yield results


def test_own_name_selects_our_backend(images: Dict[str, Any]) -> None:
    assert images["backend"] == "dit_cache_backend.adapters.vllm_omni.DitCacheBackend"
    assert images["requests"][-1]["num_inference_steps"] == STEPS


def test_threshold_zero_computes_every_step(images: Dict[str, Any]) -> None:
    for context in images["requests"][-1]["contexts"]:
        assert context["cached_steps"] == []
        assert context["computed_steps"] == list(range(STEPS))


def test_threshold_zero_image_is_bit_identical_to_uncached(images: Dict[str, Any]) -> None:
    # A flat image would make the comparison vacuous; the tiny model's output has real structure.
    assert len(np.unique(images["uncached"])) > 16
    assert images["ours"].dtype == images["uncached"].dtype
    np.testing.assert_array_equal(images["ours"], images["uncached"])
