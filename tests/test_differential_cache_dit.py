"""Differential tests: seeded random cases run through cache-dit 1.5.3 and through our engine.

Each case (see :func:`make_case`) is a random toy transformer of a random ForwardPattern (0–5,
4–10 blocks), random per-step inputs (8–30 steps), a random DBCacheConfig (Fn/Bn, warmup and
interval, max cached, max continuous, threshold, sometimes an accumulated-diff limit), sometimes an
SCM mask (random bits or a ``steps_mask`` preset; dynamic or static policy), sometimes a CFG
pipeline (two calls per step, with or without separate CFG), sometimes TaylorSeer.

Both engines run the same case in pipeline mode on identical copies of model and inputs; they
must agree on ``cached_steps``, ``cfg_cached_steps`` and the recorded diffs, and — unless
TaylorSeer is on, where our calibrator deliberately differs (docs/compatibility.md §2) — on every
output to 1e-6.
The inputs never depend on earlier outputs, so decisions must agree even with TaylorSeer.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any, Dict, List, Optional, Tuple, Union

import pytest
import torch

import toys
from engines import Engine, load_engine, outputs_close

NUM_CASES = 200
MASK_PRESETS = ("slow", "medium", "fast", "ultra")


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
    taylorseer_order: Optional[int]

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
    taylorseer_order = rng.randint(1, 3) if rng.random() < 0.3 else None
    if pattern in (4, 5) and fn + bn == num_blocks:
        # No middle blocks ⇒ no encoder residual; cache-dit 1.5.3's encoder calibrator then
        # asserts on the first cached step ("State '..._Bn_residual' not found").
        taylorseer_order = None
    return Case(
        seed=seed,
        pattern=pattern,
        num_blocks=num_blocks,
        num_steps=num_steps,
        drift=drift,
        cfg_pipeline=cfg_pipeline,
        cache_kwargs=kwargs,
        mask=mask,
        taylorseer_order=taylorseer_order,
    )


@dataclasses.dataclass
class Result:
    cached_steps: List[int]
    cfg_cached_steps: List[int]
    residual_diffs: Dict[str, float]
    cfg_residual_diffs: Dict[str, float]
    outputs: List[Any]


def run_case(engine: Engine, case: Case) -> Result:
    toy = toys.random_toy(case.pattern, case.num_blocks, case.seed)
    schedule = toys.random_schedule(case.pattern, case.num_steps, case.drift, case.seed)
    pipe = toys.make_pipeline(toy, cfg=case.cfg_pipeline)
    adapter = engine.adapter(
        toy, pipe=pipe, pattern=case.pattern,
        separate_cfg=case.cache_kwargs["enable_separate_cfg"],
    )
    engine.enable(adapter, taylorseer_order=case.taylorseer_order, **case.cache_config(engine))
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


@pytest.mark.parametrize("seed", range(NUM_CASES))
def test_ours_decides_and_computes_like_cache_dit(ours: Engine, seed: int) -> None:
    case = make_case(seed)
    expected, got = reference_result(seed), run_case(ours, case)
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
    if case.taylorseer_order is None:
        mismatched = [
            call for call, (a, b) in enumerate(zip(got.outputs, expected.outputs))
            if not outputs_close(a, b, atol=1e-6)
        ]
        assert len(got.outputs) == len(expected.outputs), case_text
        assert not mismatched, f"outputs differ at calls {mismatched}: {case_text}"


def test_generated_cases_mix_cached_and_computed_steps() -> None:
    """The generator is only useful if the reference caches a fair share of calls, not all/none."""
    load_engine("cache_dit")
    cached = calls = 0
    for seed in range(NUM_CASES):
        case, result = make_case(seed), reference_result(seed)
        cached += len(result.cached_steps) + len(result.cfg_cached_steps)
        calls += case.num_steps * (2 if case.cfg_pipeline else 1)  # one decision per call
    assert 0.2 <= cached / calls <= 0.6
