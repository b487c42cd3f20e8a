"""Specification tests for dit_cache_backend.scm (steps computation mask, spec §4.2).

Golden masks are copied from the spec's tables (observed with cache-dit 1.5.3); the differential
tests compare against the installed cache_dit package itself and are skipped without it.
"""

from __future__ import annotations

import pytest

from dit_cache_backend.errors import ConfigError, UnsupportedStepCountError
from dit_cache_backend.scm import MASK_POLICIES, mask_from_string, mask_to_string, steps_mask

# Spec §4.2 "Base presets for T = 28": policy -> (mask, number of computed steps).
BASE_28 = {
    "slow": ("1111111101110011100110010001", 18),
    "medium": ("1111110110001100011000110001", 15),
    "fast": ("1111110100010000100000100001", 11),
    "ultra": ("1111001000001000000100000001", 8),
}

# Spec §4.2 "Reference outputs": N -> masks for (slow, medium, fast, ultra).
REFERENCE = {
    8: ("11111011", "11110101", "11101001", "11001001"),
    9: ("111110111", "111110101", "111101001", "111001001"),
    10: ("1111011111", "1111011011", "1110100101", "1101001001"),
    12: ("111101101111", "111101101001", "111010010011", "110100100011"),
    16: ("1111111101110011", "1111110110001001", "1111100000000001", "1100000000000001"),
    20: (
        "11111111011100111001",
        "11111101100011000101",
        "11111101000000000001",
        "11110000000000000001",
    ),
    24: (
        "111111110111001110011001",
        "111111011000110001100011",
        "111111010001000010000001",
        "111100100000100000000001",
    ),
    25: (
        "1111111101110011100110011",
        "1111110110001100011000111",
        "1111110100010000100000101",
        "1111001000001000000100001",
    ),
    30: (
        "111111111111011100111001100101",
        "111111111011000110001100011001",
        "111111111010001000010000010001",
        "111111001000001000000100000001",
    ),
    40: (
        "1111111111111001111100011111000110010001",
        "1111111111001110000011100000111000110001",
        "1111111111001100000110000001100000100001",
        "1111110001100000000110000000000100000001",
    ),
    50: (
        "11111111111111111111110011111000111110001110001101",
        "11111111111111110011100000111000001110000011100001",
        "11111111111001100000110000000110000000001100000001",
        "11111110001100000000011000000000001100000000000001",
    ),
}
# Spec §4.2 lists the computed-step counts for N = 50.
COMPUTED_AT_50 = {"slow": 38, "medium": 29, "fast": 20, "ultra": 14}

# Every step count cache-dit accepts for a predefined policy, up to 300.
SUPPORTED_STEPS = [4, 6, *range(8, 301)]


def _reference_cases():
    for steps, masks in REFERENCE.items():
        for policy, mask in zip(MASK_POLICIES, masks):
            yield pytest.param(steps, policy, mask, id=f"{steps}-{policy}")


@pytest.fixture(scope="module")
def cache_dit():
    return pytest.importorskip(
        "cache_dit",
        reason="cache_dit (pip install cache-dit==1.5.3) is needed for the differential tests",
    )


# --- presets: golden values from the spec ------------------------------------------------------


def test_mask_policies_are_the_four_cache_dit_presets_fastest_last():
    assert MASK_POLICIES == ("slow", "medium", "fast", "ultra")


@pytest.mark.parametrize("policy", MASK_POLICIES)
def test_28_steps_uses_the_base_preset_unchanged(policy):
    expected, computed = BASE_28[policy]
    mask = steps_mask(total_steps=28, mask_policy=policy)
    assert mask_to_string(mask) == expected
    assert sum(mask) == computed


@pytest.mark.parametrize("policy", MASK_POLICIES)
def test_4_steps_is_1101_for_every_policy(policy):
    assert steps_mask(total_steps=4, mask_policy=policy) == [1, 1, 0, 1]


@pytest.mark.parametrize("policy", MASK_POLICIES)
def test_6_steps_is_111001_for_every_policy(policy):
    assert steps_mask(total_steps=6, mask_policy=policy) == [1, 1, 1, 0, 0, 1]


@pytest.mark.parametrize("steps, policy, expected", list(_reference_cases()))
def test_predefined_mask_matches_spec_reference_table(steps, policy, expected):
    assert mask_to_string(steps_mask(total_steps=steps, mask_policy=policy)) == expected


@pytest.mark.parametrize("policy", MASK_POLICIES)
def test_50_step_masks_compute_the_documented_number_of_steps(policy):
    assert sum(steps_mask(total_steps=50, mask_policy=policy)) == COMPUTED_AT_50[policy]


def test_default_policy_is_medium():
    assert steps_mask(total_steps=28) == steps_mask(total_steps=28, mask_policy="medium")


def test_16_to_27_steps_keep_the_28_step_opening_and_lose_the_tail():
    # Truncation trims from the end, so 16-step "fast" keeps only the opening 6 computes + final.
    assert mask_to_string(steps_mask(total_steps=16, mask_policy="fast")) == "1111100000000001"


@pytest.mark.parametrize("policy", MASK_POLICIES)
def test_predefined_mask_has_exactly_total_steps_entries_of_0_or_1(policy):
    for steps in SUPPORTED_STEPS:
        mask = steps_mask(total_steps=steps, mask_policy=policy)
        assert len(mask) == steps
        assert set(mask) <= {0, 1}


@pytest.mark.parametrize("policy", MASK_POLICIES)
def test_predefined_mask_always_computes_the_last_step(policy):
    for steps in SUPPORTED_STEPS:
        assert steps_mask(total_steps=steps, mask_policy=policy)[-1] == 1, steps


def test_total_steps_may_be_a_numpy_int():
    np = pytest.importorskip("numpy")
    assert steps_mask(total_steps=np.int64(28)) == steps_mask(total_steps=28)


# --- explicit bins ------------------------------------------------------------------------------


def test_explicit_bins_alternate_compute_and_cache_runs():
    assert steps_mask(compute_bins=[3, 1, 2], cache_bins=[2, 1]) == [1, 1, 1, 0, 0, 1, 0, 1, 1]


def test_explicit_bins_do_not_force_a_final_compute_step():
    assert steps_mask(compute_bins=[2], cache_bins=[3]) == [1, 1, 0, 0, 0]


def test_explicit_bins_truncate_to_total_steps():
    mask = steps_mask(compute_bins=[4, 2], cache_bins=[3, 5], total_steps=10)
    assert mask_to_string(mask) == "1111000110"


def test_explicit_bins_without_total_steps_use_the_sum_of_the_bins():
    assert len(steps_mask(compute_bins=[4, 2, 1], cache_bins=[3, 5])) == 15


def test_explicit_cache_bins_longer_than_compute_bins_are_laid_end_to_end():
    assert mask_to_string(steps_mask(compute_bins=[1], cache_bins=[2, 3])) == "100000"


def test_explicit_bins_ignore_mask_policy():
    # cache-dit never looks at mask_policy when both bins lists are given.
    assert steps_mask([2], [1], mask_policy="no-such-policy") == [1, 1, 0]


def test_explicit_bins_are_not_modified():
    compute, cache = [4, 2], [3, 5]
    steps_mask(compute_bins=compute, cache_bins=cache, total_steps=10)
    assert (compute, cache) == ([4, 2], [3, 5])


# --- differential against cache-dit 1.5.3 -------------------------------------------------------


@pytest.mark.parametrize("policy", MASK_POLICIES)
def test_predefined_masks_equal_cache_dit_for_4_6_and_8_to_300_steps(cache_dit, policy):
    mismatched = [
        steps
        for steps in SUPPORTED_STEPS
        if steps_mask(total_steps=steps, mask_policy=policy)
        != cache_dit.steps_mask(total_steps=steps, mask_policy=policy)
    ]
    assert mismatched == []


@pytest.mark.parametrize("steps", [488, 920])
def test_growth_factor_rounds_in_float64_like_cache_dit(cache_dit, steps):
    # Here int(7 * ((steps / 28) * 0.5)) is one less than the exact 7 * steps // 56, which
    # changes the "ultra" mask; an exact-arithmetic port would diverge from cache-dit.
    assert steps_mask(total_steps=steps, mask_policy="ultra") == cache_dit.steps_mask(
        total_steps=steps, mask_policy="ultra"
    )


@pytest.mark.parametrize(
    "compute_bins, cache_bins, total_steps",
    [
        ([4, 2, 1], [3, 5], None),
        ([4, 2, 1], [3, 5], 9),
        ([1, 1, 1, 1], [2], None),
        ([1], [2, 3, 4], 7),
        ([8, 3, 3, 2, 1, 1], [1, 2, 2, 2, 3], 28),
        ([5], [], None),
        ([], [3], None),
    ],
)
def test_explicit_bins_equal_cache_dit(cache_dit, compute_bins, cache_bins, total_steps):
    ours = steps_mask(compute_bins=compute_bins, cache_bins=cache_bins, total_steps=total_steps)
    theirs = cache_dit.steps_mask(
        compute_bins=compute_bins, cache_bins=cache_bins, total_steps=total_steps
    )
    assert ours == theirs


# --- errors -------------------------------------------------------------------------------------


def _assert_names_key(excinfo, key):
    assert excinfo.value.key == key
    assert f"'{key}'" in str(excinfo.value)


def test_unknown_policy_raises_config_error_naming_mask_policy():
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(total_steps=28, mask_policy="turbo")
    _assert_names_key(excinfo, "mask_policy")
    assert excinfo.value.value == "turbo"
    assert excinfo.value.allowed == "one of slow, medium, fast, ultra"


def test_unknown_policy_error_is_still_a_value_error_like_cache_dit():
    with pytest.raises(ValueError):
        steps_mask(total_steps=28, mask_policy="Fast")


@pytest.mark.parametrize("steps", [-3, 0, 1, 2, 3, 5, 7])
def test_predefined_policy_for_unsupported_step_count_raises_unsupported_step_count_error(steps):
    with pytest.raises(UnsupportedStepCountError) as excinfo:
        steps_mask(total_steps=steps, mask_policy="fast")
    _assert_names_key(excinfo, "total_steps")
    assert excinfo.value.value == steps


def test_unsupported_step_count_error_is_a_config_error():
    assert issubclass(UnsupportedStepCountError, ConfigError)


def test_predefined_policy_without_total_steps_raises_config_error():
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(mask_policy="slow")
    _assert_names_key(excinfo, "total_steps")


@pytest.mark.parametrize("steps", [28.0, "28", True])
def test_non_int_total_steps_raises_config_error(steps):
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(total_steps=steps)
    assert not isinstance(excinfo.value, UnsupportedStepCountError)
    _assert_names_key(excinfo, "total_steps")


@pytest.mark.parametrize("steps", [0, -2])
def test_explicit_bins_with_non_positive_total_steps_raise_config_error(steps):
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(compute_bins=[2], cache_bins=[1], total_steps=steps)
    _assert_names_key(excinfo, "total_steps")


def test_compute_bins_without_cache_bins_raises_config_error_naming_cache_bins():
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(compute_bins=[4, 2], total_steps=6)
    _assert_names_key(excinfo, "cache_bins")


def test_cache_bins_without_compute_bins_raises_config_error_naming_compute_bins():
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(cache_bins=[1, 1], total_steps=6)
    _assert_names_key(excinfo, "compute_bins")


@pytest.mark.parametrize("bad_run", [0, -1, 1.5, 2.0, True, "2"])
def test_compute_bins_with_a_bad_run_length_raise_config_error(bad_run):
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(compute_bins=[3, bad_run], cache_bins=[1])
    _assert_names_key(excinfo, "compute_bins")


@pytest.mark.parametrize("bad_run", [0, -1, 1.5])
def test_cache_bins_with_a_bad_run_length_raise_config_error(bad_run):
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(compute_bins=[3, 1], cache_bins=[bad_run])
    _assert_names_key(excinfo, "cache_bins")


def test_bins_that_are_not_a_list_raise_config_error():
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(compute_bins=4, cache_bins=[1])
    _assert_names_key(excinfo, "compute_bins")


def test_bins_shorter_than_total_steps_raise_config_error_naming_both_bins():
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(compute_bins=[4, 2], cache_bins=[3], total_steps=10)
    _assert_names_key(excinfo, "compute_bins+cache_bins")
    assert "total_steps=10" in str(excinfo.value)


def test_empty_bins_without_total_steps_raise_config_error():
    with pytest.raises(ConfigError) as excinfo:
        steps_mask(compute_bins=[], cache_bins=[])
    _assert_names_key(excinfo, "compute_bins+cache_bins")


# --- string form --------------------------------------------------------------------------------


def test_mask_from_string_parses_0_1_digits():
    assert mask_from_string("111001000101") == [1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1]


def test_mask_to_string_writes_0_1_digits():
    assert mask_to_string([1, 1, 0, 1]) == "1101"


def test_mask_string_round_trips_every_preset():
    for policy in MASK_POLICIES:
        mask = steps_mask(total_steps=50, mask_policy=policy)
        assert mask_from_string(mask_to_string(mask)) == mask


@pytest.mark.parametrize("text", ["1102", "11 01", "1,1,0", "fast", ""])
def test_mask_from_string_rejects_anything_but_0_and_1(text):
    with pytest.raises(ConfigError) as excinfo:
        mask_from_string(text)
    _assert_names_key(excinfo, "steps_computation_mask")


def test_mask_from_string_rejects_non_strings():
    with pytest.raises(ConfigError):
        mask_from_string([1, 0, 1])


def test_mask_to_string_rejects_values_other_than_0_and_1():
    with pytest.raises(ConfigError) as excinfo:
        mask_to_string([1, 2, 0])
    _assert_names_key(excinfo, "steps_computation_mask")


def test_request_mask_expands_a_preset_for_each_step_count():
    from dit_cache_backend.scm import request_mask

    for steps in (28, 40, 50):
        assert request_mask("fast", steps) == steps_mask(total_steps=steps, mask_policy="fast")


def test_request_mask_uses_custom_bins_and_is_none_without_policy_or_steps_or_preset():
    from dit_cache_backend.scm import request_mask

    assert request_mask(None, 8, compute_bins=[2, 1, 3], cache_bins=[1, 1]) == [1, 1, 0, 1, 0, 1, 1, 1]
    assert request_mask(None, 8) is None
    assert request_mask("fast", None) is None
    assert request_mask("fast", 5) is None  # no preset for 5 steps: the request runs unmasked
