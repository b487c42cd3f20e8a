"""What cache-dit's own ``tests/api`` exercise, as specifications with asserted decisions.

cache-dit's forward-pattern and refresh tests only smoke-test (no assertion on decisions); here the
same scenarios — every ForwardPattern in pipeline mode through a ``BlockAdapter`` with
``blocks_name``, and a transformer-only adapter refreshed with ``num_inference_steps`` and then
with a full ``DBCacheConfig`` + ``steps_mask("fast")`` for 16, 28 and 50 steps — must make the
reference's decisions step for step, and ``disable_cache`` must restore the model.
"""

from __future__ import annotations

import pytest
import torch

from engines import ENGINE_NAMES, load_engine
from toys import make_pipeline, random_schedule, random_toy

PATTERNS = range(6)


@torch.no_grad()  # inference, as diffusers pipelines run it (a tracked call always computes)
def run_requests(engine, pattern: int, refresh: bool):
    cd = engine.module
    toy = random_toy(pattern, num_blocks=8, seed=pattern)
    if refresh:
        adapter = cd.BlockAdapter(
            transformer=toy,
            blocks=toy.transformer_blocks,
            forward_pattern=cd.ForwardPattern[f"Pattern_{pattern}"],
            check_forward_pattern=False,
        )
        cd.enable_cache(
            adapter,
            cache_config=cd.DBCacheConfig(
                Fn_compute_blocks=8, Bn_compute_blocks=0, residual_diff_threshold=0.05
            ),
        )
    else:
        pipe = make_pipeline(toy)
        adapter = cd.BlockAdapter(
            pipe=pipe,
            transformer=toy,
            blocks=toy.transformer_blocks,
            blocks_name="transformer_blocks",
            forward_pattern=cd.ForwardPattern[f"Pattern_{pattern}"],
            check_forward_pattern=False,
        )
        cd.enable_cache(
            adapter,
            cache_config=cd.DBCacheConfig(
                Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.05
            ),
        )
    cached = []
    for index, steps in enumerate([16, 28, 50]):
        schedule = random_schedule(pattern, steps, drift=0.01, seed=steps)
        if refresh:
            if index == 0:
                cd.refresh_context(toy, num_inference_steps=steps, verbose=False)
            else:
                cd.refresh_context(
                    toy,
                    cache_config=cd.DBCacheConfig(
                        Fn_compute_blocks=1,
                        Bn_compute_blocks=0,
                        residual_diff_threshold=0.08,
                        num_inference_steps=steps,
                        steps_computation_mask=cd.steps_mask(mask_policy="fast", total_steps=steps),
                        steps_computation_policy="dynamic",
                        enable_separate_cfg=False,
                    ),
                    verbose=False,
                )
            for entry in schedule:
                toy(**entry.cond)
        else:
            pipe(schedule)
        cached.append(list(cd.summary(toy, logging=False)[-1].cached_steps))
    cd.disable_cache(adapter)
    return toy, cached


@pytest.fixture(scope="module")
def reference_runs():
    reference = load_engine("cache_dit")
    return {
        (pattern, refresh): run_requests(reference, pattern, refresh)[1]
        for pattern in PATTERNS
        for refresh in (False, True)
    }


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pipeline_mode_decisions_per_pattern_are_cache_dits(reference_runs, pattern):
    _, cached = run_requests(load_engine("ours"), pattern, refresh=False)
    assert cached == reference_runs[(pattern, False)]
    assert any(cached)  # the scenario does cache something


@pytest.mark.parametrize("pattern", PATTERNS)
def test_refreshed_transformer_only_decisions_per_pattern_are_cache_dits(reference_runs, pattern):
    _, cached = run_requests(load_engine("ours"), pattern, refresh=True)
    assert cached == reference_runs[(pattern, True)]
    assert any(cached)


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
@pytest.mark.parametrize("refresh", [False, True])
def test_disable_cache_restores_the_uncached_model(engine_name, refresh):
    toy, _ = run_requests(load_engine(engine_name), 0, refresh)
    fresh = random_toy(0, num_blocks=8, seed=0)
    entry = random_schedule(0, 1, drift=0.01, seed=3)[0]
    for ours, expected in zip(toy(**entry.cond), fresh(**entry.cond)):
        assert torch.equal(ours, expected)
