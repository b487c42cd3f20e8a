"""Differential tests: seeded random cases run through cache-dit 1.5.3 and through our engine.

Each case (see :func:`make_case`) is a random toy transformer of a random ForwardPattern (0–5,
4–10 blocks), random per-step inputs (8–30 steps), a random DBCacheConfig (Fn/Bn, warmup and
interval, max cached, max continuous, threshold, sometimes an accumulated-diff limit), sometimes an
SCM mask (random bits or a ``steps_mask`` preset; dynamic or static policy), sometimes a CFG
pipeline (two calls per step, with or without separate CFG), sometimes a calibrator (TaylorSeer of
order 1-3, FoCa or DMD). A second set of cases (:func:`make_calibrator_case`) always has one, with
the warmup and thresholds where forecasts matter: short warmups, long cached runs.

Both engines run the same case in pipeline mode on identical copies of model and inputs; they
must agree on ``cached_steps``, ``cfg_cached_steps``, the recorded diffs and every output (to
1e-6; 1e-5 relative for DMD, whose eigendecomposition is solver-rounded).

Where cache-dit is wrong it is patched for the comparison, and the difference is asserted on its
own: cache-dit 1.5.3's DMD warm-up fallback takes its Taylor difference against the value of two
computed steps back (it rotates its ladder after using it) while dividing by the last spacing;
:func:`dmd_fallback_fixed` gives it TaylorSeer's own ladder, which is what ours uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import pytest
import torch

import toys
from engines import Engine, load_engine, outputs_close

NUM_CASES = 200
NUM_CALIBRATOR_CASES = 120
MASK_PRESETS = ("slow", "medium", "fast", "ultra")
# (config class, fields) of each calibrator the cases draw from.
CALIBRATORS = (
    ("TaylorSeerCalibratorConfig", (("taylorseer_order", 1),)),
    ("TaylorSeerCalibratorConfig", (("taylorseer_order", 2),)),
    ("TaylorSeerCalibratorConfig", (("taylorseer_order", 3),)),
    ("FoCaCalibratorConfig", ()),
    ("DMDCalibratorConfig", ()),
    ("DMDCalibratorConfig", (("dmd_history", 4), ("dmd_svd_precision", "low"))),
    ("DMDCalibratorConfig", (("dmd_history", 5), ("dmd_rank", 2))),
)
Calibrator = Tuple[str, Tuple[Tuple[str, Any], ...]]


@dataclasses.dataclass(frozen=True)
class Case:
    seed: int
    pattern: int
    num_blocks: int
    num_steps: int  # diffusion steps (pipeline schedule entries)
    drift: float  # per-step random-walk scale of the inputs
    cfg_pipeline: bool  # two transformer calls (cond, uncond) per step
    cache_kwargs: Dict[str, Any]  # DBCacheConfig fields, except the mask
    mask: Union[None, str, Tuple[int, ...]]  # None, a steps_mask preset name, or explicit bits
    calibrator: Optional[Calibrator]

    def cache_config(self, engine: Engine) -> Dict[str, Any]:
        kwargs = dict(self.cache_kwargs)
        if isinstance(self.mask, str):
            kwargs["steps_computation_mask"] = engine.module.steps_mask(
                total_steps=counted_steps(
                    self.num_steps, self.cfg_pipeline, self.cache_kwargs["enable_separate_cfg"]
                ),
                mask_policy=self.mask,
            )
        elif self.mask is not None:
            kwargs["steps_computation_mask"] = list(self.mask)
        return kwargs


def counted_steps(num_steps: int, cfg_pipeline: bool, separate_cfg: bool) -> int:
    """Steps as the engines count them: without separate CFG every call is a step."""
    return num_steps * (2 if cfg_pipeline and not separate_cfg else 1)


def make_case(seed: int) -> Case:
    rng = random.Random(seed)
    pattern = rng.randrange(6)
    num_blocks = rng.randint(4, 10)
    num_steps = rng.randint(8, 30)
    fn = rng.randint(1, min(3, num_blocks))
    bn = rng.randint(0, min(3, num_blocks - fn))
    drift = rng.choice([0.01, 0.02, 0.04, 0.08])
    cfg_pipeline = rng.random() < 0.35
    separate_cfg = cfg_pipeline and rng.random() < 0.85
    steps = counted_steps(num_steps, cfg_pipeline, separate_cfg)
    kwargs: Dict[str, Any] = {
        "Fn_compute_blocks": fn,
        "Bn_compute_blocks": bn,
        # Typical diffs are ~drift..2·drift: a threshold around them gives a mix of decisions.
        "residual_diff_threshold": round(drift * rng.uniform(0.8, 4.0), 4),
        "max_warmup_steps": rng.randint(0, 6),
        "warmup_interval": rng.choice([1, 1, 1, 2, 3]),
        "max_cached_steps": rng.choice([-1, -1, -1, rng.randint(0, num_steps // 2)]),
        "max_continuous_cached_steps": rng.choice([-1, -1, rng.randint(0, 4)]),
        "enable_separate_cfg": separate_cfg,
    }
    if rng.random() < 0.25:
        kwargs["max_accumulated_residual_diff_threshold"] = round(rng.uniform(0.2, 3.0), 2)
    if rng.random() < 0.2:
        kwargs["num_inference_steps"] = steps  # a request of exactly N steps
    if separate_cfg:
        kwargs["cfg_diff_compute_separate"] = rng.random() < 0.5
        kwargs["cfg_compute_first"] = not kwargs["cfg_diff_compute_separate"] and rng.random() < 0.5
    mask: Union[None, str, Tuple[int, ...]] = None
    if rng.random() < 0.35:
        static = rng.random() < 0.35
        if rng.random() < 0.5:
            mask = rng.choice(MASK_PRESETS)  # presets always start (and end) with 1s
        else:
            bits = [int(rng.random() < 0.4) for _ in range(steps)]
            mask = (1, *bits[1:]) if static else tuple(bits)  # static reuses from step 0's compute
        kwargs["steps_computation_policy"] = "static" if static else "dynamic"
    calibrator = rng.choice(CALIBRATORS) if rng.random() < 0.3 else None
    if pattern in (4, 5) and fn + bn == num_blocks:
        # No middle blocks ⇒ no encoder residual; cache-dit 1.5.3's encoder calibrator then
        # asserts on the first cached step ("State '..._Bn_residual' not found").
        calibrator = None
    return Case(
        seed=seed,
        pattern=pattern,
        num_blocks=num_blocks,
        num_steps=num_steps,
        drift=drift,
        cfg_pipeline=cfg_pipeline,
        cache_kwargs=kwargs,
        mask=mask,
        calibrator=calibrator,
    )


def make_calibrator_case(seed: int) -> Case:
    """A case with a calibrator, a short warmup and a high threshold: many forecast steps."""
    base = make_case(10_000 + seed)
    rng = random.Random(seed)
    kwargs = dict(base.cache_kwargs)
    kwargs["max_warmup_steps"] = rng.randint(1, 8)
    kwargs["warmup_interval"] = rng.choice([1, 1, 2])
    # Sometimes >= 1 (every post-warmup step cached, up to the continuous limit): long forecasts.
    kwargs["residual_diff_threshold"] = rng.choice(
        [round(base.drift * rng.uniform(1.0, 8.0), 4), 1.0]
    )
    kwargs["max_continuous_cached_steps"] = rng.choice([-1, -1, 2, 3, 5])
    kwargs["max_cached_steps"] = -1
    kwargs.pop("max_accumulated_residual_diff_threshold", None)
    pattern, num_blocks = base.pattern, base.num_blocks
    if pattern in (4, 5) and kwargs["Fn_compute_blocks"] + kwargs["Bn_compute_blocks"] == num_blocks:
        kwargs["Bn_compute_blocks"] = 0  # keep middle blocks (see make_case)
    return dataclasses.replace(
        base,
        seed=10_000 + seed,
        cache_kwargs=kwargs,
        mask=None,
        calibrator=CALIBRATORS[seed % len(CALIBRATORS)],
    )


@dataclasses.dataclass
class Result:
    cached_steps: List[int]
    cfg_cached_steps: List[int]
    residual_diffs: Dict[str, float]
    cfg_residual_diffs: Dict[str, float]
    outputs: List[Any]


@contextlib.contextmanager
def dmd_fallback_fixed() -> Iterator[None]:
    """cache-dit's DMD streams with TaylorSeer's difference ladder as their warm-up fallback."""
    from cache_dit.caching.cache_contexts.calibrators import dmd

    def update_taylor(state: Any, value: torch.Tensor) -> None:
        previous = state.state["dY_current"]
        ladder = [value] + [None] * state.n_derivatives
        window = state.current_step - state.last_non_approximated_step
        for i in range(state.n_derivatives):
            if previous[i] is None or state.current_step <= 1 or window <= 0:
                break
            ladder[i + 1] = (ladder[i] - previous[i]) / window
        state.state = {"dY_prev": previous, "dY_current": ladder}

    original = dmd.DMDState._update_taylor
    dmd.DMDState._update_taylor = update_taylor
    try:
        yield
    finally:
        dmd.DMDState._update_taylor = original


def run_case(engine: Engine, case: Case) -> Result:
    patch = engine.is_reference and case.calibrator is not None and "DMD" in case.calibrator[0]
    with dmd_fallback_fixed() if patch else contextlib.nullcontext():
        return _run_case(engine, case)


def _run_case(engine: Engine, case: Case) -> Result:
    toy = toys.random_toy(case.pattern, case.num_blocks, case.seed)
    schedule = toys.random_schedule(case.pattern, case.num_steps, case.drift, case.seed)
    pipe = toys.make_pipeline(toy, cfg=case.cfg_pipeline)
    adapter = engine.adapter(
        toy, pipe=pipe, pattern=case.pattern,
        separate_cfg=case.cache_kwargs["enable_separate_cfg"],
    )
    calibrator = None if case.calibrator is None else (case.calibrator[0], dict(case.calibrator[1]))
    engine.enable(adapter, calibrator=calibrator, **case.cache_config(engine))
    with torch.no_grad():
        outputs = pipe(schedule)
    stats = engine.stats(pipe)
    result = Result(
        list(stats.cached_steps), list(stats.cfg_cached_steps),
        dict(stats.residual_diffs), dict(stats.cfg_residual_diffs), outputs,
    )
    engine.module.disable_cache(pipe)
    return result


@functools.lru_cache(maxsize=None)
def reference_result(seed: int) -> Result:
    return run_case(load_engine("cache_dit"), make_case(seed))


@pytest.fixture(scope="module")
def ours() -> Engine:
    load_engine("cache_dit")  # skips the module's tests when the reference is missing
    return load_engine("ours")


def assert_same_run(case: Case, expected: Result, got: Result) -> None:
    case_text = str(case)  # a str message is shown in full
    assert got.cached_steps == expected.cached_steps, case_text
    assert got.cfg_cached_steps == expected.cfg_cached_steps, case_text
    assert got.residual_diffs.keys() == expected.residual_diffs.keys(), case_text
    assert got.residual_diffs == pytest.approx(
        expected.residual_diffs, rel=1e-4, abs=1e-6
    ), case_text
    assert got.cfg_residual_diffs.keys() == expected.cfg_residual_diffs.keys(), case_text
    assert got.cfg_residual_diffs == pytest.approx(
        expected.cfg_residual_diffs, rel=1e-4, abs=1e-6
    ), case_text
    dmd = case.calibrator is not None and case.calibrator[0] == "DMDCalibratorConfig"
    mismatched = [
        call for call, (a, b) in enumerate(zip(got.outputs, expected.outputs))
        if not outputs_close(a, b, atol=1e-6, rtol=1e-5 if dmd else 0.0)
    ]
    assert len(got.outputs) == len(expected.outputs), case_text
    assert not mismatched, f"outputs differ at calls {mismatched}: {case_text}"


@pytest.mark.parametrize("seed", range(NUM_CASES))
def test_ours_decides_and_computes_like_cache_dit(ours: Engine, seed: int) -> None:
    case = make_case(seed)
    assert_same_run(case, reference_result(seed), run_case(ours, case))


@pytest.mark.parametrize("seed", range(NUM_CALIBRATOR_CASES))
def test_calibrators_forecast_like_cache_dit(ours: Engine, seed: int) -> None:
    case = make_calibrator_case(seed)
    assert_same_run(case, calibrator_reference(seed), run_case(ours, case))


@functools.lru_cache(maxsize=None)
def calibrator_reference(seed: int) -> Result:
    return run_case(load_engine("cache_dit"), make_calibrator_case(seed))


def test_calibrator_cases_forecast_often_for_every_calibrator() -> None:
    """Each calibrator of the cases forecasts on a good share of the reference's calls."""
    load_engine("cache_dit")
    cached = dict.fromkeys(CALIBRATORS, 0)
    calls = dict.fromkeys(CALIBRATORS, 0)
    for seed in range(NUM_CALIBRATOR_CASES):
        case, result = make_calibrator_case(seed), calibrator_reference(seed)
        cached[case.calibrator] += len(result.cached_steps) + len(result.cfg_cached_steps)
        calls[case.calibrator] += case.num_steps * (2 if case.cfg_pipeline else 1)
    assert all(cached[c] / calls[c] >= 0.3 for c in CALIBRATORS), (cached, calls)


def test_generated_cases_mix_cached_and_computed_steps() -> None:
    """The generator is only useful if the reference caches a fair share of calls, not all/none."""
    load_engine("cache_dit")
    cached = calls = 0
    for seed in range(NUM_CASES):
        case, result = make_case(seed), reference_result(seed)
        cached += len(result.cached_steps) + len(result.cfg_cached_steps)
        calls += case.num_steps * (2 if case.cfg_pipeline else 1)  # one decision per call
    assert 0.2 <= cached / calls <= 0.6
