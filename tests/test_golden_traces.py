"""The golden traces of the reference spec (cache_dit_spec.md §12.2–§12.10) on both engines.

Each test is one behaviour, checked against cache-dit 1.5.3 itself (``engine.name == "cache_dit"``)
and against our engine (``"ours"``). Where our engine deliberately deviates (DESIGN.md behaviour
rule 2, docs/compatibility.md), the test name says ``deliberate_deviation`` and the test asserts
cache-dit's trace for cache-dit and our documented behaviour for ours.

Toys (tests/toys.py): the §12.1 linear toy — 8 Pattern_3 blocks, block i adds ``temb·(i+1)`` to
``ones(1,4,8)`` — so the F1 residual is ``t``, the relative diff against the last computed step
c is ``|t − t_c| / t_c``, a computed step outputs ``1 + 36t`` and a cached one (F1B0) outputs
``1 + t + 35·t_c``. Unless a test says otherwise: F1B0, ``enable_separate_cfg=False``, pipeline
mode.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Sequence

import pytest
import torch
from diffusers import FluxTransformer2DModel

import toys
from engines import ENGINE_NAMES, Engine, load_engine

SCHED_12_2 = [1.0, 1.05, 1.10, 1.15, 1.30, 1.32, 1.34, 1.36, 1.38, 1.40]
DIFFS_12_2 = {1: 0.05, 2: 0.10, 3: 0.0455, 4: 0.1818, 5: 0.0154, 6: 0.0308, 7: 0.0462,
              8: 0.0615, 9: 0.0769}
SCHED_12_3 = [1.0 + 0.01 * k for k in range(12)]
SCHED_12_4 = [1.0, 1.05, 1.10, 1.15, 1.30, 1.32, 1.34, 1.36]
SCHED_12_7 = [float(k) for k in range(1, 11)]
MASK_12_8 = [1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1]


@pytest.fixture(params=ENGINE_NAMES)
def engine(request: pytest.FixtureRequest) -> Engine:
    return load_engine(request.param)


@dataclasses.dataclass
class Run:
    stats: Any  # CacheStats of the cached block list
    outputs: List[float]  # one value per transformer call (the toys' outputs are uniform)
    steps: List[int]  # diffusion-step index of every transformer call


def value(output: torch.Tensor) -> float:
    assert torch.all(output == output.flatten()[0]), "toy outputs are uniform"
    return output.flatten()[0].item()


def run_linear(
    engine: Engine,
    schedule: Sequence[float],
    *,
    cfg: bool = False,
    taylorseer_order: int | None = None,
    **cache_kwargs: Any,
) -> Run:
    """One pipeline call of the §12.1 toy (twice per step for ``cfg``), F1B0 unless overridden."""
    config = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "enable_separate_cfg": False}
    config.update(cache_kwargs)
    toy = toys.linear_toy()
    pipe = toys.make_pipeline(toy, cfg=cfg)
    adapter = engine.adapter(toy, pipe=pipe, separate_cfg=bool(config["enable_separate_cfg"]))
    engine.enable(adapter, taylorseer_order=taylorseer_order, **config)
    steps = engine.record_steps(toy)
    outputs = [value(out) for out in pipe(schedule)]
    return Run(engine.stats(pipe), outputs, steps)


def computed_calls(outputs: Sequence[float], schedule: Sequence[float]) -> List[int]:
    """Calls whose output is the true ``1 + 36t`` of the linear toy (so the middle blocks ran)."""
    return [
        call for call, (out, t) in enumerate(zip(outputs, schedule))
        if out == pytest.approx(1 + 36 * t)
    ]


def diffs(recorded: Dict[str, float]) -> Dict[int, float]:
    return {int(step): diff for step, diff in recorded.items()}


def approx(expected: Dict[int, float]) -> Any:
    return pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# §12.2 Diff reference and gates (threshold 0.08, W1, F1B0)
# ---------------------------------------------------------------------------------------------


def test_diff_is_relative_l1_of_fn_residual_against_last_computed_step(engine: Engine) -> None:
    run = run_linear(engine, SCHED_12_2, max_warmup_steps=1, residual_diff_threshold=0.08)
    assert run.stats.cached_steps == [1, 3, 5, 6, 7, 8, 9]
    # Step 3 is compared with step 2 (computed), step 4 with step 2 too (step 3 was cached).
    assert diffs(run.stats.residual_diffs) == approx(DIFFS_12_2)


def test_cached_step_output_is_fn_output_plus_middle_residual_of_last_computed_step(
    engine: Engine,
) -> None:
    run = run_linear(engine, SCHED_12_2, max_warmup_steps=1, residual_diff_threshold=0.08)
    last_computed = {1: 1.0, 3: 1.10, 5: 1.30, 6: 1.30, 7: 1.30, 8: 1.30, 9: 1.30}
    expected = [
        1 + t + 35 * last_computed[step] if step in last_computed else 1 + 36 * t
        for step, t in enumerate(SCHED_12_2)
    ]
    assert run.outputs == pytest.approx(expected, rel=1e-6)


def test_wider_fn_probe_gives_the_same_trace_on_the_linear_toy(engine: Engine) -> None:
    run = run_linear(
        engine, SCHED_12_2, Fn_compute_blocks=2, max_warmup_steps=1, residual_diff_threshold=0.08
    )
    assert run.stats.cached_steps == [1, 3, 5, 6, 7, 8, 9]
    assert diffs(run.stats.residual_diffs) == approx(DIFFS_12_2)


def test_every_pipeline_call_starts_a_fresh_context(engine: Engine) -> None:
    toy = toys.linear_toy()
    pipe = toys.make_pipeline(toy)
    engine.enable(
        engine.adapter(toy, pipe=pipe),
        Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1,
        residual_diff_threshold=0.08, enable_separate_cfg=False,
    )
    first = pipe(SCHED_12_2)
    assert engine.stats(pipe).cached_steps == [1, 3, 5, 6, 7, 8, 9]
    second = pipe(SCHED_12_2)
    assert engine.stats(pipe).cached_steps == [1, 3, 5, 6, 7, 8, 9]
    assert diffs(engine.stats(pipe).residual_diffs) == approx(DIFFS_12_2)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_accumulated_diff_limit_stops_caching_and_diff_recording(engine: Engine) -> None:
    run = run_linear(
        engine, SCHED_12_2, max_warmup_steps=1, residual_diff_threshold=0.5,
        max_accumulated_residual_diff_threshold=0.3,
    )
    assert run.stats.cached_steps == [1, 2, 3, 4]
    # All compared with step 0; from step 5 on the limit refuses before any diff is computed.
    assert diffs(run.stats.residual_diffs) == approx({1: 0.05, 2: 0.10, 3: 0.15, 4: 0.30})


def test_threshold_of_one_or_more_always_caches_and_records_minus_one(engine: Engine) -> None:
    run = run_linear(engine, SCHED_12_2, max_warmup_steps=2, residual_diff_threshold=1.0)
    assert run.stats.cached_steps == list(range(2, 10))
    assert diffs(run.stats.residual_diffs) == {step: -1.0 for step in range(2, 10)}


def test_threshold_of_zero_never_caches_and_records_nothing(engine: Engine) -> None:
    run = run_linear(engine, SCHED_12_2, max_warmup_steps=1, residual_diff_threshold=0.0)
    assert run.stats.cached_steps == []
    assert dict(run.stats.residual_diffs) == {}


# ---------------------------------------------------------------------------------------------
# §12.3 Warmup / interval / max cached / max continuous (1.5.3 accounting), threshold 0.5
# ---------------------------------------------------------------------------------------------


def test_warmup_steps_are_always_computed(engine: Engine) -> None:
    run = run_linear(engine, SCHED_12_3, max_warmup_steps=2, residual_diff_threshold=0.5)
    assert run.stats.cached_steps == list(range(2, 12))


def test_warmup_interval_leaves_holes_that_may_be_cached(engine: Engine) -> None:
    run = run_linear(
        engine, SCHED_12_3, max_warmup_steps=2, warmup_interval=2, residual_diff_threshold=0.5
    )
    assert run.stats.cached_steps == list(range(1, 12))  # warmup = {0}


def test_max_continuous_cached_steps_caps_each_run_of_cached_steps(engine: Engine) -> None:
    run = run_linear(
        engine, SCHED_12_3, max_warmup_steps=2, residual_diff_threshold=0.5,
        max_continuous_cached_steps=2,
    )
    assert run.stats.cached_steps == [2, 3, 5, 6, 8, 9, 11]


def test_max_cached_steps_caps_the_whole_request(engine: Engine) -> None:
    run = run_linear(
        engine, SCHED_12_3, max_warmup_steps=2, residual_diff_threshold=0.5, max_cached_steps=3
    )
    assert run.stats.cached_steps == [2, 3, 4]


def test_max_continuous_one_with_interval_warmup_alternates_cache_and_compute(
    engine: Engine,
) -> None:
    run = run_linear(
        engine, SCHED_12_3, max_warmup_steps=4, warmup_interval=2, residual_diff_threshold=0.5,
        max_continuous_cached_steps=1,
    )
    assert run.stats.cached_steps == [1, 3, 5, 7, 9, 11]  # 1.5.2 would give 1,4,5,7,8,10,11


def test_max_continuous_one_allows_single_cached_steps_only(engine: Engine) -> None:
    schedule = [1.0 + 0.001 * k for k in range(19)]
    run = run_linear(
        engine, schedule, max_warmup_steps=4, residual_diff_threshold=0.5,
        max_continuous_cached_steps=1,
    )
    assert run.stats.cached_steps == list(range(4, 19, 2))


def test_max_continuous_three_caps_runs_at_three(engine: Engine) -> None:
    schedule = [1.0 + 0.001 * k for k in range(19)]
    run = run_linear(
        engine, schedule, max_warmup_steps=4, residual_diff_threshold=0.5,
        max_continuous_cached_steps=3,
    )
    assert run.stats.cached_steps == [4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 18]


def test_a_compute_step_forced_by_the_diff_restarts_the_continuous_count(engine: Engine) -> None:
    schedule = [1.0, 1.0, 1.001, 1.002, 1.5] + [1.5 + 0.001 * k for k in range(1, 7)]
    run = run_linear(
        engine, schedule, max_warmup_steps=2, residual_diff_threshold=0.1,
        max_continuous_cached_steps=3,
    )
    assert 4 not in run.stats.cached_steps  # computed: diff 0.5 vs step 1
    assert run.stats.cached_steps == [2, 3, 5, 6, 7, 9, 10]  # 1.5.2: 2,3,5,6,8,9,10


# ---------------------------------------------------------------------------------------------
# §12.4 Separate CFG: cond temb t, uncond temb 2t + 0.3(t−1); thr 0.08, W1, 8 steps
# ---------------------------------------------------------------------------------------------

COND_DIFFS_12_4 = {1: 0.05, 2: 0.10, 3: 0.0455, 4: 0.1818, 5: 0.0154, 6: 0.0308, 7: 0.0462}
UNCOND_DIFFS_12_4 = {1: 0.0575, 2: 0.115, 3: 0.0516, 4: 0.2063, 5: 0.0171, 6: 0.0342, 7: 0.0513}


def run_cfg(engine: Engine, **cache_kwargs: Any) -> Run:
    return run_linear(
        engine, SCHED_12_4, cfg=True, max_warmup_steps=1, residual_diff_threshold=0.08,
        **cache_kwargs,
    )


def test_separate_cfg_gives_each_branch_its_own_decisions_and_diffs(engine: Engine) -> None:
    run = run_cfg(engine, enable_separate_cfg=True)
    assert run.stats.cached_steps == [1, 3, 5, 6, 7]
    assert run.stats.cfg_cached_steps == [1, 3, 5, 6, 7]
    assert diffs(run.stats.residual_diffs) == approx(COND_DIFFS_12_4)
    assert diffs(run.stats.cfg_residual_diffs) == approx(UNCOND_DIFFS_12_4)


def test_separate_cfg_pairs_share_a_diffusion_step(engine: Engine) -> None:
    run = run_cfg(engine, enable_separate_cfg=True)
    assert run.steps == [step for step in range(8) for _ in range(2)]
    assert run.stats.accumulated_executed_steps == 8
    assert run.stats.accumulated_transformer_executed_steps == 16


def test_cfg_branch_reuses_the_cond_diff_when_not_computed_separately(engine: Engine) -> None:
    run = run_cfg(engine, enable_separate_cfg=True, cfg_diff_compute_separate=False)
    assert run.stats.cfg_cached_steps == [1, 3, 5, 6, 7]
    assert diffs(run.stats.cfg_residual_diffs) == approx(COND_DIFFS_12_4)
    assert diffs(run.stats.residual_diffs) == approx(COND_DIFFS_12_4)


def test_cfg_compute_first_makes_the_first_call_of_a_pair_the_cfg_branch(engine: Engine) -> None:
    run = run_cfg(
        engine, enable_separate_cfg=True, cfg_diff_compute_separate=False, cfg_compute_first=True
    )
    # The cond call (first) is now "CFG"; it runs before the non-CFG call, so no diff to reuse.
    assert diffs(run.stats.cfg_residual_diffs) == approx(COND_DIFFS_12_4)
    assert diffs(run.stats.residual_diffs) == approx(UNCOND_DIFFS_12_4)
    assert run.steps == [step for step in range(8) for _ in range(2)]


def test_two_calls_per_step_without_separate_cfg_count_as_sixteen_steps(engine: Engine) -> None:
    run = run_cfg(engine, enable_separate_cfg=False)
    assert run.steps == list(range(16))
    assert run.stats.cached_steps == []
    # Nothing is cached, so every call compares with the previous call: cond↔uncond residuals.
    residuals = [r for t in SCHED_12_4 for r in (t, toys.uncond_temb(t))]
    expected = {j: abs(residuals[j] - residuals[j - 1]) / residuals[j - 1] for j in range(1, 16)}
    assert diffs(run.stats.residual_diffs) == approx(expected)


# ---------------------------------------------------------------------------------------------
# §12.5 Context lifetime: persistent (transformer-only) mode and refresh hints (W2, thr 0.5)
# ---------------------------------------------------------------------------------------------

# Three back-to-back requests of 6 forwards; distinct values, so a cached call never looks computed.
REQUESTS = [[1.0 + 0.1 * r + 0.01 * k for k in range(6)] for r in range(3)]


def persistent_linear(engine: Engine, **cache_kwargs: Any) -> toys.LinearToy:
    toy = toys.linear_toy()
    engine.enable(
        engine.adapter(toy),
        Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
        residual_diff_threshold=0.5, **cache_kwargs,
    )
    return toy


def serve(toy: toys.LinearToy, schedule: Sequence[float]) -> List[float]:
    return [value(toy(**toy.inputs(t, toys.COND))) for t in schedule]


def test_persistent_mode_with_num_inference_steps_refreshes__deliberate_deviation(
    engine: Engine,
) -> None:
    """Deviation (a): we refresh at exactly N steps; cache-dit refreshes a call late and drifts."""
    toy = persistent_linear(engine, num_inference_steps=6)
    steps = engine.record_steps(toy)
    computed = [computed_calls(serve(toy, request), request) for request in REQUESTS]
    requests = [steps[0:6], steps[6:12], steps[12:18]]
    if engine.is_reference:
        assert requests == [[0, 1, 2, 3, 4, 5], [6, 0, 1, 2, 3, 4], [5, 6, 0, 1, 2, 3]]
        # Request 2's first call is "step 6" of request 1's context: cached with its buffers.
        assert computed == [[0, 1], [1, 2], [2, 3]]
    else:
        assert requests == [list(range(6))] * 3
        assert computed == [[0, 1]] * 3


def test_persistent_mode_without_num_inference_steps_keeps_counting(engine: Engine) -> None:
    toy = persistent_linear(engine)
    steps = engine.record_steps(toy)
    serve(toy, REQUESTS[0])
    second = serve(toy, REQUESTS[1])
    assert steps == list(range(12))
    assert computed_calls(second, REQUESTS[1]) == []  # warmup happened once, in request 1


def test_refresh_context_starts_the_next_request_at_step_zero(engine: Engine) -> None:
    toy = persistent_linear(engine)
    steps = engine.record_steps(toy)
    computed = []
    for request in REQUESTS[:2]:
        engine.module.refresh_context(toy, num_inference_steps=6)
        computed.append(computed_calls(serve(toy, request), request))
    assert steps == list(range(6)) * 2
    assert computed == [[0, 1], [0, 1]]
    assert engine.stats(toy).cached_steps == [2, 3, 4, 5]


SCHED_10 = [1.0 + 0.01 * k for k in range(10)]


def test_force_refresh_hint_once_restarts_the_context_one_time(engine: Engine) -> None:
    run = run_linear(
        engine, SCHED_10, max_warmup_steps=2, residual_diff_threshold=0.5,
        force_refresh_step_hint=3, force_refresh_step_policy="once",
    )
    assert run.steps == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]
    assert computed_calls(run.outputs, SCHED_10) == [0, 1, 3, 4]  # warmup re-applied


def test_force_refresh_hint_repeat_restarts_the_context_every_h_calls(engine: Engine) -> None:
    run = run_linear(
        engine, SCHED_10, max_warmup_steps=2, residual_diff_threshold=0.5,
        force_refresh_step_hint=3, force_refresh_step_policy="repeat",
    )
    assert run.steps == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert computed_calls(run.outputs, SCHED_10) == [0, 1, 3, 4, 6, 7, 9]


def test_pipeline_longer_than_num_inference_steps_refreshes__deliberate_deviation(
    engine: Engine,
) -> None:
    """Deviation (a) in pipeline mode: N=4 and 10 calls; cache-dit refreshes after N+1 steps."""
    run = run_linear(
        engine, SCHED_10, max_warmup_steps=2, residual_diff_threshold=0.5, num_inference_steps=4
    )
    if engine.is_reference:
        assert run.steps == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
        assert computed_calls(run.outputs, SCHED_10) == [0, 1, 5, 6]
    else:
        assert run.steps == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
        assert computed_calls(run.outputs, SCHED_10) == [0, 1, 4, 5, 8, 9]


# ---------------------------------------------------------------------------------------------
# §12.6 Bn > 0: the back blocks run on F output + cached middle residual
# ---------------------------------------------------------------------------------------------


def test_back_blocks_rescale_the_reconstruction_on_cached_steps(engine: Engine) -> None:
    toy = toys.bn_toy()
    pipe = toys.make_pipeline(toy)
    engine.enable(
        engine.adapter(toy, pipe=pipe, pattern=0),
        Fn_compute_blocks=1, Bn_compute_blocks=2, max_warmup_steps=3,
        residual_diff_threshold=1.0, enable_separate_cfg=False,
    )
    outputs = pipe([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert engine.stats(pipe).cached_steps == [3, 4, 5]
    # Cached step: t·1 (F) + 9·t_last (M residual, t_last = 3) + t·(5+6) (B) + 410·t (trailing).
    expected_h = [431.0, 862.0, 1293.0, 1715.0, 2137.0, 2559.0]
    assert [value(h) for h, _ in outputs] == pytest.approx(expected_h, rel=1e-6)
    assert [value(e) for _, e in outputs] == pytest.approx([10 * h for h in expected_h], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# §12.7 TaylorSeer (thr 1.0: every post-warmup step is cached; t = 1..10; true output − 1 = 36t)
#
# Both engines keep cache-dit 1.5.3's clock: a stream's counter starts at −1 on its first computed
# step and differences are refused while it is ≤ 1, so the first difference is formed on a computed
# step ≥ 3 steps after the stream's first one. (We used to form them as soon as two computed steps
# existed; from the first, fastest-changing steps that cost 8–15 dB with order 2 — issue 13.)
# On the linear toy the middle residual is m(step) = 35·t(step) = 35·(step+1); F1 adds t, so
# output − 1 = t + m̂.
# * W2/W3: no difference is ever formed ⇒ plain reuse of the last computed residual.
# * W4: step 3 forms the slope 35/step ⇒ exact 36t.
# * W7 I2 (warmup 0,2,4,6): step 3 reuses step 2; step 5 extrapolates from steps 2 and 4.
# * Quadratic t = (k+1)², W5: differences from steps 3 and 4.
# ---------------------------------------------------------------------------------------------

LINEAR_TRUE = [36.0 * t for t in SCHED_12_7]


def taylor_outputs(
    engine: Engine, schedule: Sequence[float], order: int | None, **cache_kwargs: Any
) -> List[float]:
    run = run_linear(
        engine, schedule, taylorseer_order=order, residual_diff_threshold=1.0, **cache_kwargs
    )
    return [out - 1 for out in run.outputs]


def test_without_calibrator_cached_steps_reuse_the_last_middle_residual(engine: Engine) -> None:
    outputs = taylor_outputs(engine, SCHED_12_7, None, max_warmup_steps=4)
    assert outputs == pytest.approx([36, 72, 108, 144, 145, 146, 147, 148, 149, 150], rel=1e-6)


@pytest.mark.parametrize("order", [1, 2])
def test_taylorseer_after_two_warmup_steps_only_reuses(engine: Engine, order: int) -> None:
    """No computed step is 3 steps after the first: no difference, plain reuse (cache-dit)."""
    outputs = taylor_outputs(engine, SCHED_12_7, order, max_warmup_steps=2)
    assert outputs == pytest.approx([36, 72] + list(range(73, 81)), rel=1e-5)


@pytest.mark.parametrize("order", [1, 2])
def test_taylorseer_after_three_warmup_steps_only_reuses(engine: Engine, order: int) -> None:
    outputs = taylor_outputs(engine, SCHED_12_7, order, max_warmup_steps=3)
    assert outputs == pytest.approx([36, 72, 108] + list(range(109, 116)), rel=1e-5)


@pytest.mark.parametrize("order", [1, 2])
def test_taylorseer_after_four_warmup_steps_is_exact_on_a_linear_signal(
    engine: Engine, order: int
) -> None:
    outputs = taylor_outputs(engine, SCHED_12_7, order, max_warmup_steps=4)
    assert outputs == pytest.approx(LINEAR_TRUE, rel=1e-5)


def test_taylorseer_with_interval_warmup_reuses_until_a_difference_exists(engine: Engine) -> None:
    """Step 3 reuses step 2 (no difference yet); from step 4 on, the slope of steps 2 and 4."""
    outputs = taylor_outputs(engine, SCHED_12_7, 1, max_warmup_steps=7, warmup_interval=2)
    assert outputs == pytest.approx([36, 37, 108, 109, 180, 216, 252, 288, 324, 360], rel=1e-5)


QUADRATIC = [float((k + 1) ** 2) for k in range(10)]


def test_taylorseer_order_one_extrapolates_linearly_on_a_quadratic_signal(engine: Engine) -> None:
    outputs = taylor_outputs(engine, QUADRATIC, 1, max_warmup_steps=5)
    assert outputs[5:] == pytest.approx([1226, 1554, 1884, 2216, 2550], rel=1e-5)
    assert outputs[:5] == pytest.approx([36 * t for t in QUADRATIC[:5]], rel=1e-6)


@pytest.mark.parametrize("order", [2, 3])
def test_taylorseer_higher_orders_use_divided_differences_of_the_latest_spacing(
    engine: Engine, order: int
) -> None:
    outputs = taylor_outputs(engine, QUADRATIC, order, max_warmup_steps=5)
    assert outputs[5:] == pytest.approx([1261, 1694, 2199, 2776, 3425], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# §12.8 SCM: mask 111001000101, W8, thr 0.08, 12 steps
# ---------------------------------------------------------------------------------------------

SMALL_CHANGES = [1.0 + 0.01 * k for k in range(12)]
BIG_CHANGES = [1.0 + 0.2 * k for k in range(12)]


def run_scm(engine: Engine, schedule: Sequence[float], policy: str, **cache_kwargs: Any) -> Run:
    config = {"max_warmup_steps": 8, "residual_diff_threshold": 0.08,
              "steps_computation_mask": MASK_12_8, "steps_computation_policy": policy}
    config.update(cache_kwargs)
    return run_linear(engine, schedule, **config)


def test_dynamic_mask_zero_steps_go_through_the_threshold(engine: Engine) -> None:
    run = run_scm(engine, SMALL_CHANGES, "dynamic")
    assert run.stats.cached_steps == [3, 4, 6, 7, 8, 10]
    assert sorted(diffs(run.stats.residual_diffs)) == [3, 4, 6, 7, 8, 10]


def test_dynamic_mask_zero_steps_compute_when_the_diff_is_large(engine: Engine) -> None:
    run = run_scm(engine, BIG_CHANGES, "dynamic")
    assert run.stats.cached_steps == [10]
    assert diffs(run.stats.residual_diffs) == approx(
        {3: 0.1429, 4: 0.125, 6: 0.1, 7: 0.0909, 8: 0.0833, 10: 0.0714}
    )


@pytest.mark.parametrize("schedule", [SMALL_CHANGES, BIG_CHANGES], ids=["small", "big"])
def test_static_mask_caches_every_mask_zero_step_without_a_diff(
    engine: Engine, schedule: List[float]
) -> None:
    run = run_scm(engine, schedule, "static")
    assert run.stats.cached_steps == [3, 4, 6, 7, 8, 10]
    assert dict(run.stats.residual_diffs) == {}


def test_static_mask_ignores_max_continuous_cached_steps(engine: Engine) -> None:
    run = run_scm(engine, SMALL_CHANGES, "static", max_continuous_cached_steps=1)
    assert run.stats.cached_steps == [3, 4, 6, 7, 8, 10]


def test_mask_one_steps_are_computed_even_after_warmup(engine: Engine) -> None:
    run = run_scm(
        engine, SMALL_CHANGES, "dynamic", max_warmup_steps=2,
        steps_computation_mask=[1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1],
    )
    assert run.stats.cached_steps == list(range(4, 11))


# ---------------------------------------------------------------------------------------------
# §12.9 Tiny Flux, transformer-only, F1B0 W2 R0.3 N6
# ---------------------------------------------------------------------------------------------


def tiny_flux() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
        guidance_embeds=False, axes_dims_rope=(2, 2, 4),
    ).eval()


def flux_requests() -> List[Dict[str, torch.Tensor]]:
    """6 steps of a rectified-flow style trajectory, timestep 1.0 → 0.68 (seeded latents)."""
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 4, generator=generator)
    prompt = torch.randn(1, 5, 16, generator=generator)
    pooled = torch.randn(1, 8, generator=generator)
    noise = torch.randn(1, 16, 4, generator=generator)
    img_ids = torch.stack([torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], dim=1)
    requests = []
    for k in range(6):
        t = 1.0 - 0.32 * k / 5
        requests.append(dict(
            hidden_states=(1 - t) * latents + t * noise, encoder_hidden_states=prompt,
            pooled_projections=pooled, timestep=torch.tensor([t]), img_ids=img_ids,
            txt_ids=torch.zeros(5, 3), return_dict=False,
        ))
    return requests


@torch.no_grad()
def test_tiny_flux_caches_as_one_context_and_computes_bit_exactly(engine: Engine) -> None:
    reference, transformer = tiny_flux(), tiny_flux()
    engine.module.enable_cache(
        transformer,
        cache_config=engine.module.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2,
            residual_diff_threshold=0.3, num_inference_steps=6,
        ),
    )
    for step, kwargs in enumerate(flux_requests()):
        cached, uncached = transformer(**kwargs)[0], reference(**kwargs)[0]
        if step in (0, 1, 5):
            assert torch.equal(cached, uncached), f"computed step {step} must be bit-exact"
        else:
            assert not torch.equal(cached, uncached), f"step {step} must be cached"
    stats = engine.module.summary(transformer, logging=False)[-1]  # mirrors the last context
    assert stats.cached_steps == [2, 3, 4]
    assert engine.module.strify(transformer) == "DBCache_F1B0_W2I1M0MC0_R0.3_N6_CFG0_T0O0_S3"


# ---------------------------------------------------------------------------------------------
# §12.10 DBPrune: 8 Pattern_0 blocks, h += t·(i+1), e += t; F1B1 W2 thr 0.02
# ---------------------------------------------------------------------------------------------

SCHED_12_10 = [1.0, 1.01, 1.02, 1.2, 1.21, 1.22]


@pytest.mark.parametrize("dynamic_threshold", [False, True], ids=["fixed", "dynamic"])
def test_dbprune_prunes_middle_blocks_per_block(engine: Engine, dynamic_threshold: bool) -> None:
    toy = toys.prune_toy()
    pipe = toys.make_pipeline(toy)
    engine.enable_prune(
        engine.adapter(toy, pipe=pipe, pattern=0),
        Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=2,
        residual_diff_threshold=0.02, enable_separate_cfg=False,
        enable_dynamic_prune_threshold=dynamic_threshold,
    )
    pipe(SCHED_12_10)
    stats = engine.stats(pipe)
    assert stats.pruned_steps == [2, 4, 5]
    assert stats.pruned_blocks == [0, 0, 6, 0, 6, 6]
    assert stats.actual_blocks == [8] * 6
    assert stats.pruned_ratio == pytest.approx(0.375)
    assert stats.residual_diffs["2"] == pytest.approx(
        [0.005, 0.0025, 0.0014, 0.0009, 0.0006, 0.0005], abs=1e-4
    )
    assert stats.residual_diffs["3"] == pytest.approx(
        [0.0945, 0.1414, 0.1615, 0.1712, 0.1765, 0.1796], abs=1e-4
    )
    assert engine.module.strify(pipe) == "DBPrune_F1B1_W2I1M0MC0_R0.02_P37.5_T0O0_S3"


# ---------------------------------------------------------------------------------------------
# Config deviations (c) and (d)
# ---------------------------------------------------------------------------------------------


def warnings_text(caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder) -> str:
    return "\n".join([r.getMessage() for r in caplog.records] + [str(w.message) for w in recwarn])


def test_scm_preset_for_unsupported_step_count__deliberate_deviation(
    engine: Engine, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """Deviation (c): cache-dit fails (AssertionError); we warn and run the request unmasked."""
    section = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "max_warmup_steps": 2,
               "residual_diff_threshold": 0.5, "enable_separate_cfg": False,
               "num_inference_steps": 5, "steps_computation_mask": "fast"}
    if engine.is_reference:
        with pytest.raises(AssertionError, match="total_steps=5"):
            engine.module.load_configs({"cache_config": section})
        return
    with caplog.at_level(logging.WARNING):
        configs = engine.module.load_configs({"cache_config": section})
    assert "mask" in warnings_text(caplog, recwarn)
    assert configs["cache_config"].steps_computation_mask is None
    toy = toys.linear_toy()
    pipe = toys.make_pipeline(toy)
    engine.module.enable_cache(engine.adapter(toy, pipe=pipe), **configs)
    pipe(SCHED_12_3[:5])
    assert engine.stats(pipe).cached_steps == [2, 3, 4]


def test_misspelt_enable_sperate_cfg_key__deliberate_deviation(
    engine: Engine, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """Deviation (d): cache-dit silently ignores the documented typo; we honour it and warn."""
    with caplog.at_level(logging.WARNING):
        configs = engine.module.load_configs(
            {"cache_config": {"Fn_compute_blocks": 1, "enable_sperate_cfg": True}}
        )
    if engine.is_reference:
        assert configs["cache_config"].enable_separate_cfg is None  # left to auto-detection
    else:
        assert configs["cache_config"].enable_separate_cfg is True
        assert "enable_sperate_cfg" in warnings_text(caplog, recwarn)


def test_unknown_config_key__deliberate_deviation(engine: Engine) -> None:
    """Deviation (d): cache-dit ignores unknown keys; ours names it and the closest valid key."""
    section = {"Fn_compute_blocks": 1, "residual_diff_threshld": 0.3}
    if engine.is_reference:
        configs = engine.module.load_configs({"cache_config": section})
        assert configs["cache_config"].residual_diff_threshold == 0.08  # the default, silently
        return
    with pytest.raises(ValueError, match="residual_diff_threshld") as error:
        engine.module.load_configs({"cache_config": section})
    assert "residual_diff_threshold" in str(error.value)
