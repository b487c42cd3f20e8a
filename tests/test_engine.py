"""Exactness and bad input on a real diffusers pipeline (the trained tiny Flux)."""

import copy
import json

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline

STEPS = 12


def generate(pipe, steps=STEPS, seed=0):
    with torch.no_grad():
        return pipe(**tiny_flux_inputs(2, num_inference_steps=steps, seed=seed)).images


def caching(**fields):
    base = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2, residual_diff_threshold=0.2)
    return dcb.DBCacheConfig(**{**base, **fields})


@pytest.fixture(scope="module")
def reference():
    return generate(tiny_flux_pipeline())


@pytest.fixture()
def pipe():
    return tiny_flux_pipeline()


def record_transformer_calls(transformer):
    """(inputs, output) of every transformer call, deep-copied."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append((copy.deepcopy(args), copy.deepcopy(kwargs), output[0].clone()))

    return calls, transformer.register_forward_hook(hook, with_kwargs=True)


def test_threshold_zero_is_bit_identical_to_the_uncached_pipeline(pipe, reference):
    dcb.enable_cache(pipe, cache_config=caching(residual_diff_threshold=0.0))
    assert torch.equal(generate(pipe), reference)
    assert dcb.summary(pipe, logging=False)[0].cached_steps == []


def test_an_all_ones_mask_is_bit_identical_to_the_uncached_pipeline(pipe, reference):
    config = caching(residual_diff_threshold=0.99, steps_computation_mask=[1] * STEPS)
    dcb.enable_cache(pipe, cache_config=config)
    assert torch.equal(generate(pipe), reference)


def test_every_computed_step_is_bit_identical_to_the_uncached_transformer(pipe):
    uncached = copy.deepcopy(pipe.transformer)
    dcb.enable_cache(pipe, cache_config=caching())
    calls, handle = record_transformer_calls(pipe.transformer)
    generate(pipe)
    handle.remove()
    stats = dcb.summary(pipe, logging=False)[0]
    computed = [d.step for d in stats.decisions if not d.cached]
    assert stats.cached_steps and computed, "the trace must contain both kinds of step"
    with torch.no_grad():
        for step, (args, kwargs, output) in enumerate(calls):
            expected = uncached(*args, **kwargs)[0]
            assert torch.equal(output, expected) == (step in computed), f"step {step}"


def test_disable_restores_forward_module_tree_and_outputs_exactly(pipe, reference):
    transformer = pipe.transformer
    modules_before = [(name, type(m)) for name, m in transformer.named_modules()]
    keys_before = list(transformer.state_dict())
    pipe_class = type(pipe)
    dcb.enable_cache(pipe, cache_config=caching())
    generate(pipe)
    dcb.disable_cache(pipe)
    assert "forward" not in vars(transformer) and "cache_context" not in vars(transformer)
    assert type(pipe) is pipe_class
    assert [(name, type(m)) for name, m in transformer.named_modules()] == modules_before
    assert list(transformer.state_dict()) == keys_before
    assert torch.equal(generate(pipe), reference)


def test_state_dict_keys_never_change_while_caching(pipe):
    keys_before = list(pipe.transformer.state_dict())
    seen = []
    dcb.enable_cache(pipe, cache_config=caching())
    block = pipe.transformer.single_transformer_blocks[-1]
    handle = block.register_forward_hook(lambda *_: seen.append(list(pipe.transformer.state_dict())))
    generate(pipe)
    handle.remove()
    assert list(pipe.transformer.state_dict()) == keys_before
    assert seen and all(keys == keys_before for keys in seen)


def test_the_pipeline_keeps_its_class_name_for_framework_registries(pipe):
    dcb.enable_cache(pipe, cache_config=caching())
    assert type(pipe).__name__ == "FluxPipeline"
    assert isinstance(pipe, type(tiny_flux_pipeline()))


def test_a_sibling_pipeline_of_the_same_class_is_not_affected(pipe, reference):
    sibling = tiny_flux_pipeline()
    dcb.enable_cache(pipe, cache_config=caching())
    generate(pipe)
    assert torch.equal(generate(sibling), reference)
    assert dcb.contexts_summary(sibling) == []


def test_every_pipeline_call_starts_from_fresh_state(pipe):
    dcb.enable_cache(pipe, cache_config=caching())
    first = generate(pipe, seed=1)
    first_steps = dcb.summary(pipe, logging=False)[0].cached_steps
    generate(pipe, seed=2)
    again = generate(pipe, seed=1)
    assert torch.equal(first, again)
    assert dcb.summary(pipe, logging=False)[0].cached_steps == first_steps


def test_enabling_twice_is_an_error_that_says_what_to_do(pipe):
    dcb.enable_cache(pipe, cache_config=caching())
    with pytest.raises(dcb.DitCacheError, match="disable_cache"):
        dcb.enable_cache(pipe, cache_config=caching())


def test_strify_tags_the_run_like_cache_dit(pipe):
    dcb.enable_cache(pipe, cache_config=caching(max_continuous_cached_steps=3),
                     calibrator_config=dcb.TaylorSeerCalibratorConfig(taylorseer_order=1))
    generate(pipe)
    cached = len(dcb.summary(pipe, logging=False)[0].cached_steps)
    assert dcb.strify(pipe) == f"DBCache_F1B0_W2I1M0MC3_R0.2_CFG0_T1O1_S{cached}"


# -- bad input: one clear error, model untouched -------------------------------------------------


def assert_untouched(pipe, pipe_class):
    assert type(pipe) is pipe_class
    assert "forward" not in vars(pipe.transformer)
    assert dcb.contexts_summary(pipe) == []


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"Fn_compute_blocks": 0}, "Fn_compute_blocks"),
        ({"Fn_compute_blocks": -1}, "Fn_compute_blocks"),
        ({"Fn_compute_blocks": 1.5}, "Fn_compute_blocks"),
        ({"Bn_compute_blocks": -2}, "Bn_compute_blocks"),
        ({"residual_diff_threshold": "high"}, "residual_diff_threshold"),
        ({"steps_computation_policy": "sometimes"}, "steps_computation_policy"),
    ],
)
def test_invalid_config_values_name_the_key(fields, key):
    with pytest.raises(dcb.ConfigError, match=key):
        caching(**fields)


def test_front_and_back_blocks_larger_than_the_block_list_fail_before_touching_the_model(pipe):
    pipe_class = type(pipe)
    with pytest.raises(dcb.ConfigError, match="Bn_compute_blocks") as info:
        dcb.enable_cache(pipe, cache_config=caching(Fn_compute_blocks=4, Bn_compute_blocks=3))
    assert "6 blocks" in str(info.value)
    assert_untouched(pipe, pipe_class)


def test_more_front_blocks_than_the_list_has_fail_before_touching_the_model(pipe):
    pipe_class = type(pipe)
    with pytest.raises(dcb.ConfigError, match="Fn_compute_blocks"):
        dcb.enable_cache(pipe, cache_config=caching(Fn_compute_blocks=7))
    assert_untouched(pipe, pipe_class)


def test_a_mask_shorter_than_the_steps_fails_before_touching_the_model(pipe):
    pipe_class = type(pipe)
    config = caching(num_inference_steps=12, steps_computation_mask=[1, 1, 0, 1])
    with pytest.raises(dcb.ConfigError, match="steps_computation_mask"):
        dcb.enable_cache(pipe, cache_config=config)
    assert_untouched(pipe, pipe_class)


def test_an_unknown_shorthand_key_suggests_the_closest_one(pipe):
    pipe_class = type(pipe)
    with pytest.raises(dcb.UnknownKeyError, match="did you mean 'max_warmup_steps'"):
        dcb.enable_cache(pipe, max_warmpu_steps=2)
    assert_untouched(pipe, pipe_class)


def test_a_wrong_config_type_is_rejected(pipe):
    with pytest.raises(dcb.ConfigError, match="cache_config"):
        dcb.enable_cache(pipe, cache_config={"Fn_compute_blocks": 1})


def test_an_unknown_preset_is_rejected():
    with pytest.raises(dcb.ConfigError, match="mask_policy"):
        dcb.steps_mask(total_steps=28, mask_policy="turbo")


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("cache_config:\n  Fn_compute_blocks: [1\n")
    with pytest.raises(dcb.ConfigError, match="broken.yaml"):
        dcb.load_configs(str(path))


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"cache_config": {"Fn_compute_blocks": 1,,}}')
    with pytest.raises(dcb.ConfigError, match="broken.json"):
        dcb.load_configs(str(path))


def test_a_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        dcb.load_configs(str(tmp_path / "nope.yaml"))


def test_a_valid_json_config_enables_caching(pipe, tmp_path):
    path = tmp_path / "cache.json"
    path.write_text(json.dumps({"cache_config": {"Fn_compute_blocks": 1, "max_warmup_steps": 2,
                                                 "residual_diff_threshold": 0.2}}))
    dcb.enable_cache(pipe, **dcb.load_configs(str(path)))
    generate(pipe)
    assert dcb.summary(pipe, logging=False)[0].cached_steps


def test_an_unregistered_model_error_says_how_to_pass_a_block_adapter():
    class Mystery(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(dcb.UnsupportedModelError, match="BlockAdapter"):
        dcb.enable_cache(Mystery())
