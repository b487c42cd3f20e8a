"""Decision signals (``decision_signal``): what each measures, their config keys, and the engine."""

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.config import load_configs
from dit_cache_backend.config.extensions import DECISION_SIGNALS
from dit_cache_backend.context import (
    SIGNALS,
    DBCacheContext,
    low_pass,
    relative_l1,
    stretched_index,
)
from dit_cache_backend.errors import ConfigError, UnknownKeyError
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline


def tokens(values):
    """A (1, tokens, 1) tensor from a per-token list."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1)


SMOOTH = [1.0 + 0.1 * i for i in range(16)]
ALTERNATING = [(-1.0) ** i for i in range(16)]


def test_every_configurable_signal_has_a_measure():
    assert set(SIGNALS) == set(DECISION_SIGNALS)


def test_low_pass_keeps_a_constant_and_removes_the_highest_frequency():
    assert torch.allclose(low_pass(tokens([2.0] * 16), 0.25), tokens([2.0] * 16))
    assert torch.allclose(low_pass(tokens(ALTERNATING), 0.25), torch.zeros(1, 16, 1), atol=1e-6)


def context_for(**fields):
    config = dcb.DBCacheConfig(max_warmup_steps=0, **fields)
    return DBCacheContext("blocks", config, None, separate_cfg=False)


def test_lowpass_signal_ignores_high_frequency_changes_that_relative_l1_sees():
    reference = tokens([s + 0.5 * a for s, a in zip(SMOOTH, ALTERNATING)])
    current = tokens([s - 0.5 * a for s, a in zip(SMOOTH, ALTERNATING)])
    context = context_for(decision_signal="lowpass_l1")
    assert relative_l1(reference, current) > 0.5
    assert SIGNALS["lowpass_l1"].measure(context, reference, current) == pytest.approx(
        0.0, abs=1e-5
    )


def step(context, residual):
    """One call through the context's decision, as the block runner makes it."""
    context.begin_call(None)
    cached, reason, value = context.decide(residual)
    if cached:
        context.policy.mark_cached()
    context.settle(residual, cached)
    return cached, reason, value


def test_magnitude_accumulates_the_error_of_the_norm_ratio_product_since_the_last_compute():
    context = context_for(decision_signal="magnitude", residual_diff_threshold=0.5)
    assert step(context, tokens([1.0] * 4))[0] is False  # nothing to reuse yet
    cached, _, error = step(context, tokens([1.2] * 4))
    assert cached and error == pytest.approx(0.2)
    cached, _, error = step(context, tokens([1.5] * 4))
    assert not cached and error == pytest.approx(0.2 + 0.5)  # |1 - 1.2 * 1.25|
    cached, _, error = step(context, tokens([1.5] * 4))
    assert cached and error == pytest.approx(0.0)  # the compute started the accumulation afresh


def test_calibrated_magnitude_ratios_replace_the_measured_ones():
    ratios = [1.0, 1.0, 1.3, 1.0]
    context = context_for(
        decision_signal="magnitude",
        signal_mag_ratios=ratios,
        residual_diff_threshold=0.2,
        num_inference_steps=4,
    )
    outcomes = [step(context, tokens([1.0] * 4))[:2] for _ in range(4)]
    assert outcomes == [(False, "no_reference"), (True, "diff"), (False, "diff"), (True, "diff")]


def test_calibrated_ratios_are_stretched_to_the_request_by_nearest_step():
    assert [stretched_index(s, 3, 5) for s in range(5)] == [0, 0, 1, 2, 2]
    assert stretched_index(7, 3, None) == 2


def test_default_configs_read_exactly_as_cache_dit_and_set_extensions_appear():
    assert "decision_signal" not in dcb.DBCacheConfig().as_dict()
    config = dcb.DBCacheConfig(decision_signal="magnitude", max_warmup_steps=2, compute_budget=9)
    assert config.as_dict()["decision_signal"] == "magnitude"
    assert config.as_dict()["compute_budget"] == 9
    assert config.strify().endswith("_SIGmagnitude_CB9")


def test_an_unknown_signal_is_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match="decision_signal") as raised:
        dcb.DBCacheConfig(decision_signal="magnitudes")
    assert "magnitude" in str(raised.value.hint)


def test_a_misspelled_extension_key_suggests_ours():
    with pytest.raises(UnknownKeyError, match="compute_budget"):
        load_configs({"cache_config": {"compute_budgets": 0.5}})


@pytest.mark.parametrize(
    "key, value",
    [
        ("signal_lowpass_ratio", 0.0),
        ("signal_lowpass_ratio", 1.5),
        ("signal_mag_ratios", []),
        ("signal_mag_ratios", [1.0, -1.0]),
    ],
)
def test_invalid_signal_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        dcb.DBCacheConfig(**{key: value})


def test_yaml_with_our_keys_loads(tmp_path):
    path = tmp_path / "cache.yaml"
    path.write_text(
        "cache_config:\n  decision_signal: lowpass_l1\n  signal_lowpass_ratio: 0.5\n"
        "  max_warmup_steps: 2\n  compute_budget: 4\n"
    )
    cache = load_configs(str(path))["cache_config"]
    assert (cache.decision_signal, cache.signal_lowpass_ratio, cache.compute_budget) == (
        "lowpass_l1",
        0.5,
        4,
    )


@pytest.mark.parametrize("signal", DECISION_SIGNALS)
def test_each_signal_caches_the_tiny_flux_and_records_its_value(signal):
    pipe = tiny_flux_pipeline()
    config = dcb.DBCacheConfig(
        Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.3, decision_signal=signal
    )
    dcb.enable_cache(pipe, cache_config=config)
    with torch.no_grad():
        pipe(**tiny_flux_inputs(2, num_inference_steps=10, seed=0))
    stats = dcb.summary(pipe, logging=False)[0]
    assert 0 < len(stats.cached_steps) < 8
    assert all(value >= 0 for value in stats.residual_diffs.values())
