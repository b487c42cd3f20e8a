"""Coexistence with accelerate's and diffusers' module hooks (offloading), in either order."""

import pytest
import torch
from accelerate import cpu_offload_with_hook
from accelerate.hooks import (
    ModelHook,
    add_hook_to_module,
    attach_align_device_hook,
    remove_hook_from_module,
)
from diffusers.hooks import HookRegistry
from diffusers.hooks import ModelHook as DiffusersModelHook

import dit_cache_backend as dcb
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline

CONFIG = dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.12)


def generate(pipe, seed=0):
    with torch.no_grad():
        return pipe(**tiny_flux_inputs(3, num_inference_steps=10, seed=seed)).images


@pytest.fixture(scope="module")
def uncached():
    return generate(tiny_flux_pipeline())


@pytest.fixture(scope="module")
def cached():
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    return generate(pipe), dcb.summary(pipe, logging=False)[0].cached_steps


class CountingHook(ModelHook):
    def __init__(self):
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


# accelerate.cpu_offload() itself fails on this Flux on CPU (non-persistent buffers end up on the
# meta device, also without caching), so these use the two hooks that work here: CpuOffload, which
# diffusers' enable_model_cpu_offload installs, and AlignDevicesHook on every submodule, the shape
# of enable_sequential_cpu_offload.
def model_offload(module):
    cpu_offload_with_hook(module, execution_device=torch.device("cpu"))


def per_submodule_hooks(module):
    attach_align_device_hook(module, execution_device=torch.device("cpu"))


@pytest.mark.parametrize("install_hooks", [model_offload, per_submodule_hooks])
def test_accelerate_hooks_added_before_enabling_keep_caching_exact(cached, install_hooks):
    pipe = tiny_flux_pipeline()
    install_hooks(pipe.transformer)
    assert any(hasattr(m, "_hf_hook") for m in pipe.transformer.modules())
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    assert torch.equal(generate(pipe), cached[0])
    assert dcb.summary(pipe, logging=False)[0].cached_steps == cached[1]


@pytest.mark.parametrize("install_hooks", [model_offload, per_submodule_hooks])
def test_accelerate_hooks_added_after_enabling_keep_caching_exact(cached, install_hooks):
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    install_hooks(pipe.transformer)
    assert torch.equal(generate(pipe), cached[0])
    assert dcb.summary(pipe, logging=False)[0].cached_steps == cached[1]


def test_disabling_under_a_later_accelerate_hook_keeps_the_hook_and_stops_caching(uncached):
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    hook = CountingHook()
    add_hook_to_module(pipe.transformer, hook)
    dcb.disable_cache(pipe)
    assert torch.equal(generate(pipe), uncached)
    assert hook.calls == 10, "the accelerate hook still runs on every transformer call"
    remove_hook_from_module(pipe.transformer)
    assert torch.equal(generate(pipe), uncached)


class NoOpDiffusersHook(DiffusersModelHook):
    _is_stateful = False

    def __init__(self):
        super().__init__()
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


def register_diffusers_hook(module):
    hook = NoOpDiffusersHook()
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, "noop")
    return hook


def test_a_diffusers_hook_added_before_enabling_keeps_caching_exact(cached):
    pipe = tiny_flux_pipeline()
    hook = register_diffusers_hook(pipe.transformer)
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    assert torch.equal(generate(pipe), cached[0])
    assert hook.calls == 10


def test_a_diffusers_hook_added_after_enabling_survives_disable(cached, uncached):
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    hook = register_diffusers_hook(pipe.transformer)
    assert torch.equal(generate(pipe), cached[0])
    dcb.disable_cache(pipe)
    assert torch.equal(generate(pipe), uncached)
    assert hook.calls == 20
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(**CONFIG))
    assert torch.equal(generate(pipe), cached[0]), "caching can be enabled again"
