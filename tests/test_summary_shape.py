"""summary() and strify() return what cache-dit 1.5.3 returns: entry count, order, and settings.

Each test runs on both engines (ours, and the reference cache-dit when installed), with the
expected values written out, so a change in either engine shows up as a failure.
"""

from __future__ import annotations

import pytest
import torch

from engines import ENGINE_NAMES, load_engine
from tiny_models import (
    flux_call_kwargs,
    tiny_flux_pipeline,
    tiny_wan_pipeline,
    wan_call_kwargs,
)


@pytest.fixture(params=ENGINE_NAMES)
def engine(request):
    return load_engine(request.param)


def thresholds(entries):
    return [entry.cache_options["cache_config"].residual_diff_threshold for entry in entries]


def max_cached(entries):
    return [entry.cache_options["cache_config"].max_cached_steps for entry in entries]


def test_pipeline_mode_with_one_concatenated_list_returns_one_entry(engine):
    cd = engine.module
    pipe = tiny_flux_pipeline()
    cd.enable_cache(
        pipe,
        cache_config=cd.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=2
        ),
    )
    pipe(**flux_call_kwargs(8))
    entries = cd.summary(pipe, logging=False)
    assert len(entries) == 1
    assert entries[0].cached_steps == [2, 3, 4, 6, 7]
    assert cd.strify(pipe) == "DBCache_F1B0_W2I1M0MC0_R0.5_CFG0_T0O0_S5"


def _two_list_flux(cd):
    pipe = tiny_flux_pipeline()
    transformer = pipe.transformer
    cd.enable_cache(
        cd.BlockAdapter(
            pipe=None,
            transformer=transformer,
            blocks=[transformer.transformer_blocks, transformer.single_transformer_blocks],
            forward_pattern=[cd.ForwardPattern.Pattern_1, cd.ForwardPattern.Pattern_1],
        ),
        cache_config=cd.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2, num_inference_steps=8
        ),
        params_modifiers=[
            cd.ParamsModifier(cache_config=cd.DBCacheConfig().reset(residual_diff_threshold=0.08)),
            cd.ParamsModifier(cache_config=cd.DBCacheConfig().reset(residual_diff_threshold=0.24)),
        ],
    )
    return pipe


def test_two_block_lists_come_in_attribute_name_order_then_the_transformer(engine):
    pipe = _two_list_flux(engine.module)
    entries = engine.module.summary(pipe.transformer, logging=False)
    # single_transformer_blocks (0.24), transformer_blocks (0.08), the transformer (first list's).
    assert thresholds(entries) == [0.24, 0.08, 0.08]


def test_strify_of_two_block_lists_reports_the_first_lists_threshold(engine):
    pipe = _two_list_flux(engine.module)
    assert engine.module.strify(pipe.transformer) == "DBCache_F1B0_W2I1M0MC0_R0.08_N8_CFG0_T0O0"


def _wan22(cd):
    pipe = tiny_wan_pipeline(two_experts=True)
    adapter = cd.BlockAdapter(
        transformer=[pipe.transformer, pipe.transformer_2],
        blocks=[pipe.transformer.blocks, pipe.transformer_2.blocks],
        forward_pattern=[cd.ForwardPattern.Pattern_2, cd.ForwardPattern.Pattern_2],
        params_modifiers=[
            cd.ParamsModifier(cache_config=cd.DBCacheConfig().reset(max_warmup_steps=1, max_cached_steps=2)),
            cd.ParamsModifier(cache_config=cd.DBCacheConfig().reset(max_warmup_steps=1, max_cached_steps=3)),
        ],
        has_separate_cfg=True,
    )
    cd.enable_cache(
        adapter,
        cache_config=cd.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5
        ),
    )
    cd.refresh_context(pipe.transformer, num_inference_steps=4, verbose=False)
    cd.refresh_context(pipe.transformer_2, num_inference_steps=4, verbose=False)
    pipe(**wan_call_kwargs(8))
    return pipe, adapter


@pytest.fixture
def wan22(engine):
    return (engine.module, *_wan22(engine.module))


def test_two_transformers_of_a_pipeline_give_lists_then_transformers(wan22):
    cd, pipe, _ = wan22
    entries = cd.summary(pipe, logging=False)
    assert max_cached(entries) == [2, 3, 2, 3]
    assert [entry.cached_steps for entry in entries] == [[1, 2], [1, 2, 3], [1, 2], [1, 2, 3]]


def test_strify_of_one_transformer_describes_that_transformer(wan22):
    cd, pipe, _ = wan22
    assert cd.strify(pipe.transformer) == "DBCache_F1B0_W1I1M2MC0_R0.5_N4_CFG1_T0O0_S2"
    assert cd.strify(pipe.transformer_2) == "DBCache_F1B0_W1I1M3MC0_R0.5_N4_CFG1_T0O0_S3"


def test_strify_of_the_pipeline_describes_its_last_transformer(wan22):
    cd, pipe, _ = wan22
    assert cd.strify(pipe) == "DBCache_F1B0_W1I1M3MC0_R0.5_N4_CFG1_T0O0_S3"


def test_summary_of_an_adapter_has_one_entry_per_transformer(wan22):
    cd, _, adapter = wan22
    assert max_cached(cd.summary(adapter, logging=False)) == [2, 3]


def test_summary_and_strify_take_cache_dits_keyword(wan22):
    cd, pipe, _ = wan22
    assert len(cd.summary(adapter_or_others=pipe, logging=False)) == 4
    assert cd.strify(adapter_or_others=pipe.transformer).endswith("_S2")


def test_summary_of_an_uncached_module_is_one_empty_entry(engine):
    entries = engine.module.summary(torch.nn.Linear(2, 2), logging=False)
    assert entries == [engine.module.summary(None, logging=False)[0]]
    assert entries[0].cache_options == {} and entries[0].cached_steps == []
    assert engine.module.strify(torch.nn.Linear(2, 2)) == ""


def test_contexts_summary_lists_every_context_in_caching_order():
    ours = load_engine("ours").module
    pipe = _two_list_flux(ours)
    entries = ours.contexts_summary(pipe.transformer)
    assert [entry.name for entry in entries] == [
        "transformer.transformer_blocks",
        "transformer.single_transformer_blocks",
    ]
    assert thresholds(entries) == [0.08, 0.24]


@pytest.mark.parametrize(
    "name, flags",
    [
        ("Pattern_0", (True, False, False)),
        ("Pattern_1", (False, False, False)),
        ("Pattern_2", (False, True, False)),
        ("Pattern_3", (False, True, True)),
        ("Pattern_4", (True, False, True)),
        ("Pattern_5", (False, False, True)),
    ],
)
def test_forward_pattern_flags_are_cache_dits(engine, name, flags):
    pattern = engine.module.ForwardPattern[name]
    assert (pattern.Return_H_First, pattern.Return_H_Only, pattern.Forward_H_only) == flags


def test_db_prune_config_is_a_basic_cache_config_but_not_a_db_cache_config(engine):
    cd = engine.module
    assert isinstance(cd.DBPruneConfig(), cd.BasicCacheConfig)
    assert not isinstance(cd.DBPruneConfig(), cd.DBCacheConfig)


@pytest.mark.parametrize(
    "options, tag",
    [
        ({"ulysses_size": 2}, "Ulysses2"),
        ({"ring_size": 2}, "Ring2"),
        ({"ulysses_size": 2, "ring_size": 2, "ulysses_anything": True}, "Ulysses2_Ring2_UAA"),
        ({"ulysses_size": 2, "ulysses_float8": True}, "Ulysses2_UF8"),
    ],
)
def test_parallelism_config_strify_gives_cache_dits_tag(engine, options, tag):
    assert engine.module.ParallelismConfig(**options).strify() == tag
    assert engine.module.ParallelismConfig(**options).strify(text_encoder=True) == tag + "_TEP"


@pytest.mark.parametrize(
    "options, tag",
    [
        ({"quant_type": "Float8_Weight_Only"}, "float8_weight_only"),
        (
            {
                "quant_type": "int8_weight_only",
                "components_to_quantize": {"transformer": {"quant_type": "float8_weight_only"}, "text_encoder": {}},
            },
            "<transformer:float8_weight_only><text_encoder:int8_weight_only>",
        ),
    ],
)
def test_quantize_config_strify_gives_cache_dits_tag(engine, options, tag):
    assert engine.module.QuantizeConfig(**options).strify() == tag


def test_strify_of_a_dict_with_every_section_joins_their_tags(engine):
    options = {
        "cache_config": {"residual_diff_threshold": 0.1},
        "parallelism_config": {"ulysses_size": 2},
        "quantize_config": {"quant_type": "float8_weight_only"},
    }
    assert engine.module.strify(options) == "DBCache_F8B0_W8I1M0MC0_R0.1_T0O0_Ulysses2_float8_weight_only"
