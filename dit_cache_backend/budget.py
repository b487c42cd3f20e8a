"""The compute budget's arithmetic: how many steps a request may compute, and which must.

``compute_budget`` (a DBCache extension, off by default) is either a count of computed steps per
request and CFG branch (an int >= 1) or a fraction of the request's steps (a float in (0, 1]).
The policy (``policy.StepPolicy.budget_gate``) spends it; this module only counts, so the config
checks and the policy use one rule for warmup and for the resolved count.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence

from .errors import ConfigError

BUDGET_ALLOWED = (
    "an int >= 1 (computed steps per request and CFG branch) or a float in (0, 1] "
    "(that fraction of the request's steps, rounded down)"
)


def check_budget_value(key: str, value: Any) -> None:
    """The value alone: a count or a fraction (whether it fits a request is checked later)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(key, value, BUDGET_ALLOWED)
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ConfigError(key, value, BUDGET_ALLOWED)
        return
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigError(key, value, BUDGET_ALLOWED)


def budget_steps(budget: Any, num_inference_steps: Optional[int]) -> Optional[int]:
    """The budget in computed steps for a request of ``num_inference_steps`` (None: no budget).

    A fraction needs the step count; callers check that first (:func:`check_budget_fits`).
    """
    if budget is None:
        return None
    if isinstance(budget, numbers.Integral):
        return int(budget)
    return math.floor(budget * num_inference_steps + 1e-9)


def warmup_limit(max_warmup_steps: int, mask: Optional[Sequence[int]]) -> int:
    """Steps before this one may be warmup; a steps mask's leading 1s bound it (they compute)."""
    limit = max_warmup_steps
    if mask is not None:
        leading_ones = 0
        for bit in mask:
            if bit != 1:
                break
            leading_ones += 1
        limit = min(limit, leading_ones)
    return limit


def warmup_steps(limit: int, interval: int, start: int, stop: int) -> int:
    """The warmup steps (multiples of ``interval`` below ``limit``) in ``[start, stop)``."""
    stop = min(stop, limit)
    first = -(-max(start, 0) // interval) * interval  # the first multiple of the interval
    return 0 if first >= stop else (stop - 1 - first) // interval + 1


def check_budget_fits(
    budget: Any,
    num_inference_steps: Optional[int],
    max_warmup_steps: int,
    warmup_interval: int,
    mask: Optional[Sequence[int]],
) -> None:
    """A budget that cannot hold a request's warmup (or needs an unknown step count) is refused."""
    if budget is None:
        return
    if num_inference_steps is None and not isinstance(budget, numbers.Integral):
        raise ConfigError(
            "compute_budget",
            budget,
            "an int count when num_inference_steps is unknown",
            hint="a fraction is sized by num_inference_steps: set it in the same config section, "
            "or per request with refresh_context(..., num_inference_steps=N)",
        )
    horizon = max_warmup_steps if num_inference_steps is None else num_inference_steps
    warmup = warmup_steps(warmup_limit(max_warmup_steps, mask), warmup_interval, 0, horizon)
    steps = budget_steps(budget, num_inference_steps)
    needed = max(1, warmup)
    if steps < needed:
        where = "" if num_inference_steps is None else f" of a {num_inference_steps}-step request"
        raise ConfigError(
            "compute_budget",
            budget,
            f"at least {needed} computed steps (the {warmup} warmup steps{where} always compute, "
            f"and the first step has nothing to reuse); it resolves to {steps}",
            hint="raise compute_budget or lower max_warmup_steps",
        )
