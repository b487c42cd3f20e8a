"""quantize_config on torchao's quantize_: cache-dit's names, regional filter, checks before changes."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest
import torch

pytest.importorskip(
    "torchao", reason="quantize_config needs torchao: pip install 'dit_cache_backend[quantize]'"
)

import dit_cache_backend as dcb  # noqa: E402
from dit_cache_backend.errors import ConfigError, NotSupportedYetError  # noqa: E402
from dit_cache_backend.scaleout import quantization  # noqa: E402
from dit_cache_backend.session import session_of  # noqa: E402
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline  # noqa: E402

STEPS = 12
CACHE = {"cache_config": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "max_warmup_steps": 2,
                          "residual_diff_threshold": 0.2}}
CPU_TYPES = ["int8_weight_only", "int8_per_row", "int8_per_tensor", "float8_weight_only"]
WEIGHT_CLASS = {"int8_weight_only": "Int8Tensor", "float8_weight_only": "Float8Tensor"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(pipe) -> torch.Tensor:
    with torch.no_grad():
        return pipe(**tiny_flux_inputs(2, num_inference_steps=STEPS)).images


def quantized_pipeline(quant_type: str):
    """A pipeline quantized exactly as quantize_config does it, without any cache."""
    pipe = tiny_flux_pipeline()
    config = dcb.QuantizeConfig(quant_type=quant_type)
    quantization.apply(quantization.plan(config, [pipe.transformer]))
    return pipe


def record_calls(transformer: torch.nn.Module) -> Tuple[List[Any], Any]:
    calls: List[Any] = []

    def hook(module, args, kwargs, output):
        calls.append(({k: v for k, v in kwargs.items()}, output))

    return calls, transformer.register_forward_hook(hook, with_kwargs=True)


def cache_configs(**extra: Any) -> Dict[str, Any]:
    return {**dcb.load_configs(CACHE), **extra}


def cached_with_order(quant_type: str, order: str):
    if order == "cache_then_quantize":
        pipe = tiny_flux_pipeline()
        dcb.enable_cache(pipe, **cache_configs(quantize_config=dcb.QuantizeConfig(quant_type=quant_type)))
    else:
        pipe = quantized_pipeline(quant_type)
        dcb.enable_cache(pipe, **cache_configs())
    return pipe


@pytest.mark.parametrize("order", ["cache_then_quantize", "quantize_then_cache"])
@pytest.mark.parametrize("quant_type", CPU_TYPES)
def test_computed_steps_are_bit_exact_with_the_uncached_quantized_model(quant_type, order):
    pipe = cached_with_order(quant_type, order)
    calls, handle = record_calls(pipe.transformer)
    run(pipe)
    handle.remove()
    stats = dcb.summary(pipe, logging=False)[0]
    assert stats.cached_steps  # the cache does skip steps on the quantized model
    reference = quantized_pipeline(quant_type).transformer
    computed = [i for i, d in enumerate(stats.decisions) if not d.cached]
    assert len(calls) == len(stats.decisions)
    with torch.no_grad():
        for index in computed:
            kwargs, output = calls[index]
            expected = reference(**kwargs)
            assert torch.equal(output[0], expected[0]), f"step {index}"


@pytest.mark.parametrize("quant_type", CPU_TYPES)
def test_threshold_zero_on_a_quantized_model_equals_the_uncached_quantized_run(quant_type):
    expected = run(quantized_pipeline(quant_type))
    pipe = tiny_flux_pipeline()
    configs = dcb.load_configs({"cache_config": {**CACHE["cache_config"], "residual_diff_threshold": 0.0},
                                "quantize_config": {"quant_type": quant_type}})
    dcb.enable_cache(pipe, **configs)
    assert torch.equal(run(pipe), expected)
    dcb.disable_cache(pipe)  # the model stays quantized, as in cache-dit
    assert torch.equal(run(pipe), expected)


@pytest.mark.parametrize("quant_type", ["int8_weight_only", "float8_weight_only"])
def test_yaml_quantizes_the_block_linears_and_leaves_the_embedders(quant_type):
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, **dcb.load_configs({**CACHE, "quantize_config": {"quant_type": quant_type}}))
    transformer = pipe.transformer
    block = transformer.transformer_blocks[0]
    assert type(block.attn.to_q.weight).__name__ == WEIGHT_CLASS[quant_type]
    assert type(transformer.single_transformer_blocks[0].proj_out.weight).__name__ == WEIGHT_CLASS[quant_type]
    assert type(transformer.x_embedder.weight) is torch.nn.Parameter  # outside the repeated blocks
    assert type(transformer.proj_out.weight) is torch.nn.Parameter


def snapshot(pipe) -> Dict[str, Any]:
    transformer = pipe.transformer
    return {
        "weights": {k: (type(v), v.clone()) for k, v in transformer.state_dict().items()},
        "forward": transformer.__dict__.get("forward"),
        "session": session_of(pipe),
        "pipeline_class": type(pipe),
    }


def assert_unchanged(pipe, before: Dict[str, Any]) -> None:
    after = snapshot(pipe)
    assert after["forward"] is before["forward"] and after["session"] is None
    assert after["pipeline_class"] is before["pipeline_class"]
    assert after["weights"].keys() == before["weights"].keys()
    for key, (kind, value) in before["weights"].items():
        assert after["weights"][key][0] is kind and torch.equal(after["weights"][key][1], value)


@pytest.mark.parametrize(
    "quant_type, error, reason",
    [
        ("float8_per_row", ConfigError, "8.9"),
        ("float8_per_tensor", ConfigError, "8.9"),
        ("float8_per_block", ConfigError, "8.9"),
        ("int4_weight_only", ConfigError, "int4"),
        ("nvfp4", ConfigError, "Blackwell"),
        ("nvfp4_weight_only", ConfigError, "Blackwell"),
        ("svdq_int4_r32", NotSupportedYetError, "torchao quant_type"),
    ],
)
def test_types_this_cpu_cannot_run_are_refused_before_anything_changes(quant_type, error, reason):
    pipe = tiny_flux_pipeline()
    before = snapshot(pipe)
    with pytest.raises(error, match=reason) as info:
        dcb.enable_cache(pipe, **cache_configs(quantize_config=dcb.QuantizeConfig(quant_type=quant_type)))
    assert quant_type in str(info.value)
    if error is ConfigError:
        # names what runs here
        assert "on cpu: float8_weight_only, int8_per_row, int8_per_tensor, int8_weight_only" in str(info.value)
    assert_unchanged(pipe, before)


@pytest.mark.parametrize("field, value", [("precision_plan", {"attn": "int8_weight_only"}),
                                          ("serialize_to", "/tmp/q")])
def test_cache_dit_only_quantize_fields_are_refused(field, value):
    pipe = tiny_flux_pipeline()
    before = snapshot(pipe)
    config = dcb.QuantizeConfig(quant_type="int8_weight_only", **{field: value})
    with pytest.raises(NotSupportedYetError, match=field):
        dcb.enable_cache(pipe, **cache_configs(quantize_config=config))
    assert_unchanged(pipe, before)


def test_a_failure_while_quantizing_uninstalls_the_cache():
    def broken_filter(module, name):
        raise RuntimeError("filter failed")

    pipe = tiny_flux_pipeline()
    before = snapshot(pipe)
    config = dcb.QuantizeConfig(quant_type="int8_weight_only", filter_fn=broken_filter)
    with pytest.raises(RuntimeError, match="filter failed"):
        dcb.enable_cache(pipe, **cache_configs(quantize_config=config, attention_backend="_native_math"))
    assert_unchanged(pipe, before)
    from dit_cache_backend.scaleout.attention import _processors

    assert {p._attention_backend for p in _processors(pipe.transformer)} == {None}


def test_re_enabling_with_the_same_type_keeps_the_quantized_weights():
    pipe = tiny_flux_pipeline()
    configs = cache_configs(quantize_config=dcb.QuantizeConfig(quant_type="int8_weight_only"))
    dcb.enable_cache(pipe, **configs)
    dcb.disable_cache(pipe)
    weight = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    dcb.enable_cache(pipe, **configs)
    assert pipe.transformer.transformer_blocks[0].attn.to_q.weight is weight


def test_re_quantizing_with_another_type_is_refused():
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, **cache_configs(quantize_config=dcb.QuantizeConfig(quant_type="int8_weight_only")))
    dcb.disable_cache(pipe)
    with pytest.raises(ConfigError, match="already quantized"):
        dcb.enable_cache(pipe, **cache_configs(quantize_config=dcb.QuantizeConfig(quant_type="int8_per_row")))
    assert session_of(pipe) is None


def test_float8_per_row_needs_bfloat16_weights():
    # On CPU the device check refuses float8_per_row first; the dtype rule holds on every device.
    transformer = tiny_flux_pipeline().transformer
    with pytest.raises(ConfigError, match="bfloat16"):
        quantization.check_dtype("float8_per_row", "quant_type", [transformer])
    quantization.check_dtype("float8_per_row", "quant_type", [transformer.to(torch.bfloat16)])


def test_components_to_quantize_names_pipeline_components():
    pipe = tiny_flux_pipeline()
    with pytest.raises(ConfigError, match="components_to_quantize"):
        dcb.enable_cache(pipe, **cache_configs(quantize_config=dcb.QuantizeConfig(
            quant_type="int8_weight_only", components_to_quantize=["text_encoder"])))  # None here
    dcb.enable_cache(pipe, **cache_configs(quantize_config=dcb.QuantizeConfig(
        quant_type="int8_weight_only", components_to_quantize={"vae": {"quant_type": "int8_per_row"}})))
    vae_linears = [m for m in pipe.vae.modules() if isinstance(m, torch.nn.Linear)]
    assert vae_linears and all(type(m.weight).__name__ == "Int8Tensor" for m in vae_linears)
