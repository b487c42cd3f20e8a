"""SCM (steps computation mask): which diffusion steps must always be computed.

A mask is a list of 0/1 flags, one per inference step: ``1`` forces the step to be computed, ``0``
lets the cache decide (or, with the static policy, caches it outright). ``steps_mask`` builds such a
mask either from explicit run lengths ("compute 4 steps, cache 2, compute 1, ...") or from one of
four named presets that are tuned for 28 steps and rescaled to other step counts.

The preset tables and rescaling rules reproduce cache-dit 1.5.3 exactly (masks are compared
bit-for-bit against it in the tests), because users tune their quality/speed trade-off against
those masks and expect the same steps to be skipped. Only the error behaviour differs: invalid
input raises :class:`~dit_cache_backend.errors.ConfigError` (a ``ValueError``) naming the argument,
instead of an ``AssertionError`` or a silently wrong mask.
"""

from __future__ import annotations

import logging
import numbers
from itertools import zip_longest
from typing import Any, Optional, Sequence

from .errors import ConfigError, UnsupportedStepCountError

__all__ = ["MASK_POLICIES", "steps_mask", "request_mask", "mask_from_string", "mask_to_string"]

#: Preset names, from the most computed steps (best quality) to the fewest (fastest).
MASK_POLICIES = ("slow", "medium", "fast", "ultra")

# A preset is (compute run lengths, cache run lengths); the runs alternate, compute first.
_Runs = tuple[tuple[int, ...], tuple[int, ...]]

# The presets are designed for this many steps; every other step count is derived from them,
# except below 16 steps where distilled models get hand-written tables.
_BASE_STEPS = 28

_BASE_PRESETS: dict[str, _Runs] = {
    "slow": ((8, 3, 3, 2, 1, 1), (1, 2, 2, 2, 3)),  # 18 computed of 28
    "medium": ((6, 2, 2, 2, 2, 1), (1, 3, 3, 3, 3)),  # 15 computed of 28
    "fast": ((6, 1, 1, 1, 1, 1), (1, 3, 4, 5, 4)),  # 11 computed of 28
    "ultra": ((4, 1, 1, 1, 1), (2, 5, 6, 7)),  # 8 computed of 28
}

# Hand-written tables for few-step (distilled) models; they may still be longer than the step
# count and are then trimmed like the base presets.
_PRESETS_8_STEPS: dict[str, _Runs] = {
    "slow": ((5, 1, 1), (1,)),
    "medium": ((4, 1, 1), (1, 1)),
    "fast": ((3, 1, 1), (1, 2)),
    "ultra": ((2, 1, 1), (2, 2)),
}
# 9 steps is Z-Image-Turbo's default, which cache-dit special-cases.
_PRESETS_9_STEPS: dict[str, _Runs] = {
    "slow": ((5, 2, 1), (1,)),
    "medium": ((5, 1, 1), (1, 1)),
    "fast": ((4, 1, 1), (1, 2)),
    "ultra": ((3, 1, 1), (2, 2)),
}
_PRESETS_10_TO_15_STEPS: dict[str, _Runs] = {
    "slow": ((4, 2, 2, 2, 1), (1, 1, 1, 1)),
    "medium": ((4, 2, 1, 1, 1), (1, 1, 2, 2)),
    "fast": ((3, 1, 1, 1, 1), (1, 2, 2, 3)),
    "ultra": ((2, 1, 1, 1, 1), (1, 2, 3, 3)),
}
# Below 8 steps only these two counts have a preset, the same one for every policy.
_FEW_STEP_RUNS: dict[int, _Runs] = {
    4: ((2, 1), (1,)),  # 1101
    6: ((3, 1), (2,)),  # 111001
}

_MASK_KEY = "steps_computation_mask"

logger = logging.getLogger(__name__)


def request_mask(policy: Optional[str], num_inference_steps: Optional[int]) -> Optional[list[int]]:
    """The steps mask of one request: ``policy``'s preset expanded for its step count.

    Every front door (configs, refresh_context, the serving backends) builds a request's mask
    here. ``None`` when there is no policy or no step count, or when the preset has no mask for
    that count (a warning; the request then runs as plain DBCache instead of failing).
    """
    if policy is None or num_inference_steps is None:
        return None
    try:
        return steps_mask(total_steps=num_inference_steps, mask_policy=policy)
    except UnsupportedStepCountError as exc:
        logger.warning(
            "steps mask preset %r has no mask for num_inference_steps=%d (%s); this request runs without one",
            policy,
            num_inference_steps,
            exc.allowed,
        )
        return None


def steps_mask(
    compute_bins: Optional[list[int]] = None,
    cache_bins: Optional[list[int]] = None,
    total_steps: Optional[int] = None,
    mask_policy: str = "medium",
) -> list[int]:
    """Build a steps computation mask (drop-in for ``cache_dit.steps_mask``).

    With both ``compute_bins`` and ``cache_bins``, the mask is ``compute_bins[0]`` ones,
    ``cache_bins[0]`` zeros, ``compute_bins[1]`` ones, ... cut to ``total_steps`` (default: the
    sum of all bins); ``mask_policy`` is ignored and the last step is *not* forced to compute, so
    the caller gets exactly the runs they asked for.

    Otherwise ``total_steps`` is required and the bins come from the ``mask_policy`` preset scaled
    to ``total_steps``; the last step is always forced to compute, because the final denoising
    step decides the output image and a stale cache there is most visible.

    Raises:
        ConfigError: unknown ``mask_policy``; only one of the two bins lists; neither bins nor
            ``total_steps``; bins that are not lists of positive ints; bins shorter in total than
            ``total_steps``; ``total_steps`` that is not a positive int.
        UnsupportedStepCountError: a preset was requested for a step count that has none
            (fewer than 8 steps other than 4 or 6); callers may catch it and run without a mask.
    """
    if compute_bins is not None and cache_bins is not None:
        compute = _checked_bins("compute_bins", compute_bins)
        cache = _checked_bins("cache_bins", cache_bins)
        available = sum(compute) + sum(cache)
        if total_steps is None:
            length = available
            if length == 0:
                raise ConfigError(
                    "compute_bins+cache_bins",
                    (compute_bins, cache_bins),
                    "at least one step in total",
                )
        else:
            length = _checked_total_steps(total_steps)
            if available < length:
                raise ConfigError(
                    "compute_bins+cache_bins",
                    available,
                    f"bins summing to at least total_steps={length}",
                    hint=f"compute_bins and cache_bins cover only {available} steps",
                )
        return _runs_to_mask(compute, cache, length)

    if compute_bins is not None or cache_bins is not None:
        missing = "cache_bins" if cache_bins is None else "compute_bins"
        given = "compute_bins" if cache_bins is None else "cache_bins"
        raise ConfigError(
            missing,
            None,
            f"a list of positive ints, given together with {given}",
            hint=f"{given} alone is not enough; pass both bins lists, or neither to use mask_policy",
        )

    if mask_policy not in MASK_POLICIES:
        raise ConfigError("mask_policy", mask_policy, "one of " + ", ".join(MASK_POLICIES))
    if total_steps is None:
        raise ConfigError(
            "total_steps",
            None,
            "a positive int",
            hint="a predefined mask_policy needs the number of inference steps",
        )
    steps = _checked_int("total_steps", total_steps)
    compute, cache = _preset_runs(mask_policy, steps)
    mask = _runs_to_mask(compute, cache, steps)
    mask[-1] = 1
    return mask


def mask_from_string(s: str) -> list[int]:
    """Parse a mask written as 0/1 digits, e.g. ``"111001000101"``, as configs and CLIs give it.

    Anything but the characters ``0`` and ``1`` (spaces included) is rejected rather than skipped,
    so that a typo cannot silently shift every later step by one.
    """
    if not isinstance(s, str) or not s:
        raise ConfigError(_MASK_KEY, s, "a non-empty string of 0 and 1 digits")
    bad = sorted({ch for ch in s if ch not in "01"})
    if bad:
        raise ConfigError(
            _MASK_KEY,
            s,
            "a non-empty string of 0 and 1 digits",
            hint="unexpected character(s): " + ", ".join(repr(ch) for ch in bad),
        )
    return [int(ch) for ch in s]


def mask_to_string(mask: Sequence[int]) -> str:
    """Write a mask as 0/1 digits, the compact form used in logs, configs and golden tests."""
    if any(flag not in (0, 1) for flag in mask):
        raise ConfigError(_MASK_KEY, list(mask), "a sequence of 0 and 1 values")
    return "".join("1" if flag else "0" for flag in mask)


def _runs_to_mask(compute: Sequence[int], cache: Sequence[int], length: int) -> list[int]:
    """Alternate compute runs (ones) and cache runs (zeros), then cut to ``length``.

    Either list may run out before the other; the remaining runs are then laid end to end, which
    matches cache-dit's stack-popping loop. Callers guarantee the runs cover ``length`` steps.
    """
    mask: list[int] = []
    for ones, zeros in zip_longest(compute, cache, fillvalue=0):
        mask += [1] * ones + [0] * zeros
    return mask[:length]


def _preset_runs(policy: str, steps: int) -> tuple[list[int], list[int]]:
    """Pick the preset runs for ``policy`` and fit them to exactly ``steps`` steps."""
    if steps > _BASE_STEPS:
        compute, cache = _expanded_runs(_BASE_PRESETS[policy], steps)
    elif steps >= 16:
        compute, cache = (list(runs) for runs in _BASE_PRESETS[policy])
    elif steps >= 10:
        compute, cache = (list(runs) for runs in _PRESETS_10_TO_15_STEPS[policy])
    elif steps == 9:
        compute, cache = (list(runs) for runs in _PRESETS_9_STEPS[policy])
    elif steps == 8:
        compute, cache = (list(runs) for runs in _PRESETS_8_STEPS[policy])
    elif steps in _FEW_STEP_RUNS:
        compute, cache = (list(runs) for runs in _FEW_STEP_RUNS[steps])
    else:
        raise UnsupportedStepCountError(
            "total_steps",
            steps,
            "4, 6 or any count >= 8 for a predefined mask_policy",
            hint="pass compute_bins and cache_bins for other step counts",
        )
    _trim_runs(compute, cache, steps)
    return compute, cache


def _expanded_runs(preset: _Runs, steps: int) -> tuple[list[int], list[int]]:
    """Grow a 28-step preset until it covers ``steps`` steps, keeping its compute/cache rhythm.

    Each pass adds to every paired run a share proportional to its base length (at least 1),
    alternating compute and cache runs and stopping the moment the total is reached; a pass that
    falls short also lengthens the last compute run by one. The result may overshoot and is
    trimmed afterwards. The growth factor is evaluated as ``(steps / 28) * 0.5`` in float64 on
    purpose: a mathematically equal form can round differently and change the mask.
    """
    base_compute, base_cache = preset
    compute, cache = list(base_compute), list(base_cache)
    factor = (steps / _BASE_STEPS) * 0.5
    paired = min(len(compute), len(cache))

    def covered() -> bool:
        return sum(compute) + sum(cache) >= steps

    while not covered():
        for i in range(paired):
            compute[i] += max(int(base_compute[i] * factor), 1)
            if covered():
                return compute, cache
            cache[i] += max(int(base_cache[i] * factor), 1)
            if covered():
                return compute, cache
        compute[-1] += 1
    return compute, cache


def _trim_runs(compute: list[int], cache: list[int], steps: int) -> None:
    """Shorten the runs in place until they total ``steps``, taking steps off the end.

    One step at a time is removed, alternating between the last cache run and the last compute
    run (cache first) and dropping runs that reach zero. This is why 16..27-step presets keep the
    28-step opening and lose its tail, e.g. 16-step "fast" computes only 6 steps.
    """
    while sum(compute) + sum(cache) > steps:
        for runs in (cache, compute):
            if runs:
                runs[-1] -= 1
                if runs[-1] == 0:
                    runs.pop()
            if sum(compute) + sum(cache) <= steps:
                return


def _checked_int(key: str, value: Any) -> int:
    """Return ``value`` as an int, or raise; bools and floats are refused, numpy ints accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(key, value, "an int")
    return int(value)


def _checked_total_steps(value: Any) -> int:
    """Validate an explicit-bins ``total_steps``: an empty mask would disable SCM by accident."""
    steps = _checked_int("total_steps", value)
    if steps <= 0:
        raise ConfigError("total_steps", value, "a positive int")
    return steps


def _checked_bins(key: str, bins: Any) -> list[int]:
    """Validate one bins list: run lengths must be positive ints (a 0 or negative run is a typo)."""
    allowed = "a list of positive ints"
    if isinstance(bins, (str, bytes)) or not isinstance(bins, Sequence):
        raise ConfigError(key, bins, allowed)
    checked = []
    for run in bins:
        if isinstance(run, bool) or not isinstance(run, numbers.Integral) or run <= 0:
            raise ConfigError(key, list(bins), allowed, hint=f"bad run length {run!r}")
        checked.append(int(run))
    return checked
