"""Calibrators forecast the cached middle-block residual on cached steps instead of copying it.

TaylorSeer keeps, per named stream, the last computed value and its backward divided differences
up to the configured order, and evaluates the Taylor polynomial at the elapsed step distance.

Deliberate deviation from cache-dit 1.5.3 (see docs/compatibility.md): cache-dit creates a stream
one step late and refuses derivatives before its (lagging) step counter passes 1, so the first
derivative only appears on a computed step with context index >= 3. Here the stream's clock is the
context's diffusion-step index and a derivative is formed as soon as two computed steps exist.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch


class TaylorSeerStream:
    """Taylor state of one tensor stream (hidden or encoder residual of one branch)."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.terms: List[Optional[torch.Tensor]] = [None] * (order + 1)
        self.last_step: Optional[int] = None

    def update(self, value: torch.Tensor, step: int) -> None:
        """Record a computed value at diffusion step ``step`` and refresh the divided differences."""
        previous = self.terms
        if previous[0] is not None and previous[0].shape != value.shape:
            previous = [None] * (self.order + 1)  # a new resolution: old derivatives are meaningless
        terms: List[Optional[torch.Tensor]] = [value] + [None] * self.order
        if previous[0] is not None and self.last_step is not None and step > self.last_step:
            spacing = step - self.last_step
            for k in range(self.order):
                if previous[k] is None:
                    break
                terms[k + 1] = (terms[k] - previous[k]) / spacing
        self.terms = terms
        self.last_step = step

    def approximate(self, step: int) -> torch.Tensor:
        """Forecast the value at diffusion step ``step`` from the last computed step."""
        if self.terms[0] is None or self.last_step is None:
            raise RuntimeError("TaylorSeer stream has no computed value to forecast from")
        elapsed = step - self.last_step
        result = self.terms[0]
        for k in range(1, self.order + 1):
            term = self.terms[k]
            if term is None:
                break
            result = result + term * (elapsed**k / math.factorial(k))
        return result

    def num_tensors(self) -> int:
        return sum(term is not None for term in self.terms)


class TaylorSeerCalibrator:
    """A set of named TaylorSeer streams sharing one order."""

    def __init__(self, order: int = 1) -> None:
        if order < 1:
            raise ValueError(f"taylorseer_order must be >= 1, got {order}")
        self.order = order
        self.streams: Dict[str, TaylorSeerStream] = {}

    def update(self, name: str, value: torch.Tensor, step: int) -> None:
        stream = self.streams.get(name)
        if stream is None:
            stream = self.streams[name] = TaylorSeerStream(self.order)
        stream.update(value, step)

    def approximate(self, name: str, step: int) -> Optional[torch.Tensor]:
        stream = self.streams.get(name)
        return None if stream is None else stream.approximate(step)

    def reset(self) -> None:
        self.streams.clear()

    def num_tensors(self) -> int:
        return sum(stream.num_tensors() for stream in self.streams.values())
