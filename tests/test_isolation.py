"""Interleaved requests on one cached pipeline each behave exactly as if run alone."""

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.backend import CacheDiTBackend
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline

CONFIG = dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.12)

# (steps, image size, batch size, true CFG) — lengths, resolutions, batches and CFG all vary.
REQUESTS = [
    (12, 16, 1, False),
    (6, 32, 2, False),
    (10, 16, 1, True),
    (12, 16, 1, False),
    (8, 32, 1, True),
]


def request_inputs(steps, size, batch, cfg, seed):
    inputs = tiny_flux_inputs(seed % 8, batch_size=batch, num_inference_steps=steps, seed=seed)
    inputs.update(height=size, width=size)
    if cfg:
        inputs.update(
            true_cfg_scale=3.0,
            negative_prompt_embeds=torch.zeros_like(inputs["prompt_embeds"]),
            negative_pooled_prompt_embeds=torch.zeros_like(inputs["pooled_prompt_embeds"]),
        )
    return inputs


def run(pipe, request, seed):
    with torch.no_grad():
        output = pipe(**request_inputs(*request, seed=seed)).images
    decisions = [(d.step, d.branch, d.cached) for d in dcb.summary(pipe.transformer, logging=False)[0].decisions]
    return output, decisions


def alone(request, seed, enable):
    pipe = tiny_flux_pipeline()
    enable(pipe, request)
    return run(pipe, request, seed)


def enable_pipeline_mode(pipe, request):
    if dcb.contexts_summary(pipe) == []:
        dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))


def enable_backend(pipe, request):
    backend = getattr(pipe, "_test_backend", None)
    if backend is None:
        backend = pipe._test_backend = CacheDiTBackend(CONFIG)
        backend.enable(pipe)
    backend.refresh(pipe, request[0])


@pytest.mark.parametrize("enable", [enable_pipeline_mode, enable_backend], ids=["pipeline", "backend"])
def test_interleaved_requests_match_the_same_requests_run_alone(enable):
    shared = tiny_flux_pipeline()
    for seed, request in enumerate(REQUESTS):
        enable(shared, request)
        output, decisions = run(shared, request, seed)
        expected_output, expected_decisions = alone(request, seed, enable)
        assert decisions == expected_decisions, f"request {seed}: {request}"
        assert torch.equal(output, expected_output), f"request {seed}: {request}"


def test_true_cfg_requests_cache_each_branch_on_its_own():
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    _, decisions = run(pipe, (10, 16, 1, True), seed=0)
    branches = {branch for _, branch, _ in decisions}
    assert branches == {"cond", "uncond"}
    assert [step for step, branch, _ in decisions if branch == "cond"] == list(range(10))
    assert [step for step, branch, _ in decisions if branch == "uncond"] == list(range(10))
