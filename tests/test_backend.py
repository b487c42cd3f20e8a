"""CacheDiTBackend: what serving frameworks drive (enable once, refresh per request, disable)."""

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.backend import (
    CUSTOM_DIT_ENABLERS,
    CacheDiTBackend,
    EnableResult,
    register_enabler,
    standard_enabler,
)
from dit_cache_backend.registry import wan22_step_split
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline

FLAT = {
    "Fn_compute_blocks": 1,
    "Bn_compute_blocks": 0,
    "max_warmup_steps": 2,
    "residual_diff_threshold": 0.12,
    "max_continuous_cached_steps": 3,
}


def run(pipe, steps, seed=0):
    with torch.no_grad():
        return pipe(**tiny_flux_inputs(1, num_inference_steps=steps, seed=seed)).images


def stats_of(backend):
    return dcb.summary(backend.targets[0], logging=False)[0]


@pytest.fixture()
def pipe():
    return tiny_flux_pipeline()


def test_a_flat_vllm_omni_dict_configures_dbcache():
    backend = CacheDiTBackend({**FLAT, "enable_taylorseer": True, "taylorseer_order": 2})
    assert backend.config.cache_config.Fn_compute_blocks == 1
    assert backend.config.cache_config.residual_diff_threshold == 0.12
    assert backend.config.calibrator_config.taylorseer_order == 2


def test_missing_flat_keys_take_vllm_omni_defaults():
    config = CacheDiTBackend({}).config.cache_config
    assert (config.Fn_compute_blocks, config.max_warmup_steps) == (1, 4)
    assert (config.residual_diff_threshold, config.max_continuous_cached_steps) == (0.24, 3)


def test_an_unknown_flat_key_is_rejected_with_a_suggestion():
    with pytest.raises(dcb.UnknownKeyError, match="residual_diff_threshold"):
        CacheDiTBackend({"residual_diff_treshold": 0.1})


def test_an_unknown_scm_policy_is_rejected():
    with pytest.raises(dcb.ConfigError, match="scm_steps_mask_policy"):
        CacheDiTBackend({"scm_steps_mask_policy": "turbo"})


def test_other_backends_keys_are_ignored():
    backend = CacheDiTBackend({**FLAT, "rel_l1_thresh": 0.2, "mag_threshold": 0.3})
    assert backend.config.cache_config.residual_diff_threshold == 0.12


def test_enable_caches_the_transformer_and_reports_enabled(pipe):
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipe)
    assert backend.is_enabled()
    assert backend.targets == (pipe.transformer,)
    backend.refresh(pipe, 12)
    run(pipe, 12)
    assert stats_of(backend).cached_steps, "the trained tiny model caches at R0.12"


def test_each_request_gets_fresh_state_even_with_a_different_step_count(pipe):
    alone = tiny_flux_pipeline()
    alone_backend = CacheDiTBackend(FLAT)
    alone_backend.enable(alone)
    alone_backend.refresh(alone, 20)
    expected = run(alone, 20, seed=3)
    expected_steps = stats_of(alone_backend).cached_steps

    backend = CacheDiTBackend(FLAT)
    backend.enable(pipe)
    backend.refresh(pipe, 12)
    run(pipe, 12, seed=1)
    backend.refresh(pipe, 20)
    assert dcb.summary(pipe.transformer, logging=False)[0].cached_tensors == 0
    second = run(pipe, 20, seed=3)
    stats = stats_of(backend)
    assert torch.equal(second, expected), "request 2 must behave exactly as if run alone"
    assert stats.cached_steps == expected_steps
    assert [d.step for d in stats.decisions] == list(range(20))


def test_the_first_cached_step_of_a_request_follows_a_computed_step_of_that_request(pipe):
    backend = CacheDiTBackend({**FLAT, "max_warmup_steps": 0, "residual_diff_threshold": 0.99})
    backend.enable(pipe)
    backend.refresh(pipe, 8)
    run(pipe, 8)
    backend.refresh(pipe, 8)
    run(pipe, 8)
    decisions = stats_of(backend).decisions
    assert decisions[0].cached is False and decisions[0].reason == "no_reference"


def test_refresh_with_an_unknown_step_count_still_runs_without_a_mask(pipe):
    backend = CacheDiTBackend({**FLAT, "scm_steps_mask_policy": "fast"})
    backend.enable(pipe)
    backend.refresh(pipe, None)
    run(pipe, 10)
    config = stats_of(backend).cache_options["cache_config"]
    assert config.num_inference_steps is None and config.steps_computation_mask is None


def test_refresh_builds_the_scm_mask_for_the_request_step_count(pipe):
    backend = CacheDiTBackend({**FLAT, "scm_steps_mask_policy": "fast", "scm_steps_policy": "static"})
    backend.enable(pipe)
    backend.refresh(pipe, 12)
    run(pipe, 12)
    stats = stats_of(backend)
    mask = dcb.steps_mask(total_steps=12, mask_policy="fast")
    assert stats.cache_options["cache_config"].steps_computation_mask == mask
    assert stats.cached_steps == [i for i, bit in enumerate(mask) if bit == 0]


def test_an_scm_preset_without_a_mask_for_the_step_count_warns_and_runs_unmasked(pipe, caplog):
    backend = CacheDiTBackend({**FLAT, "scm_steps_mask_policy": "fast"})
    backend.enable(pipe)
    backend.refresh(pipe, 5)
    run(pipe, 5)
    assert "no mask for 5 steps" in caplog.text
    assert stats_of(backend).cache_options["cache_config"].steps_computation_mask is None


def test_refresh_rejects_a_non_positive_step_count(pipe):
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipe)
    with pytest.raises(dcb.ConfigError, match="num_inference_steps"):
        backend.refresh(pipe, 0)


def test_disable_restores_the_pipeline_exactly(pipe):
    reference = run(pipe, 10)
    forward_before = pipe.transformer.forward
    keys_before = list(pipe.transformer.state_dict())
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipe)
    backend.refresh(pipe, 10)
    run(pipe, 10)
    backend.disable(pipe)
    assert not backend.is_enabled()
    assert pipe.transformer.forward == forward_before
    assert "forward" not in vars(pipe.transformer)
    assert list(pipe.transformer.state_dict()) == keys_before
    assert torch.equal(run(pipe, 10), reference)


def test_a_failed_enable_leaves_the_pipeline_untouched(pipe):
    backend = CacheDiTBackend({**FLAT, "Fn_compute_blocks": 7})  # the tiny model has 6 blocks
    with pytest.raises(dcb.ConfigError, match="Fn_compute_blocks"):
        backend.enable(pipe)
    assert not backend.is_enabled()
    assert "forward" not in vars(pipe.transformer)


def test_registered_enablers_are_used_by_pipeline_class_name(pipe):
    calls = []

    @register_enabler("FluxPipeline")
    def spy(pipeline, config):
        calls.append(type(pipeline).__name__)
        return standard_enabler(pipeline, config)

    try:
        backend = CacheDiTBackend(FLAT)
        backend.enable(pipe)
        assert calls == ["FluxPipeline"]
        assert isinstance(CUSTOM_DIT_ENABLERS["FluxPipeline"](tiny_flux_pipeline(), backend.config), EnableResult)
    finally:
        CUSTOM_DIT_ENABLERS.pop("FluxPipeline")


def test_the_builtin_enablers_cover_wan22_longcat_and_bagel():
    for name in ("Wan22Pipeline", "Wan22I2VPipeline", "LongCatImagePipeline", "BagelPipeline"):
        assert name in CUSTOM_DIT_ENABLERS


class _Scheduler:
    """The part of a flow-match scheduler the step split needs."""

    class config:
        num_train_timesteps = 1000

    def set_timesteps(self, n):
        self.timesteps = torch.linspace(1000, 0, n + 1)[:-1]


class _Wan22Like:
    def __init__(self, boundary_ratio):
        self.boundary_ratio = boundary_ratio
        self.scheduler = _Scheduler()


def test_wan22_steps_split_at_the_boundary_timestep_of_the_real_schedule():
    assert wan22_step_split(_Wan22Like(0.875), 40) == (6, 34)
    assert wan22_step_split(_Wan22Like(0.5), 10) == (6, 4)


def test_wan22_step_split_does_not_touch_the_pipeline_scheduler():
    pipeline = _Wan22Like(0.875)
    pipeline.scheduler.set_timesteps(3)
    wan22_step_split(pipeline, 40)
    assert len(pipeline.scheduler.timesteps) == 3
