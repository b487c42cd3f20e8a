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
from tiny_models import tiny_flux_pipeline
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


def _two_list_transformer_only_flux(cd):
    """examples/api/run_cache_refresh_flux.py's enable: two lists, thresholds 0.08 and 0.24."""
    transformer = tiny_flux_pipeline().transformer
    cd.enable_cache(
        cd.BlockAdapter(
            transformer=transformer,
            blocks=[transformer.transformer_blocks, transformer.single_transformer_blocks],
            forward_pattern=[cd.ForwardPattern.Pattern_1, cd.ForwardPattern.Pattern_1],
        ),
        cache_config=cd.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, num_inference_steps=None),
        params_modifiers=[
            cd.ParamsModifier(cache_config=cd.DBCacheConfig().reset(residual_diff_threshold=0.08)),
            cd.ParamsModifier(cache_config=cd.DBCacheConfig().reset(residual_diff_threshold=0.24)),
        ],
    )
    return transformer


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_strify_after_refresh_context_describes_the_last_block_list(engine_name):
    cd = load_engine(engine_name).module
    transformer = _two_list_transformer_only_flux(cd)
    assert cd.strify(transformer) == "DBCache_F1B0_W8I1M0MC0_R0.08_CFG0_T0O0"  # the first list's
    cd.refresh_context(transformer, num_inference_steps=8, verbose=False)
    # The saved file names of the example: the transformer entry now carries the last list's settings.
    assert cd.strify(transformer) == "DBCache_F1B0_W8I1M0MC0_R0.24_N8_CFG0_T0O0"
    entries = cd.summary(transformer, logging=False)
    thresholds = [e.cache_options["cache_config"].residual_diff_threshold for e in entries]
    assert thresholds == [0.24, 0.08, 0.24]  # single_transformer_blocks, transformer_blocks, transformer


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_a_refresh_with_a_reset_taylorseer_config_turns_taylorseer_on(engine_name):
    """run_cache_refresh_flux.py --refresh-use-cache-config: TaylorSeer asked for at refresh.

    cache-dit installs the partial config as it is, its enable flags None, so TaylorSeer never runs
    (its images equal those without the flag, though the tag says T1O1); ours applies the fields
    given over the class defaults, so TaylorSeer (order 1) runs on both streams.
    """
    engine = load_engine(engine_name)
    cd = engine.module
    transformer = _two_list_transformer_only_flux(cd)
    cd.refresh_context(
        transformer,
        cache_config=cd.DBCacheConfig().reset(num_inference_steps=16),
        calibrator_config=cd.TaylorSeerCalibratorConfig().reset(taylorseer_order=1),
        verbose=False,
    )
    calibrator = cd.summary(transformer, logging=False)[-1].cache_options["calibrator_config"]
    assert calibrator.taylorseer_order == 1
    enabled = (calibrator.enable_calibrator, calibrator.enable_encoder_calibrator)
    assert enabled == ((None, None) if engine.is_reference else (True, True))


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
@pytest.mark.parametrize(
    "flags",
    [("enable_taylorseer", "enable_dmd"), ("enable_taylorseer", "enable_foca"), ("enable_dmd", "enable_foca")],
)
def test_two_calibrators_in_one_config_are_refused_as_mutually_exclusive(engine_name, flags):
    """tests/api/test_dmd_config.py and test_foca_config.py match the words "mutually exclusive"."""
    cd = load_engine(engine_name).module
    with pytest.raises(ValueError, match="mutually exclusive"):
        cd.load_configs({"cache_config": {flag: True for flag in flags}}, return_dict=True)
