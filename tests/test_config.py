"""Tests of dit_cache_backend.config: config objects, validation, strify and the YAML/JSON loader.

Parity tests compare against the real cache-dit 1.5.3 and are skipped when it is not installed.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from dit_cache_backend.config import (
    BasicCacheConfig,
    CacheType,
    CalibratorConfig,
    ConfigFileNotFoundError,
    DBCacheConfig,
    DBPruneConfig,
    DMDCalibratorConfig,
    FoCaCalibratorConfig,
    ParallelismConfig,
    QuantizeConfig,
    TaylorSeerCalibratorConfig,
    load_cache_config,
    load_configs,
)
from dit_cache_backend.errors import (
    ConfigError,
    UnknownKeyError,
)

CONFIGS = Path(__file__).parent / "data" / "configs"
SGLANG = CONFIGS / "sglang"
FAST_28 = "1111110100010000100000100001"  # cache-dit's steps_mask(total_steps=28, "fast")
SGLANG_CACHE_TAG = "DBCache_F1B0_W8I2M0MC2_R0.12"  # the cache_config shared by SGLang's examples


@pytest.fixture(scope="module")
def cache_dit():
    return pytest.importorskip(
        "cache_dit", reason="cache-dit 1.5.3 (the reference package) is not installed"
    )


def _digits(mask):
    return "".join(str(flag) for flag in mask)


def _normalized(as_dict):
    """as_dict() with enums replaced by their values, to compare with cache-dit's dataclasses."""
    return {k: (v.value if hasattr(v, "value") else v) for k, v in as_dict.items()}


# --------------------------------------------------------------------------------------------------
# Defaults and field names equal cache-dit's
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("DBCacheConfig", "DBCacheConfig"),
        ("DBPruneConfig", "DBPruneConfig"),
        ("CalibratorConfig", "CalibratorConfig"),
        ("TaylorSeerCalibratorConfig", "TaylorSeerCalibratorConfig"),
    ],
)
def test_defaults_equal_cache_dit_field_by_field(cache_dit, ours, theirs):
    import dit_cache_backend.config as config

    mine = _normalized(getattr(config, ours)().as_dict())
    reference = _normalized(dataclasses.asdict(getattr(cache_dit, theirs)()))
    assert list(mine) == list(reference)
    for name in reference:
        assert mine[name] == reference[name], name


@pytest.mark.parametrize("name", ["ParallelismConfig", "QuantizeConfig"])
def test_section_classes_accept_every_public_cache_dit_field(cache_dit, name):
    import dit_cache_backend.config as config

    fields = dataclasses.fields(getattr(cache_dit, name))
    public = [f.name for f in fields if not f.name.startswith("_")]
    assert [f.name for f in dataclasses.fields(getattr(config, name))] == public


def test_quantize_config_defaults_equal_cache_dit_apart_from_resolved_backend(cache_dit):
    reference = cache_dit.QuantizeConfig.__dataclass_fields__
    mine = QuantizeConfig()
    for name, field in reference.items():
        if name == "backend":
            continue
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = field.default
        assert getattr(mine, name) == default, name
    assert mine.backend == "TORCHAO"  # cache-dit resolves AUTO the same way for non-svdq types


def test_db_cache_and_db_prune_configs_are_siblings_under_basic_cache_config():
    # As in cache-dit: DBCacheConfig and DBPruneConfig both derive from BasicCacheConfig.
    assert issubclass(DBCacheConfig, BasicCacheConfig)
    assert isinstance(DBPruneConfig(), BasicCacheConfig)
    assert not isinstance(DBPruneConfig(), DBCacheConfig)


# --------------------------------------------------------------------------------------------------
# strify
# --------------------------------------------------------------------------------------------------

STRIFY_CASES = [
    {},
    {"Fn_compute_blocks": 1, "Bn_compute_blocks": 2, "residual_diff_threshold": 0.3},
    {"residual_diff_threshold": 0.12, "max_cached_steps": 5, "max_continuous_cached_steps": 2},
    {"residual_diff_threshold": 1, "max_warmup_steps": 0, "warmup_interval": 3},
    {"residual_diff_threshold": 0.1 + 0.2},
    {"num_inference_steps": 28},
    {"enable_separate_cfg": True},
    {"enable_separate_cfg": False, "num_inference_steps": 6, "residual_diff_threshold": 0.3},
    {"force_refresh_step_hint": 10},
    {"force_refresh_step_hint": 4, "force_refresh_step_policy": "repeat"},
    {"steps_computation_mask": [1, 1, 0, 1], "steps_computation_policy": "static"},
    {
        "steps_computation_mask": [int(c) for c in FAST_28],
        "num_inference_steps": 28,
        "force_refresh_step_hint": 14,
        "enable_separate_cfg": True,
        "max_continuous_cached_steps": 3,
    },
]


@pytest.mark.parametrize("kwargs", STRIFY_CASES, ids=lambda kw: ",".join(kw) or "defaults")
def test_strify_equals_cache_dit(cache_dit, kwargs):
    assert DBCacheConfig(**kwargs).strify() == cache_dit.DBCacheConfig(**kwargs).strify()


def test_strify_of_tensor_threshold_equals_cache_dit(cache_dit):
    threshold = torch.tensor(0.08)
    ours = DBCacheConfig(residual_diff_threshold=threshold).strify()
    assert ours == cache_dit.DBCacheConfig(residual_diff_threshold=threshold).strify()
    assert ours == "DBCache_F8B0_W8I1M0MC0_R0.07999999821186066"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1, "residual_diff_threshold": 0.02,
          "max_warmup_steps": 2, "num_inference_steps": 6, "enable_separate_cfg": True}],
)
def test_dbprune_strify_equals_cache_dit_and_has_no_optional_parts(cache_dit, kwargs):
    tag = DBPruneConfig(**kwargs).strify()
    assert tag == cache_dit.DBPruneConfig(**kwargs).strify()
    assert tag.startswith("DBPrune_") and "_N" not in tag and "_CFG" not in tag


def test_strify_reproduces_the_spec_transformer_only_tag():
    # Spec §8: DBCache_F1B0_W2I1M0MC0_R0.3_N6_CFG0_T0O0_S3 (the _S3 suffix comes from run stats).
    cache = DBCacheConfig(
        Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.3,
        num_inference_steps=6, enable_separate_cfg=False,
    )
    assert f"{cache.strify()}_{CalibratorConfig().strify()}_S3" == (
        "DBCache_F1B0_W2I1M0MC0_R0.3_N6_CFG0_T0O0_S3"
    )


TEST_YAML_DICT = {
    "cache_config": {
        "Fn_compute_blocks": 1,
        "Bn_compute_blocks": 0,
        "residual_diff_threshold": 0.12,
        "num_inference_steps": 28,
        "steps_computation_mask": "fast",
        "enable_taylorseer": True,
        "taylorseer_order": 2,
    }
}


def test_strify_reproduces_the_spec_yaml_dict_tag():
    configs = load_configs(TEST_YAML_DICT)
    tag = f"{configs['cache_config'].strify()}_{configs['calibrator_config'].strify()}"
    assert tag == f"DBCache_F1B0_W8I1M0MC0_R0.12_SCM{FAST_28}_dynamic_N28_T1O2"


def test_strify_of_loaded_dict_equals_cache_dit_strify(cache_dit):
    configs = load_configs(TEST_YAML_DICT)
    tag = f"{configs['cache_config'].strify()}_{configs['calibrator_config'].strify()}"
    assert tag == cache_dit.strify(TEST_YAML_DICT)


def test_calibrator_strify_is_t0o0_when_disabled_and_t1o_order_for_taylorseer():
    assert CalibratorConfig().strify() == "T0O0"
    assert TaylorSeerCalibratorConfig(taylorseer_order=3).strify() == "T1O3"
    assert TaylorSeerCalibratorConfig(
        enable_calibrator=False, enable_encoder_calibrator=False
    ).strify() == "T0O0"


# --------------------------------------------------------------------------------------------------
# CacheType
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("DBCache", CacheType.DBCache),
        ("dbcache", CacheType.DBCache),
        ("DB_CACHE", CacheType.DBCache),
        ("DBPrune", CacheType.DBPrune),
        ("dbprune", CacheType.DBPrune),
        ("NONE", CacheType.NONE),
        (None, CacheType.NONE),
        (CacheType.DBPrune, CacheType.DBPrune),
    ],
)
def test_cache_type_parse_accepts_names_case_insensitively(text, expected):
    assert CacheType.parse(text) is expected


def test_cache_type_parse_rejects_unknown_name_with_suggestion():
    with pytest.raises(ConfigError, match="cache_type") as info:
        CacheType.parse("DBCahce")
    assert "did you mean 'DBCache'?" in str(info.value)


def test_cache_type_given_as_string_is_stored_as_enum():
    assert DBCacheConfig(cache_type="dbprune").cache_type is CacheType.DBPrune
    assert str(CacheType.DBCache) == "DBCache"


# --------------------------------------------------------------------------------------------------
# update / reset / copy
# --------------------------------------------------------------------------------------------------


def test_update_sets_given_fields_and_skips_none_values():
    config = DBCacheConfig().update(Fn_compute_blocks=2, residual_diff_threshold=None)
    assert config.Fn_compute_blocks == 2
    assert config.residual_diff_threshold == 0.08


def test_update_unknown_key_raises_with_closest_match():
    with pytest.raises(UnknownKeyError, match="'Fn_compute_block'") as info:
        DBCacheConfig().update(Fn_compute_block=2)
    assert info.value.suggestion == "Fn_compute_blocks"
    assert "did you mean 'Fn_compute_blocks'?" in str(info.value)
    assert "DBCacheConfig" in str(info.value)


def test_update_with_invalid_value_leaves_config_unchanged():
    config = DBCacheConfig()
    with pytest.raises(ConfigError, match="warmup_interval"):
        config.update(max_warmup_steps=4, warmup_interval=0)
    assert config.max_warmup_steps == 8
    assert config.warmup_interval == 1


def test_misspelt_separate_cfg_alias_warns_and_sets_enable_separate_cfg(caplog):
    with caplog.at_level(logging.WARNING, logger="dit_cache_backend.config"):
        config = DBCacheConfig().update(enable_sperate_cfg=True)
    assert config.enable_separate_cfg is True
    assert "enable_sperate_cfg" in caplog.text and "enable_separate_cfg" in caplog.text


def test_misspelt_alias_conflicting_with_real_key_raises():
    with pytest.raises(ConfigError, match="enable_sperate_cfg"):
        DBCacheConfig().update(enable_sperate_cfg=True, enable_separate_cfg=False)


def test_reset_gives_a_mapping_of_only_the_fields_set():
    config = DBCacheConfig().reset(num_inference_steps=50)
    assert config.as_dict() == {"num_inference_steps": 50}
    assert config.Fn_compute_blocks is None  # unset: "keep the base value"
    assert DBCacheConfig().empty().as_dict() == DBCacheConfig().reset().as_dict() == {}


def test_calibrator_reset_keeps_calibrator_type():
    config = TaylorSeerCalibratorConfig().reset(taylorseer_order=2)
    assert config.calibrator_type == "taylorseer"
    assert config.taylorseer_order == 2
    assert config.enable_calibrator is None


def test_copy_is_independent_of_the_original():
    original = DBCacheConfig(steps_computation_mask=[1, 0, 1])
    clone = original.copy()
    clone.steps_computation_mask.append(1)
    clone.update(Fn_compute_blocks=3)
    assert original.steps_computation_mask == [1, 0, 1]
    assert original.Fn_compute_blocks == 8


def test_as_dict_returns_every_field():
    values = DBPruneConfig(non_prune_block_ids=(0, 3)).as_dict()
    assert values["non_prune_block_ids"] == [0, 3]
    assert values["cache_type"] is CacheType.DBPrune
    assert values["dynamic_prune_threshold_relax_ratio"] == 1.25


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("Fn_compute_blocks", 0),
    ("Fn_compute_blocks", True),
    ("Fn_compute_blocks", 1.0),
    ("Bn_compute_blocks", -1),
    ("max_warmup_steps", -1),
    ("warmup_interval", 0),
    ("max_cached_steps", -2),
    ("max_continuous_cached_steps", -2),
    ("max_continuous_cached_steps", "2"),
    ("residual_diff_threshold", "0.08x"),
    ("residual_diff_threshold", float("nan")),
    ("residual_diff_threshold", True),
    ("residual_diff_threshold", torch.tensor([0.1, 0.2])),
    ("max_accumulated_residual_diff_threshold", "big"),
    ("enable_separate_cfg", 1),
    ("cfg_compute_first", "no"),
    ("cfg_diff_compute_separate", 0),
    ("num_inference_steps", 0),
    ("steps_computation_mask", [1, 2, 0]),
    ("steps_computation_mask", [True, False]),
    ("steps_computation_mask", []),
    ("steps_computation_mask", "10x1"),
    ("steps_computation_policy", "Static"),
    ("force_refresh_step_hint", 0),
    ("force_refresh_step_policy", "twice"),
]


@pytest.mark.parametrize("key, value", BAD_VALUES, ids=lambda v: repr(v)[:20])
def test_invalid_value_raises_config_error_naming_key_and_value(key, value):
    with pytest.raises(ConfigError) as info:
        DBCacheConfig(**{key: value})
    assert info.value.key == key
    assert key in str(info.value)
    assert "allowed" in str(info.value)


@pytest.mark.parametrize("threshold", [0, -1.0, 0.0, 1, 1.0, 5.5, torch.tensor(0.2)])
def test_thresholds_at_or_beyond_never_and_always_are_legal(threshold):
    assert DBCacheConfig(residual_diff_threshold=threshold).residual_diff_threshold is threshold


def test_exponent_without_dot_in_yaml_is_explained():
    # PyYAML reads `1e-2` as the string "1e-2".
    with pytest.raises(ConfigError, match="1.0e-2"):
        load_configs({"cache_config": {"residual_diff_threshold": "1e-2"}})


def test_policy_typo_suggests_closest_value():
    with pytest.raises(ConfigError, match="did you mean 'static'"):
        DBCacheConfig(steps_computation_policy="statc")


def test_separate_cfg_with_separate_diffs_forbids_cfg_compute_first():
    with pytest.raises(ConfigError, match="cfg_compute_first") as info:
        DBCacheConfig(enable_separate_cfg=True, cfg_compute_first=True)
    assert info.value.key == "cfg_compute_first"


def test_cfg_compute_first_is_allowed_with_shared_diffs_or_without_separate_cfg():
    assert DBCacheConfig(
        enable_separate_cfg=True, cfg_compute_first=True, cfg_diff_compute_separate=False
    ).cfg_compute_first
    assert DBCacheConfig(enable_separate_cfg=False, cfg_compute_first=True).cfg_compute_first


def test_none_is_refused_for_every_field_without_a_meaning_for_none():
    # A config object is always complete (issue 14); partial overrides are reset() mappings.
    optional = DBPruneConfig._OPTIONAL
    for field in dataclasses.fields(DBPruneConfig):
        if field.name in optional:
            assert getattr(DBPruneConfig(**{field.name: None}), field.name) is None
        else:
            with pytest.raises(ConfigError, match=field.name):
                DBPruneConfig(**{field.name: None})


@pytest.mark.parametrize(
    "key, value",
    [
        ("dynamic_prune_threshold_relax_ratio", 0),
        ("non_prune_block_ids", [0, -1]),
        ("enable_dynamic_prune_threshold", "yes"),
        ("max_dynamic_prune_threshold", "x"),
    ],
)
def test_invalid_dbprune_value_raises_config_error(key, value):
    with pytest.raises(ConfigError, match=key):
        DBPruneConfig(**{key: value})


# --------------------------------------------------------------------------------------------------
# Steps computation mask given as text
# --------------------------------------------------------------------------------------------------


def test_mask_written_as_digits_is_parsed_into_a_list():
    assert DBCacheConfig(steps_computation_mask="1101").steps_computation_mask == [1, 1, 0, 1]
    assert DBCacheConfig(steps_computation_mask=(1, 0)).steps_computation_mask == [1, 0]


def test_mask_preset_is_expanded_with_num_inference_steps():
    config = DBCacheConfig(num_inference_steps=28, steps_computation_mask="fast")
    assert _digits(config.steps_computation_mask) == FAST_28


def test_mask_preset_without_num_inference_steps_raises():
    with pytest.raises(ConfigError, match="num_inference_steps") as info:
        DBCacheConfig(steps_computation_mask="fast")
    assert info.value.key == "steps_computation_mask"


@pytest.mark.parametrize(
    "options",
    [
        {"cache_config": {"steps_computation_mask": "fast"}},
        {"steps_computation_mask": "fast"},  # flat form: cache-dit silently stores the string
    ],
    ids=["nested", "flat"],
)
def test_loader_mask_preset_without_num_inference_steps_raises(options):
    with pytest.raises(ConfigError, match="steps_computation_mask"):
        load_configs(options)


def test_mask_preset_in_flat_form_is_expanded():
    cache, _ = load_cache_config({"num_inference_steps": 28, "steps_computation_mask": "fast"})
    assert _digits(cache.steps_computation_mask) == FAST_28


def test_mask_preset_typo_suggests_closest_preset():
    with pytest.raises(ConfigError, match="did you mean 'fast'"):
        DBCacheConfig(num_inference_steps=28, steps_computation_mask="fsat")


def test_mask_preset_for_step_count_without_preset_warns_and_leaves_no_mask(caplog):
    with caplog.at_level(logging.WARNING):
        config = DBCacheConfig(num_inference_steps=5, steps_computation_mask="fast")
    assert config.steps_computation_mask is None
    assert "num_inference_steps=5" in caplog.text


# --------------------------------------------------------------------------------------------------
# Calibrator configs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("taylorseer_order", 0),
        ("taylorseer_order", True),
        ("calibrator_cache_type", "hidden"),
        ("enable_calibrator", "true"),
        ("calibrator_kwargs", []),
        ("calibrator_type", "euler"),
    ],
)
def test_invalid_calibrator_value_raises_config_error(key, value):
    with pytest.raises(ConfigError, match=key):
        TaylorSeerCalibratorConfig(**{key: value})


def test_calibrator_cache_type_accepts_hidden_states():
    assert CalibratorConfig(calibrator_cache_type="hidden_states").calibrator_cache_type == (
        "hidden_states"
    )


def test_foca_and_dmd_configs_have_cache_dits_defaults():
    assert FoCaCalibratorConfig().as_dict() == {
        "enable_calibrator": True,
        "enable_encoder_calibrator": True,
        "calibrator_type": "foca",
        "calibrator_cache_type": "residual",
        "calibrator_kwargs": {},
    }
    config = DMDCalibratorConfig()
    assert (config.calibrator_type, config.dmd_history, config.dmd_rank) == ("dmd", 6, 0)
    assert (config.dmd_ridge, config.dmd_svd_precision) == (1e-8, "medium")


def test_yaml_enable_dmd_turns_on_both_streams_and_reads_its_keys():
    loaded = load_configs({"cache_config": {"enable_dmd": True, "dmd_history": 5}})
    calibrator = loaded["calibrator_config"]
    assert isinstance(calibrator, DMDCalibratorConfig)
    assert (calibrator.enable_encoder_calibrator, calibrator.dmd_history) == (True, 5)


def test_yaml_enable_foca_leaves_the_encoder_stream_off():
    calibrator = load_configs({"cache_config": {"enable_foca": True}})["calibrator_config"]
    assert isinstance(calibrator, FoCaCalibratorConfig)
    assert (calibrator.enable_calibrator, calibrator.enable_encoder_calibrator) == (True, False)


def test_yaml_two_calibrators_at_once_are_refused():
    with pytest.raises(ConfigError, match="enable_foca"):
        load_configs({"cache_config": {"enable_taylorseer": True, "enable_foca": True}})


def test_unknown_calibrator_type_names_the_three_allowed():
    with pytest.raises(ConfigError, match="'taylorseer', 'foca', 'dmd'") as info:
        CalibratorConfig(calibrator_type="focca")
    assert "did you mean 'foca'?" in str(info.value)


def test_bad_dmd_svd_precision_is_refused():
    with pytest.raises(ConfigError, match="dmd_svd_precision"):
        DMDCalibratorConfig(dmd_svd_precision="ultra")


# --------------------------------------------------------------------------------------------------
# Loading: cache-dit's test YAML, SGLang's doc examples, forms and inputs
# --------------------------------------------------------------------------------------------------


def test_cache_dit_repo_test_yaml_loads_with_expected_values():
    configs = load_configs(CONFIGS / "cache_dit_api_config.yaml")
    assert set(configs) == {
        "cache_config", "calibrator_config", "parallelism_config", "attention_backend",
        "quantize_config",
    }
    cache, calibrator = configs["cache_config"], configs["calibrator_config"]
    assert cache.strify() == f"DBCache_F1B0_W8I2M0MC2_R0.12_SCM{FAST_28}_dynamic_N28"
    assert (cache.max_cached_steps, cache.max_continuous_cached_steps) == (-1, 2)
    assert isinstance(calibrator, TaylorSeerCalibratorConfig)
    assert calibrator.taylorseer_order == 1
    assert calibrator.enable_calibrator is True
    assert calibrator.enable_encoder_calibrator is False  # YAML default, unlike the dataclass
    parallel = configs["parallelism_config"]
    assert parallel.ulysses_size == 2
    assert parallel.attention_backend == "native"  # copied from parallel_kwargs
    assert parallel.extra_parallel_modules == ["text_encoder", "vae"]
    assert configs["attention_backend"] is None and configs["quantize_config"] is None


SCM_TAG = f"{SGLANG_CACHE_TAG}_SCM{FAST_28}_dynamic_N28"
SGLANG_EXAMPLES = {
    # file: (cache strify, calibrator strify, parallelism sizes, attention_backend, quant_type)
    "cache.yaml": (SGLANG_CACHE_TAG, "T1O1", None, None, None),
    "cache_scm.yaml": (SCM_TAG, "T1O1", None, None, None),
    "cache_scm_cfg.yaml": (f"{SCM_TAG}_CFG1", "T1O1", None, None, None),
    "parallel.yaml": (None, None, ("auto", None, None), None, None),
    "parallel_2d.yaml": (None, None, ("auto", None, 2), None, None),
    "parallel_3d.yaml": (None, None, (2, 2, 2), None, None),
    "parallel_uaa.yaml": (None, None, ("auto", None, None), None, None),
    "parallel_fp8.yaml": (None, None, ("auto", None, None), None, None),
    "parallel_async.yaml": (None, None, ("auto", None, None), None, None),
    "parallel_extra.yaml": (None, None, ("auto", None, None), None, None),
    "hybrid.yaml": (SGLANG_CACHE_TAG, "T1O1", ("auto", None, None), None, None),
    "attention.yaml": (None, None, None, "flash", None),
    "quantize.yaml": (None, None, None, None, "float8"),
    "combined.yaml": (SGLANG_CACHE_TAG, "T1O1", ("auto", None, None), None, "float8"),
    "legacy_parallel_config.yaml": (SGLANG_CACHE_TAG, "T1O1", ("auto", None, None), None, None),
    "ci_scm_config.yaml": (
        "DBCache_F1B0_W2I2M0MC2_R0.12_SCM11110101_dynamic_N8", "T1O1", None, None, None,
    ),
}


def test_every_sglang_example_has_a_fixture_file():
    assert sorted(p.name for p in SGLANG.glob("*.yaml")) == sorted(SGLANG_EXAMPLES)


@pytest.mark.parametrize("name", sorted(SGLANG_EXAMPLES))
def test_sglang_doc_example_loads(name):
    cache_tag, calibrator_tag, sizes, attention, quant_type = SGLANG_EXAMPLES[name]
    configs = load_configs(SGLANG / name)
    cache, calibrator = configs["cache_config"], configs["calibrator_config"]
    assert (cache.strify() if cache else None) == cache_tag
    assert (calibrator.strify() if calibrator else None) == calibrator_tag
    parallel = configs["parallelism_config"]
    assert (
        (parallel.ulysses_size, parallel.ring_size, parallel.tp_size) if parallel else None
    ) == sizes
    if parallel is not None:
        assert parallel.attention_backend == "native"
    assert configs["attention_backend"] == attention
    quantize = configs["quantize_config"]
    assert (quantize.quant_type if quantize else None) == quant_type


def test_sglang_parallel_flags_are_kept():
    assert load_configs(SGLANG / "parallel_uaa.yaml")["parallelism_config"].ulysses_anything
    assert load_configs(SGLANG / "parallel_fp8.yaml")["parallelism_config"].ulysses_float8
    assert load_configs(SGLANG / "parallel_async.yaml")["parallelism_config"].ulysses_async
    extra = load_configs(SGLANG / "parallel_extra.yaml")["parallelism_config"]
    assert extra.extra_parallel_modules == ["text_encoder", "vae"]


def test_sglang_quantize_example_keeps_exclude_layers_and_verbose():
    quantize = load_configs(SGLANG / "quantize.yaml")["quantize_config"]
    assert quantize.exclude_layers == ["embedder", "embed"]
    assert quantize.verbose is False
    assert quantize.backend == "TORCHAO"


def test_sglang_separate_cfg_typo_example_warns_and_enables_separate_cfg(caplog):
    with caplog.at_level(logging.WARNING, logger="dit_cache_backend.config"):
        cache = load_configs(SGLANG / "cache_scm_cfg.yaml")["cache_config"]
    assert cache.enable_separate_cfg is True
    assert "enable_sperate_cfg" in caplog.text


@pytest.mark.parametrize("name", ["cache.yaml", "cache_scm.yaml", "ci_scm_config.yaml"])
def test_cache_section_equals_cache_dit_loader(cache_dit, name):
    cache, calibrator = load_cache_config(str(SGLANG / name))
    ref_cache, ref_calibrator = cache_dit.load_cache_config(str(SGLANG / name))
    assert _normalized(cache.as_dict()) == _normalized(dataclasses.asdict(ref_cache))
    assert calibrator.as_dict() == dataclasses.asdict(ref_calibrator)


def test_flat_legacy_form_equals_nested_form():
    nested = load_configs(CONFIGS / "cache_scm.json")
    flat = load_configs(CONFIGS / "flat_legacy.yaml")
    assert flat["cache_config"].as_dict() == nested["cache_config"].as_dict()
    assert flat["calibrator_config"].as_dict() == nested["calibrator_config"].as_dict()


def test_json_file_loads_like_the_equivalent_yaml():
    from_json = load_configs(CONFIGS / "cache_scm.json")
    from_yaml = load_configs(SGLANG / "cache_scm.yaml")
    assert from_json["cache_config"].strify() == from_yaml["cache_config"].strify() == SCM_TAG


def test_dict_input_is_not_modified():
    options = {"cache_config": {"num_inference_steps": 28, "steps_computation_mask": "fast",
                                "enable_taylorseer": True}}
    load_configs(options)
    assert options["cache_config"]["steps_computation_mask"] == "fast"
    assert options["cache_config"]["enable_taylorseer"] is True


def test_str_and_path_inputs_give_the_same_configs():
    as_str = load_configs(str(SGLANG / "combined.yaml"))
    as_path = load_configs(SGLANG / "combined.yaml")
    assert as_str["cache_config"].as_dict() == as_path["cache_config"].as_dict()
    assert as_str["quantize_config"] == as_path["quantize_config"]


def test_return_dict_false_gives_the_tuple_in_enable_cache_order():
    result = load_configs(SGLANG / "combined.yaml", return_dict=False)
    assert isinstance(result, tuple) and len(result) == 5
    cache, calibrator, parallel, attention, quantize = result
    assert isinstance(cache, DBCacheConfig)
    assert isinstance(calibrator, TaylorSeerCalibratorConfig)
    assert isinstance(parallel, ParallelismConfig)
    assert attention is None
    assert isinstance(quantize, QuantizeConfig)


def test_empty_dict_loads_the_default_cache_config():
    cache, calibrator = load_cache_config({})
    assert cache.as_dict() == DBCacheConfig().as_dict()
    assert calibrator is None


def test_only_other_sections_give_no_cache_config():
    assert load_cache_config({"attention_backend": "flash"}) == (None, None)


def test_load_cache_config_with_reset_sets_only_given_fields():
    cache, calibrator = load_cache_config(
        {"num_inference_steps": 50, "enable_taylorseer": True}, reset=True
    )
    assert cache.num_inference_steps == 50
    assert cache.Fn_compute_blocks is None and cache.residual_diff_threshold is None
    assert calibrator.enable_calibrator is True and calibrator.taylorseer_order == 1


def test_cache_type_dbprune_in_yaml_builds_a_dbprune_config():
    cache, _ = load_cache_config({"cache_type": "DBPrune", "non_prune_block_ids": [0, 1]})
    assert isinstance(cache, DBPruneConfig)
    assert cache.cache_type is CacheType.DBPrune
    assert cache.non_prune_block_ids == [0, 1]


def test_cache_type_dbcache_string_in_yaml_is_stored_as_enum():
    cache, _ = load_cache_config({"cache_config": {"cache_type": "DBCache"}})
    assert cache.cache_type is CacheType.DBCache


def test_encoder_taylorseer_can_be_enabled_from_yaml():
    _, calibrator = load_cache_config(
        {"enable_taylorseer": True, "enable_encoder_taylorseer": True, "taylorseer_order": 2,
         "taylorseer_cache_type": "hidden_states"}
    )
    assert calibrator.enable_encoder_calibrator is True
    assert calibrator.taylorseer_order == 2
    assert calibrator.calibrator_cache_type == "hidden_states"


def test_generic_calibrator_cache_type_key_applies_to_taylorseer():
    _, calibrator = load_cache_config(
        {"enable_taylorseer": True, "calibrator_cache_type": "hidden_states"}
    )
    assert calibrator.calibrator_cache_type == "hidden_states"


def test_conflicting_calibrator_cache_types_raise():
    with pytest.raises(ConfigError, match="calibrator_cache_type"):
        load_cache_config({"enable_taylorseer": True, "calibrator_cache_type": "hidden_states",
                           "taylorseer_cache_type": "residual"})


def test_taylorseer_keys_without_enable_taylorseer_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="dit_cache_backend.config"):
        _, calibrator = load_cache_config({"taylorseer_order": 2})
    assert calibrator is None
    assert "taylorseer_order ignored" in caplog.text


# --------------------------------------------------------------------------------------------------
# Loading: bad input
# --------------------------------------------------------------------------------------------------


def test_unknown_top_level_key_names_section_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cache_config: {}\nparallelism_confg: {ulysses_size: 2}\n")
    with pytest.raises(UnknownKeyError, match="parallelism_confg") as info:
        load_configs(path)
    assert info.value.suggestion == "parallelism_config"
    assert "top level" in str(info.value) and str(path) in str(info.value)


def test_unknown_key_in_cache_config_suggests_closest_key():
    with pytest.raises(UnknownKeyError, match="in cache_config") as info:
        load_configs({"cache_config": {"max_warmup_step": 4}})
    assert "did you mean 'max_warmup_steps'?" in str(info.value)


def test_misspelt_calibrator_key_suggests_the_yaml_key():
    with pytest.raises(UnknownKeyError) as info:
        load_configs({"cache_config": {"enable_taylorsear": True}})
    assert info.value.suggestion == "enable_taylorseer"


def test_unknown_key_in_flat_form_can_suggest_a_section_name():
    with pytest.raises(UnknownKeyError) as info:
        load_configs({"cache_confg": {"Fn_compute_blocks": 1}})
    assert info.value.suggestion == "cache_config"


def test_flat_cache_keys_next_to_a_section_are_unknown_top_level_keys():
    with pytest.raises(UnknownKeyError, match="Fn_compute_blocks"):
        load_configs({"Fn_compute_blocks": 1, "attention_backend": "flash"})


def test_unknown_key_in_parallelism_config_suggests():
    with pytest.raises(UnknownKeyError, match="parallelism_config") as info:
        load_configs({"parallelism_config": {"ulysses_sizes": 2}})
    assert info.value.suggestion == "ulysses_size"


def test_unknown_key_in_parallel_kwargs_suggests():
    with pytest.raises(UnknownKeyError, match="parallel_kwargs") as info:
        load_configs({"parallelism_config": {"ulysses_size": 2,
                                             "parallel_kwargs": {"attention_backnd": "native"}}})
    assert info.value.suggestion == "attention_backend"


def test_unknown_key_in_quantize_config_suggests():
    with pytest.raises(UnknownKeyError, match="quantize_config") as info:
        load_configs({"quantize_config": {"quant_typ": "float8"}})
    assert info.value.suggestion == "quant_type"


def test_malformed_yaml_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("cache_config:\n  Fn_compute_blocks: [1, 2\n  Bn_compute_blocks: 0\n")
    with pytest.raises(ConfigError) as info:
        load_configs(path)
    message = str(info.value)
    assert str(path) in message and "line" in message and "column" in message
    assert info.value.key == "path"


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "cache_config": {"Fn_compute_blocks": 1,}\n}\n')
    with pytest.raises(ConfigError, match=r"broken\.json: line 2, column \d+"):
        load_configs(path)


def test_missing_file_raises_file_not_found_config_error(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigFileNotFoundError) as info:
        load_configs(str(path))
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ConfigError)
    assert info.value.key == "path"
    assert str(path) in str(info.value)


def test_yaml_text_instead_of_path_is_explained():
    with pytest.raises(ConfigFileNotFoundError, match="not YAML text"):
        load_configs("cache_config:\n  Fn_compute_blocks: 1\n")


@pytest.mark.parametrize("content", ["- 1\n- 2\n", "", "just a string\n"])
def test_non_mapping_top_level_raises(tmp_path, content):
    path = tmp_path / "top.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_configs(path)


def test_input_that_is_neither_path_nor_dict_raises():
    with pytest.raises(ConfigError, match="path_or_dict"):
        load_configs(["cache_config"])


def test_cache_config_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="cache_config"):
        load_configs({"cache_config": [1, 2]})


@pytest.mark.parametrize("cache_type", ["NONE", "DBCash"])
def test_cache_type_in_yaml_must_be_dbcache_or_dbprune(cache_type):
    with pytest.raises(ConfigError, match="cache_type"):
        load_configs({"cache_config": {"cache_type": cache_type}})


def test_invalid_value_in_yaml_names_the_key():
    with pytest.raises(ConfigError, match="Fn_compute_blocks") as info:
        load_configs({"cache_config": {"Fn_compute_blocks": 0}})
    assert info.value.value == 0


def test_attention_backend_must_be_a_string():
    with pytest.raises(ConfigError, match="attention_backend"):
        load_configs({"attention_backend": 3})


# --------------------------------------------------------------------------------------------------
# Parallelism and quantization sections
# --------------------------------------------------------------------------------------------------


def test_parallel_size_aliases_map_to_canonical_keys():
    parallel = load_configs({"parallelism_config": {"ulysses": 2, "ring": 2, "tp": "auto"}})[
        "parallelism_config"
    ]
    assert (parallel.ulysses_size, parallel.ring_size, parallel.tp_size) == (2, 2, "auto")


def test_parallel_size_alias_conflicting_with_canonical_key_raises():
    with pytest.raises(ConfigError, match="ulysses_size"):
        load_configs({"parallelism_config": {"ulysses": 2, "ulysses_size": 4}})


def test_at_most_one_parallel_size_may_be_auto():
    with pytest.raises(ConfigError, match="at most one") as info:
        ParallelismConfig(ulysses_size="auto", ring_size="AUTO")
    assert info.value.key == "ring_size"


def test_parallelism_config_that_parallelizes_nothing_raises():
    with pytest.raises(ConfigError, match="parallelism_config"):
        ParallelismConfig(ulysses_size=1)


@pytest.mark.parametrize(
    "backend, expected",
    [("native_diffuser", "CACHE_DIT"), ("Auto", "AUTO"), ("cache_dit", "CACHE_DIT")],
)
def test_parallel_backend_string_is_normalized(backend, expected):
    assert ParallelismConfig(ulysses_size=2, backend=backend).backend == expected


def test_unknown_parallel_backend_raises_with_suggestion():
    with pytest.raises(ConfigError, match="backend") as info:
        ParallelismConfig(ulysses_size=2, backend="cache-dt")
    assert "allowed" in str(info.value)


def test_parallel_backend_that_cannot_run_the_sizes_raises():
    with pytest.raises(ConfigError, match="NATIVE_HYBRID"):
        ParallelismConfig(ulysses_size=2, tp_size=2, backend="native_pytorch")


@pytest.mark.parametrize("size", [0, -2, True, "4", 2.0])
def test_invalid_parallel_size_raises(size):
    with pytest.raises(ConfigError, match="ulysses_size"):
        ParallelismConfig(ulysses_size=size)


def test_quantize_backend_aliases_resolve_like_cache_dit():
    assert QuantizeConfig(backend="ao").backend == "TORCHAO"
    assert QuantizeConfig(quant_type="svdq_int4_r32_dq").backend == "CACHE_DIT"


def test_invalid_quantize_backend_raises():
    with pytest.raises(ConfigError, match="backend"):
        QuantizeConfig(backend="bitsandbytes")


def test_svdq_kwargs_require_an_svdq_quant_type():
    with pytest.raises(ConfigError, match="svdq_kwargs"):
        QuantizeConfig(quant_type="float8", svdq_kwargs={"streaming": True})


def test_malformed_svdq_quant_type_raises():
    with pytest.raises(ConfigError, match="quant_type"):
        QuantizeConfig(quant_type="svdq_int4")

