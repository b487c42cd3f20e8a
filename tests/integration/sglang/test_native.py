"""SGLang's native Flux pipeline (``DenoisingStage``) caching with dit_cache_backend.

One generator process serves six requests, in this order:

0. 8 steps, server defaults from ``SGLANG_CACHE_DIT_*`` (W=2, R=0.5): mount;
1. 12 steps with per-request knobs and an SCM preset: knob change, so unmount + remount;
2. 10 steps, same knobs: SGLang's per-request refresh path;
3. 8 steps with ``enable_cache_dit=False``: unmount, plain forward;
4. 8 steps with an invalid knob: the request fails with our error;
5. 6 steps with TaylorSeer: the server recovers and mounts again.
"""

from __future__ import annotations

from typing import Dict, List

import pytest

from sglang_harness import Run, generate_requests

ENV = {
    "SGLANG_CACHE_DIT_ENABLED": "true",
    "SGLANG_CACHE_DIT_WARMUP": "2",
    "SGLANG_CACHE_DIT_RDT": "0.5",
}
OVERRIDES = {"max_warmup_steps": 3, "residual_diff_threshold": 0.6, "scm_preset": "medium"}
REQUESTS: List[Dict] = [
    {"num_inference_steps": 8},
    {"num_inference_steps": 12, "cache_dit_params": OVERRIDES},
    {"num_inference_steps": 10, "cache_dit_params": OVERRIDES},
    {"num_inference_steps": 8, "enable_cache_dit": False},
    {"num_inference_steps": 8, "cache_dit_params": {"Fn_compute_blocks": 99}},
    {"num_inference_steps": 6, "cache_dit_params": {"enable_taylorseer": True}},
]
CACHED_REQUEST_STEPS = [8, 12, 10, 6]  # requests 0, 1, 2 and 5 end with a cached transformer


@pytest.fixture(scope="module")
def run(tiny_flux: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return generate_requests(tiny_flux, "sglang", REQUESTS, ENV, tmp_path_factory.mktemp("native"))


def test_generator_exits_cleanly(run: Run) -> None:
    assert run.returncode == 0, run.output[-3000:]


def test_env_default_request_caches_with_our_engine(run: Run) -> None:
    first = run.records[0]
    assert first["engine"] == "dit_cache_backend"
    assert first["backend"] == "sglang"
    assert first["module"] == "FluxTransformer2DModel"  # SGLang's own class, not diffusers'
    assert first["config"].startswith("DBCache_F1B0_W2I1M0MC3_R0.5")  # SGLang env knobs reached us
    assert first["cached_steps"], first


def test_every_cached_request_gets_fresh_state_sized_for_its_steps(run: Run) -> None:
    assert [r["num_inference_steps"] for r in run.records] == CACHED_REQUEST_STEPS
    # One decision per step of this request only: nothing carried over from earlier requests.
    assert [r["decisions"] for r in run.records] == CACHED_REQUEST_STEPS
    assert [r["executed_steps"] for r in run.records] == CACHED_REQUEST_STEPS


def test_no_step_is_cached_during_warmup_or_out_of_range(run: Run) -> None:
    warmups = [2, 3, 3, 2]
    for record, steps, warmup in zip(run.records, CACHED_REQUEST_STEPS, warmups):
        assert all(warmup <= step < steps for step in record["cached_steps"]), record


def test_per_request_knobs_override_the_env(run: Run) -> None:
    assert "_W3I1M0MC3_R0.6_" in run.records[1]["config"]


def test_scm_mask_is_rebuilt_for_each_step_count(run: Run) -> None:
    # "SCM<mask>_<policy>": SGLang's preset mask, built by our steps_mask for 12 then 10 steps.
    masks = [r["config"].split("SCM")[1].split("_")[0] for r in run.records[1:3]]
    assert [len(mask) for mask in masks] == [12, 10]
    assert all(mask.endswith("1") for mask in masks)  # a preset always computes the last step


def test_request_can_opt_out_of_caching(run: Run) -> None:
    assert run.request_ok(3)
    assert len(run.records) == len(CACHED_REQUEST_STEPS)  # request 3 ran with no cache context


def test_invalid_request_knob_fails_with_our_error(run: Run) -> None:
    assert run.request_failed(4)
    assert "invalid value for 'Fn_compute_blocks': got 99" in run.output
    assert "set by SGLANG_CACHE_DIT_FN or cache_dit_params['Fn_compute_blocks']" in run.output


def test_server_recovers_after_a_failed_request(run: Run) -> None:
    assert run.request_ok(5)
    assert run.records[-1]["calibrator"] == "TaylorSeerCalibratorConfig"
