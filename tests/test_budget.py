"""The compute budget: per request and CFG branch, computed steps never exceed it and none is left
unspent while steps remain; a budget that cannot hold the warmup is refused."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dit_cache_backend as dcb
from dit_cache_backend.budget import budget_steps, warmup_steps
from dit_cache_backend.errors import ConfigError
from dit_cache_backend.policy import (
    BRANCHES,
    COND,
    UNCOND,
    CallIdentity,
    PolicySettings,
    StepPolicy,
)
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline


def run_request(policy: StepPolicy, steps: int, diffs, branches=(COND,)):
    """One request through the policy; returns the computed steps per branch."""
    computed = {branch: [] for branch in branches}
    for step in range(steps):
        for branch in branches:
            policy.begin_call(CallIdentity(branch=branch, step=step))
            cached, _, _ = policy.decide(
                lambda: diffs[step], has_reference=step > 0, same_shape=True
            )
            if cached:
                policy.mark_cached()
            else:
                computed[branch].append(step)
    return computed


def test_a_budget_count_caps_the_computed_steps_of_a_request():
    policy = StepPolicy(
        PolicySettings(max_warmup_steps=2, threshold=0.0, num_inference_steps=10, compute_budget=4)
    )
    # threshold 0 would compute every step; the budget caps it at 4 (the 2 warmup steps included).
    assert run_request(policy, 10, [0.5] * 10)[COND] == [0, 1, 2, 3]


def test_an_unspent_budget_computes_the_last_steps():
    policy = StepPolicy(
        PolicySettings(max_warmup_steps=2, threshold=0.9, num_inference_steps=10, compute_budget=5)
    )
    # diffs below the threshold would cache all 8 free steps; the budget is spent on the last 3.
    assert run_request(policy, 10, [0.01] * 10)[COND] == [0, 1, 7, 8, 9]


def test_warmup_steps_ahead_are_reserved_from_the_budget():
    policy = StepPolicy(
        PolicySettings(
            max_warmup_steps=5,
            warmup_interval=2,
            threshold=0.0,
            num_inference_steps=8,
            compute_budget=4,
        )
    )
    # warmup steps are 0, 2, 4: step 1 may spend only the 1 step left beyond them, step 3 none.
    assert run_request(policy, 8, [0.5] * 8)[COND] == [0, 1, 2, 4]


def scale_after(diffs):
    """The budget's threshold scale at the step after ``diffs`` (planned: 5 of 10 steps)."""
    policy = StepPolicy(
        PolicySettings(max_warmup_steps=0, threshold=0.1, num_inference_steps=10, compute_budget=5)
    )
    run_request(policy, len(diffs), diffs)
    policy.begin_call(CallIdentity(branch=COND, step=len(diffs)))
    return policy.budget_scale()


def test_the_threshold_relaxes_after_overspending_and_tightens_after_saving():
    # steps 0 and 1 computed: 3 left for 8 steps, so caching gets easier.
    assert scale_after([0.5, 0.5]) == pytest.approx(0.5 / (3 / 8))
    # steps 1 and 2 cached (diffs below 0.1): 4 left for 7 steps, so caching gets harder.
    assert scale_after([0.5, 0.01, 0.01]) == pytest.approx(0.5 / (4 / 7))


def test_each_cfg_branch_has_its_own_budget():
    policy = StepPolicy(
        PolicySettings(
            max_warmup_steps=1,
            threshold=0.0,
            separate_cfg=True,
            num_inference_steps=6,
            compute_budget=3,
        )
    )
    computed = run_request(policy, 6, [0.5] * 6, branches=BRANCHES)
    assert computed == {COND: [0, 1, 2], UNCOND: [0, 1, 2]}


@settings(max_examples=300, deadline=None)
@given(
    steps=st.integers(1, 60),
    warmup=st.integers(0, 8),
    interval=st.integers(1, 3),
    budget=st.one_of(st.integers(1, 70), st.floats(0.01, 1.0)),
    threshold=st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0]),
    continuous=st.sampled_from([-1, 0, 2]),
    cfg=st.booleans(),
    data=st.data(),
)
def test_computed_steps_equal_the_budget_or_the_request_exactly_per_branch(
    steps, warmup, interval, budget, threshold, continuous, cfg, data
):
    fields = dict(
        max_warmup_steps=warmup,
        warmup_interval=interval,
        residual_diff_threshold=threshold,
        max_continuous_cached_steps=continuous,
        num_inference_steps=steps,
        compute_budget=budget,
    )
    try:
        config = dcb.DBCacheConfig(**fields)
    except ConfigError as error:
        needed = max(1, warmup_steps(warmup, interval, 0, steps))
        assert error.key == "compute_budget" and budget_steps(budget, steps) < needed
        return
    policy = StepPolicy(PolicySettings.from_config(config, separate_cfg=cfg))
    diffs = data.draw(st.lists(st.floats(0.0, 0.5), min_size=steps, max_size=steps))
    computed = run_request(policy, steps, diffs, branches=BRANCHES if cfg else (COND,))
    limit = budget_steps(budget, steps)
    for branch_steps in computed.values():
        assert len(branch_steps) == min(limit, steps)


def test_a_budget_smaller_than_the_warmup_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="compute_budget") as raised:
        dcb.DBCacheConfig(max_warmup_steps=8, compute_budget=5)
    assert "8 warmup steps" in str(raised.value)


def test_a_fraction_budget_needs_the_step_count():
    with pytest.raises(ConfigError, match="num_inference_steps"):
        dcb.DBCacheConfig(compute_budget=0.5)


@pytest.mark.parametrize("value", [0, -3, 0.0, 1.5, float("nan"), True, "half"])
def test_a_budget_outside_counts_and_fractions_is_refused(value):
    with pytest.raises(ConfigError, match="compute_budget"):
        dcb.DBCacheConfig(max_warmup_steps=0, compute_budget=value)


def test_dbprune_refuses_the_budget():
    with pytest.raises(ConfigError, match="compute_budget"):
        dcb.DBPruneConfig(max_warmup_steps=0, compute_budget=3)


def generate(pipe, steps):
    with torch.no_grad():
        return pipe(**tiny_flux_inputs(2, num_inference_steps=steps, seed=0)).images


def computed_steps(pipe, steps):
    stats = dcb.summary(pipe, logging=False)[0]
    return steps - len(stats.cached_steps)


def cached_flux(**fields):
    """The tiny Flux pipeline with DBCache F1 and ``fields`` enabled."""
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, cache_config=dcb.DBCacheConfig(Fn_compute_blocks=1, **fields))
    return pipe


def test_the_engine_keeps_a_fraction_budget_on_every_request_length():
    pipe = cached_flux(
        max_warmup_steps=2, residual_diff_threshold=0.0, num_inference_steps=12, compute_budget=0.34
    )
    generate(pipe, 12)
    assert computed_steps(pipe, 12) == 4
    dcb.refresh_context(pipe.transformer, num_inference_steps=20)
    generate(pipe, 20)
    assert computed_steps(pipe, 20) == 6


def test_a_refresh_to_a_request_too_short_for_the_warmup_changes_nothing():
    pipe = cached_flux(max_warmup_steps=4, num_inference_steps=20, compute_budget=0.25)
    with pytest.raises(ConfigError, match="compute_budget"):
        dcb.refresh_context(pipe.transformer, num_inference_steps=12)  # 3 steps for 4 warmup steps
    generate(pipe, 20)
    assert computed_steps(pipe, 20) == 5


def test_a_refresh_sets_a_new_budget_for_the_next_request():
    pipe = cached_flux(max_warmup_steps=2, residual_diff_threshold=0.0, num_inference_steps=12)
    dcb.refresh_context(pipe.transformer, compute_budget=5)
    generate(pipe, 12)
    assert computed_steps(pipe, 12) == 5


def test_the_serving_backend_sizes_a_fraction_budget_for_each_request():
    from dit_cache_backend import CacheDiTBackend

    pipe = tiny_flux_pipeline()
    backend = CacheDiTBackend(
        {"max_warmup_steps": 2, "residual_diff_threshold": 0.0, "compute_budget": 0.34}
    )
    backend.enable(pipe)
    backend.refresh(pipe, 12)
    generate(pipe, 12)
    assert computed_steps(pipe, 12) == 4
    backend.refresh(pipe, 20)
    generate(pipe, 20)
    assert computed_steps(pipe, 20) == 6


@pytest.mark.parametrize("flat", [{"compute_budget": 1.5}, {"compute_budget": 2, "max_warmup_steps": 4}])
def test_a_serving_budget_that_cannot_hold_is_refused_before_any_request(flat):
    from dit_cache_backend import CacheDiTBackend

    with pytest.raises(ConfigError, match="compute_budget"):
        CacheDiTBackend(flat)
