"""CacheDiTBackend: what serving frameworks drive (enable once, refresh per request, disable)."""

import contextlib

import numpy as np
import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.backend import (
    CUSTOM_DIT_ENABLERS,
    CacheDiTBackend,
    EnablePlan,
    EnableResult,
    enable_all,
    is_cached,
    refresh_target,
    register_enabler,
    request_mask,
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
    assert "no mask for num_inference_steps=5" in caplog.text
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


# -- clear errors, accepted inputs ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["balanced", 3, 0.5, ["Fn_compute_blocks"]])
def test_a_cache_config_of_the_wrong_kind_names_the_argument_and_what_is_allowed(value):
    with pytest.raises(dcb.ConfigError) as error:
        CacheDiTBackend(value)
    assert error.value.key == "cache_config"
    assert "a flat dict" in str(error.value) and "load_configs" in str(error.value)


def test_a_load_configs_result_configures_the_backend():
    from dit_cache_backend.presets import preset_path

    loaded = dcb.load_configs(preset_path("balanced"))
    backend = CacheDiTBackend(loaded)
    assert backend.config.cache_config.strify() == loaded["cache_config"].strify()
    assert backend.config.cache_config is not loaded["cache_config"], "the backend keeps a copy"


def test_refresh_accepts_numpy_integer_step_counts(pipe):
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipe)
    backend.refresh(pipe, np.int64(10))
    run(pipe, 10)
    steps = stats_of(backend).cache_options["cache_config"].num_inference_steps
    assert steps == 10 and type(steps) is int
    assert [d.step for d in stats_of(backend).decisions] == list(range(10))


@pytest.mark.parametrize("value", [True, 2.5, "10", np.float64(10)])
def test_refresh_rejects_step_counts_that_are_not_integers(pipe, value):
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipe)
    with pytest.raises(dcb.ConfigError, match="num_inference_steps"):
        backend.refresh(pipe, value)


def test_enabling_a_backend_twice_is_a_lifecycle_error_not_a_config_error(pipe):
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipe)
    with pytest.raises(dcb.DitCacheError, match="already enabled") as error:
        backend.enable(pipe)
    assert not isinstance(error.value, dcb.ConfigError)


# -- the operations the plugins use ---------------------------------------------------------------


def test_request_records_hold_each_finished_request_and_the_running_one(pipe):
    backend = CacheDiTBackend(FLAT)
    backend.enable(pipe)
    backend.refresh(pipe, 12)
    run(pipe, 12)
    backend.refresh(pipe, 8)
    run(pipe, 8)
    first, second = backend.request_records()
    assert (first.num_inference_steps, second.num_inference_steps) == (12, 8)
    (context,) = first.contexts
    assert context.name == "transformer.transformer_blocks"
    assert context.steps == tuple(range(12))
    assert sorted(context.computed_steps + context.cached_steps) == list(range(12))
    assert context.cached_steps, "the trained tiny model caches at R0.12"
    assert second.contexts[0].steps == tuple(range(8))


def test_enable_all_enables_every_plan_or_none(pipe):
    other = tiny_flux_pipeline()
    good = EnablePlan(pipe.transformer, dcb.DBCacheConfig(Fn_compute_blocks=1))
    bad = EnablePlan(other.transformer, dcb.DBCacheConfig(Fn_compute_blocks=7))  # 6 blocks
    with pytest.raises(dcb.ConfigError, match="Fn_compute_blocks"):
        enable_all([good, bad])
    assert not is_cached(pipe.transformer) and not is_cached(other.transformer)
    assert enable_all([good]) == (pipe.transformer,)
    assert is_cached(pipe.transformer)


def test_an_enable_guard_wraps_each_plan_with_its_label(pipe):
    seen = []

    @contextlib.contextmanager
    def guard(plan):
        seen.append(plan.label)
        yield

    enable_all([EnablePlan(pipe.transformer, dcb.DBCacheConfig(Fn_compute_blocks=1), label="primary")], guard=guard)
    assert seen == ["primary"]


def test_refresh_target_keeps_the_enabled_mask_unless_one_is_given(pipe):
    mask = [1, 1, 0, 1, 0, 1, 1, 1]
    enable_all([EnablePlan(pipe.transformer, dcb.DBCacheConfig(Fn_compute_blocks=1, steps_computation_mask=mask))])
    refresh_target(pipe.transformer, 8)
    assert dcb.summary(pipe.transformer, logging=False)[0].cache_options["cache_config"].steps_computation_mask == mask
    refresh_target(pipe.transformer, 8, steps_computation_mask=None)
    assert dcb.summary(pipe.transformer, logging=False)[0].cache_options["cache_config"].steps_computation_mask is None


def test_request_mask_warns_and_gives_none_for_a_step_count_the_preset_cannot_describe(caplog):
    assert request_mask("fast", 5) is None
    assert "no mask for num_inference_steps=5" in caplog.text
    assert request_mask("fast", 12) == dcb.steps_mask(total_steps=12, mask_policy="fast")
    assert request_mask(None, 12) is None
    assert request_mask(None, 6, compute_bins=[2, 1], cache_bins=[1, 2]) == [1, 1, 0, 1, 0, 0]
