"""attention_backend on diffusers' attention dispatch: set per model, never process-wide, undone."""

from __future__ import annotations


import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

import dit_cache_backend as dcb
from dit_cache_backend.errors import ConfigError, NotSupportedYetError
from dit_cache_backend.scaleout.attention import _processors
from dit_cache_backend.session import session_of
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline

STEPS = 12
CACHE = {"cache_config": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "max_warmup_steps": 2,
                          "residual_diff_threshold": 0.2}}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def configs(**sections):
    return {**dcb.load_configs(CACHE), **sections}


def backends(model):
    return [processor._attention_backend for processor in _processors(model)]


def run(pipe):
    with torch.no_grad():
        return pipe(**tiny_flux_inputs(5, num_inference_steps=STEPS)).images


def test_the_private_registry_attribute_we_restore_exists():
    # diffusers 0.42.1 keeps the process default here; we save and restore it around each set.
    assert isinstance(_AttentionBackendRegistry._active_backend, AttentionBackendName)


def test_yaml_attention_backend_sets_every_processor_and_not_the_process_default():
    default = _AttentionBackendRegistry._active_backend
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, **dcb.load_configs({**CACHE, "attention_backend": "_native_math"}))
    assert set(backends(pipe.transformer)) == {AttentionBackendName("_native_math")}
    assert _AttentionBackendRegistry._active_backend is default
    other = tiny_flux_pipeline()  # a second model in the process is untouched
    assert set(backends(other.transformer)) == {None}


def test_disable_cache_restores_each_processors_previous_backend():
    pipe = tiny_flux_pipeline()
    processors = list(_processors(pipe.transformer))
    processors[0]._attention_backend = AttentionBackendName("_native_flash")  # set by the user
    before = backends(pipe.transformer)
    default = _AttentionBackendRegistry._active_backend
    dcb.enable_cache(pipe, **configs(attention_backend="_native_math"))
    dcb.disable_cache(pipe)
    assert backends(pipe.transformer) == before
    assert _AttentionBackendRegistry._active_backend is default


def test_caching_takes_the_same_decisions_and_is_exact_on_another_backend():
    reference = tiny_flux_pipeline()
    dcb.enable_cache(reference, **dcb.load_configs(CACHE))
    run(reference)
    default_steps = dcb.summary(reference, logging=False)[0].cached_steps
    uncached = tiny_flux_pipeline()
    dcb.set_attn_backend(uncached, attention_backend="_native_math")
    pipe = tiny_flux_pipeline()
    always = {"cache_config": {**CACHE["cache_config"], "residual_diff_threshold": 0.0}}
    dcb.enable_cache(pipe, **{**dcb.load_configs(always), "attention_backend": "_native_math"})
    assert torch.equal(run(pipe), run(uncached))  # every step computed: bit-exact
    dcb.disable_cache(pipe)
    dcb.enable_cache(pipe, **configs(attention_backend="_native_math"))
    run(pipe)
    assert dcb.summary(pipe, logging=False)[0].cached_steps == default_steps


def test_set_attn_backend_sets_the_transformer_without_changing_the_default():
    default = _AttentionBackendRegistry._active_backend
    pipe = tiny_flux_pipeline()
    dcb.set_attn_backend(pipe, attention_backend="flex")
    assert set(backends(pipe.transformer)) == {AttentionBackendName.FLEX}
    assert _AttentionBackendRegistry._active_backend is default
    dcb.set_attn_backend(pipe.transformer, attention_backend=None)  # None changes nothing
    assert set(backends(pipe.transformer)) == {AttentionBackendName.FLEX}


@pytest.mark.parametrize(
    "name, error, match",
    [
        ("flash", ConfigError, "flash-attn"),  # known to diffusers, package missing
        ("_flash_3", ConfigError, "Flash Attention 3"),
        ("sage", ConfigError, "sageattention"),
        ("flash_hub", ConfigError, "kernels"),  # would download a hub kernel
        ("_native_cudnn", ConfigError, "needs a GPU"),  # set would pass, the forward would fail
        ("sage3", NotSupportedYetError, "diffusers attention backend"),  # cache-dit's own kernel
        ("fastest", ConfigError, "diffusers attention backend"),
    ],
)
def test_backends_this_machine_cannot_run_fail_at_enable_time(name, error, match):
    pipe = tiny_flux_pipeline()
    with pytest.raises(error, match=match) as info:
        dcb.enable_cache(pipe, **configs(attention_backend=name))
    assert info.value.key == "attention_backend" and name in str(info.value)
    assert session_of(pipe) is None and set(backends(pipe.transformer)) == {None}


def test_an_invalid_section_leaves_the_attention_backend_alone():
    # Every section is checked before the first one is applied.
    pipe = tiny_flux_pipeline()
    with pytest.raises(ConfigError, match="torchrun"):
        dcb.enable_cache(pipe, **dcb.load_configs({**CACHE, "attention_backend": "_native_math",
                                                   "parallelism_config": {"ulysses_size": 2}}))
    assert session_of(pipe) is None and set(backends(pipe.transformer)) == {None}
