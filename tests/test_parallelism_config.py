"""parallelism_config in one process: what is refused, resolved and warned before torchrun matters,
and the cache-dit names of the scale-out API. The 2-rank runs are in test_context_parallel.py."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest

import dit_cache_backend as dcb
from dit_cache_backend.errors import ConfigError, NotSupportedYetError
from dit_cache_backend.scaleout import parallelism
from dit_cache_backend.session import session_of
from dit_cache_backend.tiny_model import tiny_flux_pipeline

SEEDS_YAML = Path(__file__).parent / "data" / "configs" / "sglang" / "legacy_parallel_config.yaml"
CACHE = dcb.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0)


@pytest.fixture(scope="module")
def cache_dit():
    return pytest.importorskip("cache_dit", reason="cache-dit 1.5.3 (the reference package) is not installed")


def test_seeds_yaml_loads_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="dit_cache_backend"):
        parallel = dcb.load_configs(SEEDS_YAML)["parallelism_config"]
    assert caplog.records == []
    assert parallel.ulysses_size == "auto"  # resolved when enabled, not when loaded
    assert parallel.attention_backend == "native"
    assert parallel.extra_parallel_modules == ["text_encoder", "vae"]


def test_outside_torchrun_the_error_says_to_launch_with_torchrun():
    pipe = tiny_flux_pipeline()
    with pytest.raises(ConfigError, match="torchrun") as info:
        dcb.enable_cache(pipe, **dcb.load_configs(SEEDS_YAML))
    assert info.value.key == "parallelism_config"
    assert session_of(pipe) is None and pipe.transformer._parallel_config is None


@pytest.mark.parametrize(
    "options, key",
    [
        ({"ulysses_size": 2, "tp_size": 2}, "tp_size"),
        ({"tp_size": "auto"}, "tp_size"),
        ({"ulysses_size": 2, "ulysses_float8": True}, "ulysses_float8"),
        ({"ulysses_size": 2, "ulysses_async": True}, "ulysses_async"),
        ({"ulysses_size": 2, "extra_parallel_kwargs": {"mesh": 1}}, "extra_parallel_kwargs"),
        ({"ulysses_size": 2, "use_ray": True}, "use_ray"),
    ],
)
def test_what_context_parallelism_cannot_do_is_refused_naming_what_works(options, key):
    pipe = tiny_flux_pipeline()
    with pytest.raises(NotSupportedYetError) as info:
        dcb.enable_cache(pipe, CACHE, parallelism_config=dcb.ParallelismConfig(**options))
    assert info.value.key == key
    assert "ulysses_size and/or ring_size" in str(info.value)
    assert session_of(pipe) is None


def test_extra_parallel_modules_warn_once_and_are_skipped(caplog):
    parallelism._warned_extra_modules.clear()
    config = dcb.ParallelismConfig(ulysses_size=2, extra_parallel_modules=["text_encoder", "vae"])
    with caplog.at_level(logging.WARNING, logger="dit_cache_backend"):
        for _ in range(2):
            with pytest.raises(ConfigError, match="torchrun"):
                dcb.enable_cache(tiny_flux_pipeline(), CACHE, parallelism_config=config)
    warnings = [r for r in caplog.records if "extra_parallel_modules" in r.getMessage()]
    assert len(warnings) == 1 and "'text_encoder', 'vae'" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "sizes, world, expected",
    [
        ({"ulysses_size": "auto"}, 4, (4, 1)),
        ({"ulysses_size": "auto", "ring_size": 2}, 4, (2, 2)),
        ({"ring_size": "auto", "ulysses_size": 2}, 8, (2, 4)),
        ({"ulysses_size": 2, "ring_size": 2}, 4, (2, 2)),
    ],
)
def test_auto_is_the_world_size_over_the_other_size(sizes, world, expected):
    assert parallelism._resolve_sizes(dcb.ParallelismConfig(**sizes), world) == expected


@pytest.mark.parametrize("sizes, world", [({"ulysses_size": 2}, 4), ({"ulysses_size": "auto"}, 1),
                                          ({"ulysses_size": "auto", "ring_size": 3}, 4)])
def test_sizes_that_do_not_fill_the_world_are_refused(sizes, world):
    with pytest.raises(ConfigError, match=f"world size \\({world}\\)"):
        parallelism._resolve_sizes(dcb.ParallelismConfig(**sizes), world)


def test_ulysses_must_divide_the_attention_heads_unless_ulysses_anything():
    transformer = tiny_flux_pipeline().transformer  # 2 heads
    with pytest.raises(ConfigError, match="2 attention heads"):
        parallelism._check_heads([transformer], 4, anything=False)
    parallelism._check_heads([transformer], 4, anything=True)
    parallelism._check_heads([transformer], 2, anything=False)


@pytest.mark.parametrize("name", ["load_parallelism_config", "load_quantize_config",
                                  "load_attn_backend_config", "set_attn_backend",
                                  "set_compile_configs"])
def test_scale_out_functions_have_cache_dits_parameters(cache_dit, name):
    ours = inspect.signature(getattr(dcb, name)).parameters
    theirs = inspect.signature(getattr(cache_dit, name)).parameters
    assert list(theirs) == [p for p in ours if p in theirs]
    assert all(ours[p].default == theirs[p].default for p in theirs if p != "kwargs")


@pytest.mark.parametrize("name", ["ParallelismBackend", "QuantizeBackend"])
def test_backend_enums_have_cache_dits_members(cache_dit, name):
    assert set(getattr(dcb, name).__members__) == set(getattr(cache_dit, name).__members__)


def test_section_loaders_read_one_section_each():
    source = {"cache_config": {}, "attention_backend": "_native_math",
              "parallelism_config": {"ring": 2}, "quantize_config": {"quant_type": "int8_weight_only"}}
    assert dcb.load_parallelism_config(source).ring_size == 2
    assert dcb.load_parallelism_config(source, check_only=True) is True
    assert dcb.load_quantize_config(source).quant_type == "int8_weight_only"
    assert dcb.load_attn_backend_config(source) == "_native_math"
    assert dcb.load_parallelism_config({"cache_config": {}}) is None
    assert dcb.ParallelismBackend.from_str("native_diffuser") is dcb.ParallelismBackend.CACHE_DIT
    assert dcb.QuantizeBackend.from_str("ao") == "TORCHAO"


def test_set_compile_configs_raises_dynamos_recompile_limits():
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    saved = (dynamo.recompile_limit, dynamo.accumulated_recompile_limit,
             inductor.coordinate_descent_tuning, inductor.fx_graph_cache)
    try:
        dcb.set_compile_configs(descent_tuning=False, use_fast_math=True)
        assert (dynamo.recompile_limit, dynamo.accumulated_recompile_limit) == (1024, 8192)
        assert inductor.coordinate_descent_tuning is False and inductor.fx_graph_cache is True
    finally:
        (dynamo.recompile_limit, dynamo.accumulated_recompile_limit,
         inductor.coordinate_descent_tuning, inductor.fx_graph_cache) = saved
