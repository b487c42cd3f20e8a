"""cache-dit's small public helpers, as this package provides them."""

from __future__ import annotations

import logging

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend import backend
from dit_cache_backend.errors import ConfigError
from dit_cache_backend.platforms import current_platform

from tiny_models import flux_call_kwargs, tiny_flux_pipeline


def test_the_serving_backend_is_exported_from_the_package():
    assert dcb.CacheDiTBackend is backend.CacheDiTBackend
    assert dcb.CUSTOM_DIT_ENABLERS is backend.CUSTOM_DIT_ENABLERS
    assert dcb.register_enabler is backend.register_enabler


def test_init_logger_returns_the_named_standard_logger():
    assert dcb.init_logger("my.app") is logging.getLogger("my.app")


def test_load_options_reads_the_legacy_flat_form():
    options = dcb.load_options({"Fn_compute_blocks": 2, "enable_taylorseer": True})
    assert options["cache_config"].Fn_compute_blocks == 2
    assert options["calibrator_config"].taylorseer_order == 1


def test_load_options_reads_the_nested_form():
    options = dcb.load_options({"cache_config": {"residual_diff_threshold": 0.2}})
    assert options["cache_config"].residual_diff_threshold == 0.2
    assert "calibrator_config" not in options


@pytest.mark.parametrize(
    "hint, expected",
    [("db", dcb.DBCache), ("DB_CACHE", dcb.DBCache), ("dbp", dcb.DBPrune), (None, dcb.NONE)],
)
def test_cache_type_reads_cache_dits_aliases(hint, expected):
    assert dcb.cache_type(hint) is expected


def test_cache_type_of_an_unknown_name_is_an_error_not_no_cache():
    with pytest.raises(ConfigError, match="cache_type"):
        dcb.cache_type("dbcahce")


@pytest.mark.parametrize(
    "args, expected",
    [((2, 10, 3), [0, 2, 5, 8, 9]), ((0, 8, 2), [0, 2, 4, 6, 7]), ((0, 8, 1), []), ((9, 8, 2), [])],
)
def test_block_range_adds_the_first_and_last_block(args, expected):
    assert dcb.block_range(*args) == expected


def test_supported_matrix_lists_every_supported_family():
    matrix = dcb.supported_matrix()
    assert matrix.splitlines()[0] == "| Model | Cache | Model | Cache |"
    for name in dcb.supported_pipelines()[1]:
        assert f"| {name} | ✅ |" in matrix


def test_disable_print_silences_print_inside_only(capsys):
    with dcb.disable_print():
        print("hidden")
    print("shown")
    assert capsys.readouterr().out == "shown\n"


def test_current_platform_on_a_cpu_machine_is_the_cpu():
    if torch.accelerator.is_available():
        pytest.skip("an accelerator is present")
    assert current_platform.device_type == "cpu"
    assert not current_platform.is_accelerator_available()
    assert current_platform.default_device() == torch.device("cpu")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _hooked(module: torch.nn.Module):
    return sorted(
        name
        for name, sub in module.named_modules()
        if "group_offloading" in getattr(getattr(sub, "_diffusers_hook", None), "hooks", {})
    )


def test_layerwise_offload_hooks_every_leaf_layer_and_keeps_outputs():
    model, inputs = _model(), torch.randn(3, 4)
    expected = model(inputs)
    handle = dcb.layerwise_cpu_offload(model, onload_device="cpu")
    assert _hooked(model) == ["0", "2"]
    assert torch.equal(model(inputs), expected)
    assert dcb.get_layerwise_offload_handles(model) == (handle,)


def test_remove_layerwise_offload_takes_every_hook_off():
    model = _model()
    dcb.layerwise_offload(model, onload_device="cpu", offload_device="cpu")
    assert dcb.remove_layerwise_offload(model) == 1
    assert _hooked(model) == []
    assert dcb.get_layerwise_offload_handles(model) == ()


def test_layerwise_offload_of_named_submodules_hooks_only_those():
    model = _model()
    dcb.layerwise_cpu_offload(model, module_names=["2"], onload_device="cpu")
    assert _hooked(model) == ["2"]


def test_layerwise_offload_of_a_pipeline_gives_one_handle_per_component():
    pipe = tiny_flux_pipeline()
    group = dcb.layerwise_cpu_offload(pipe, module_names=["transformer"], onload_device="cpu")
    assert group.module_names == ["transformer"] and len(group) == 1
    assert pipe(**flux_call_kwargs(2)).images.shape[0] == 1
    assert dcb.remove_layerwise_offload(pipe) == 1


@pytest.mark.parametrize(
    "option, value", [("persistent_buckets", 2), ("output_device", "cpu"), ("eager_offload", False)]
)
def test_a_cache_dit_only_offload_option_is_refused_by_name(option, value):
    model = _model()
    with pytest.raises(NotImplementedError, match=option):
        dcb.layerwise_cpu_offload(model, onload_device="cpu", **{option: value})
    assert _hooked(model) == []
