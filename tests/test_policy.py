"""The tensor-free decision policy: counters, call identity, gates and refresh rules."""

from dit_cache_backend.policy import COND, UNCOND, CallIdentity, PolicySettings, StepPolicy


def drive(policy: StepPolicy, diffs, identity=None):
    """Run one call per diff through the policy's rule; returns the cached steps of the cond branch."""
    for diff in diffs:
        policy.begin_call(identity)
        cached, _, _ = policy.decide(lambda: diff, has_reference=True, same_shape=True)
        if cached:
            policy.mark_cached()
    return policy.histories[COND].cached_steps


def test_warmup_steps_are_never_cached():
    policy = StepPolicy(PolicySettings(max_warmup_steps=3, threshold=0.5))
    assert drive(policy, [0.0] * 6) == [3, 4, 5]


def test_warmup_interval_leaves_holes_that_may_cache():
    policy = StepPolicy(PolicySettings(max_warmup_steps=4, warmup_interval=2, threshold=0.5))
    assert drive(policy, [0.0] * 6) == [1, 3, 4, 5]


def test_max_continuous_cached_steps_caps_each_run():
    policy = StepPolicy(
        PolicySettings(max_warmup_steps=2, threshold=0.5, max_continuous_cached_steps=2)
    )
    assert drive(policy, [0.0] * 12) == [2, 3, 5, 6, 8, 9, 11]


def test_max_cached_steps_caps_the_request():
    policy = StepPolicy(PolicySettings(max_warmup_steps=2, threshold=0.5, max_cached_steps=3))
    assert drive(policy, [0.0] * 12) == [2, 3, 4]


def test_zero_max_continuous_cached_steps_never_caches():
    policy = StepPolicy(
        PolicySettings(max_warmup_steps=0, threshold=0.5, max_continuous_cached_steps=0)
    )
    assert drive(policy, [0.0] * 5) == []


def test_accumulated_diff_limit_stops_caching_once_reached():
    policy = StepPolicy(
        PolicySettings(max_warmup_steps=1, threshold=0.5, max_accumulated_diff=0.3)
    )
    assert drive(policy, [0.1] * 8) == [1, 2, 3]
    assert sorted(policy.histories[COND].residual_diffs) == [1, 2, 3]


def test_only_the_first_diff_of_a_step_is_recorded():
    policy = StepPolicy(PolicySettings(max_warmup_steps=0, threshold=0.5))
    policy.begin_call()
    policy.record_diff(0.2)
    policy.record_diff(0.4)
    assert policy.histories[COND].residual_diffs == {0: 0.2}
    assert policy.histories[COND].accumulated_diff == 0.2


def test_negative_diffs_are_recorded_but_not_accumulated():
    policy = StepPolicy(PolicySettings(max_warmup_steps=0, threshold=0.5))
    policy.begin_call()
    policy.record_diff(-2.0)
    assert policy.histories[COND].residual_diffs == {0: -2.0}
    assert policy.histories[COND].accumulated_diff == 0.0


def test_mask_one_steps_compute_and_static_mask_zero_steps_cache_without_diff():
    policy = StepPolicy(
        PolicySettings(max_warmup_steps=8, threshold=0.08, mask=(1, 1, 1, 0, 0, 1), static_mask=True)
    )
    assert drive(policy, [0.9] * 6) == [3, 4]
    assert policy.histories[COND].residual_diffs == {}


def test_mask_limits_warmup_to_its_leading_ones():
    policy = StepPolicy(PolicySettings(max_warmup_steps=8, mask=(1, 1, 0, 1)))
    assert [step for step in range(8) if policy.is_warmup(step)] == [0, 1]


def test_warmup_costs_no_memory_however_large_max_warmup_steps_is():
    policy = StepPolicy(PolicySettings(max_warmup_steps=10**12, warmup_interval=3))
    assert policy.is_warmup(0) and policy.is_warmup(3 * 10**9)
    assert not policy.is_warmup(1)


def test_steps_past_the_end_of_a_static_mask_compute():
    policy = StepPolicy(
        PolicySettings(max_warmup_steps=0, threshold=0.5, mask=(1, 0), static_mask=True)
    )
    assert drive(policy, [0.0] * 4) == [1]
    assert [d.reason for d in _decisions(policy, 2)] == ["past_mask", "past_mask"]


def _decisions(policy, calls):
    """Ask the rule ``calls`` more times and return the decisions it recorded."""
    for _ in range(calls):
        policy.begin_call()
        cached, reason, diff = policy.decide(lambda: 0.0, has_reference=True, same_shape=True)
        policy.record_decision(cached, reason, diff)
    return policy.decisions[-calls:]


def test_threshold_zero_never_reaches_the_diff():
    policy = StepPolicy(PolicySettings(max_warmup_steps=0, threshold=0.0))
    policy.begin_call()

    def measure():
        raise AssertionError("the diff was measured")

    assert policy.decide(measure, has_reference=True, same_shape=True) == (
        False, "threshold_disabled", None
    )


def test_the_rule_computes_without_reference_or_on_a_shape_change_and_always_caches_at_one():
    policy = StepPolicy(PolicySettings(max_warmup_steps=0, threshold=0.5))
    policy.begin_call()
    assert policy.decide(lambda: 0.0, has_reference=False, same_shape=False) == (
        False, "no_reference", None
    )
    assert policy.decide(lambda: 0.0, has_reference=True, same_shape=False) == (
        False, "shape_changed", -2.0
    )
    always = StepPolicy(PolicySettings(max_warmup_steps=0, threshold=1.0))
    always.begin_call()
    assert always.decide(lambda: 5.0, has_reference=True, same_shape=True) == (
        True, "threshold_always", -1.0
    )


def test_a_non_finite_diff_computes_and_is_not_recorded():
    policy = StepPolicy(PolicySettings(max_warmup_steps=0, threshold=0.5))
    policy.begin_call()
    nan = float("nan")
    assert policy.decide(lambda: nan, has_reference=True, same_shape=True) == (
        False, "nonfinite_diff", None
    )
    assert policy.histories[COND].residual_diffs == {}


def test_the_cfg_branch_reuses_the_cond_diff_of_the_same_block_when_asked_to():
    settings = PolicySettings(
        max_warmup_steps=0, threshold=0.5, separate_cfg=True, cfg_diff_compute_separate=False
    )
    policy = StepPolicy(settings)
    policy.begin_call(CallIdentity(COND))
    policy.decide(lambda: 0.25, has_reference=True, same_shape=True, block=3)
    policy.begin_call(CallIdentity(UNCOND))

    def measure():
        raise AssertionError("the CFG branch measured its own diff")

    assert policy.decide(measure, has_reference=True, same_shape=True, block=3) == (
        True, "diff", 0.25
    )


def test_counted_calls_alternate_branches_under_separate_cfg():
    policy = StepPolicy(PolicySettings(separate_cfg=True))
    seen = []
    for _ in range(6):
        policy.begin_call()
        seen.append((policy.step, policy.branch))
    assert seen == [(0, COND), (0, UNCOND), (1, COND), (1, UNCOND), (2, COND), (2, UNCOND)]


def test_cfg_compute_first_makes_the_first_call_of_each_pair_the_cfg_branch():
    policy = StepPolicy(PolicySettings(separate_cfg=True, cfg_compute_first=True))
    seen = []
    for _ in range(4):
        policy.begin_call()
        seen.append((policy.step, policy.branch))
    assert seen == [(0, UNCOND), (0, COND), (1, UNCOND), (1, COND)]


def test_named_branches_advance_the_step_when_a_branch_repeats():
    policy = StepPolicy(PolicySettings(separate_cfg=False))
    seen = []
    for name in ["cond", "uncond", "cond", "uncond", "cond"]:
        policy.begin_call(CallIdentity.from_context_name(name))
        seen.append((policy.step, policy.branch))
    assert seen == [(0, COND), (0, UNCOND), (1, COND), (1, UNCOND), (2, COND)]


def test_named_cond_only_calls_are_consecutive_steps_even_if_separate_cfg_was_assumed():
    policy = StepPolicy(PolicySettings(separate_cfg=True))
    steps = []
    for _ in range(3):
        policy.begin_call(CallIdentity.from_context_name("cond"))
        steps.append((policy.step, policy.branch))
    assert steps == [(0, COND), (1, COND), (2, COND)]


def test_negative_prompt_context_names_are_the_cfg_branch():
    assert CallIdentity.from_context_name("negative").branch == UNCOND
    assert CallIdentity.from_context_name("uncond").branch == UNCOND
    assert CallIdentity.from_context_name("cond").branch == COND


def test_each_context_counts_its_own_steps_from_the_first_step_index_it_sees():
    policy = StepPolicy(PolicySettings())
    steps = []
    for index, name in [(5, "cond"), (5, "uncond"), (6, "cond"), (6, "uncond"), (9, "cond")]:
        policy.begin_call(CallIdentity.from_context_name(name, index))
        steps.append((policy.step, policy.branch))
    assert steps == [(0, COND), (0, UNCOND), (1, COND), (1, UNCOND), (2, COND)]


def test_refresh_is_due_exactly_when_step_n_would_begin():
    policy = StepPolicy(PolicySettings(num_inference_steps=3))
    reasons = []
    for _ in range(3):
        reasons.append(policy.refresh_reason(None))
        policy.begin_call()
    reasons.append(policy.refresh_reason(None))
    assert reasons == [None, None, None, "num_inference_steps"]


def test_refresh_is_due_when_an_explicit_step_goes_backwards():
    policy = StepPolicy(PolicySettings())
    policy.begin_call(CallIdentity(branch=COND, step=0))
    policy.begin_call(CallIdentity(branch=COND, step=1))
    assert policy.refresh_reason(CallIdentity(branch=COND, step=0)) == "new_request"
    assert policy.refresh_reason(CallIdentity(branch=UNCOND, step=1)) is None


def test_force_refresh_hint_counts_transformer_calls():
    policy = StepPolicy(PolicySettings(separate_cfg=True, force_refresh_step_hint=4))
    for _ in range(3):
        policy.begin_call()
    assert policy.refresh_reason(None) is None
    policy.begin_call()
    assert policy.refresh_reason(None) == "force_refresh_step_hint"


def test_first_call_of_a_request_clears_the_request_history():
    policy = StepPolicy(PolicySettings(max_warmup_steps=0, threshold=0.5))
    drive(policy, [0.0, 0.0])
    fresh = StepPolicy(policy.settings)
    fresh.carry_totals_from(policy)
    fresh.begin_call()
    assert fresh.histories[COND].cached_steps == []
    assert fresh.histories[COND].accumulated_cached_steps == 2
