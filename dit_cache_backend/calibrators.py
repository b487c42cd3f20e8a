"""Calibrators forecast the cached middle-block residual on cached steps instead of copying it.

cache-dit 1.5.3's three kinds, one stream class each, registered in :data:`CALIBRATOR_TYPES`:

* ``taylorseer`` — backward divided differences up to the configured order from the computed
  steps, evaluated as a Taylor polynomial at the elapsed step distance;
* ``foca`` — FoCa's forecast-then-calibrate: a recursive linear predictor over the last two values
  (computed or forecast) averaged with the derivative between the last two computed steps (Heun's
  trapezoidal rule), damped towards the anchor beyond three steps;
* ``dmd`` — Dynamic Mode Decomposition (exponential/Prony basis) fitted on the last few equally
  spaced computed values; TaylorSeer order 1 until four such values exist.

A :class:`Calibrator` holds the named streams (hidden and encoder residual) of one CFG branch.

Timing follows cache-dit exactly: its stream counter starts at -1 on the stream's first computed
value and derivatives are refused while that counter is <= 1, so a derivative is only formed on a
computed step at least :data:`DERIVATIVE_DELAY` steps after the stream's first value. Forming them
earlier — from the first, fastest-changing steps — costs 8-15 dB with order 2 and a short warmup.
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

# Steps after a stream's first computed value before a derivative may be formed (cache-dit).
DERIVATIVE_DELAY = 3
# FoCa: beyond this many elapsed steps the forecast is blended back towards the anchor.
FOCA_MAX_HORIZON = 3.0
# DMD: the exponential fit needs this many equally spaced snapshots (one complex pole costs two
# real degrees of freedom); below it the TaylorSeer fallback forecasts.
DMD_MIN_SNAPSHOTS = 4
DMD_SVD_PRECISIONS = ("low", "medium", "high")
# Singular values below this fraction of the largest are noise when the rank is automatic.
_DMD_AUTO_RANK_CUTOFF = 1e-4
_DMD_LOWRANK_SEED = 0


class CalibratorStream(abc.ABC):
    """Forecast state of one tensor stream (hidden or encoder residual of one branch)."""

    @abc.abstractmethod
    def update(self, value: torch.Tensor, step: int) -> None:
        """Record the value computed at diffusion step ``step``."""

    @abc.abstractmethod
    def approximate(self, step: int) -> torch.Tensor:
        """The forecast for diffusion step ``step`` (a cached step after at least one update)."""

    @abc.abstractmethod
    def tensors(self) -> List[torch.Tensor]:
        """The tensors this stream holds (memory accounting)."""


class TaylorSeerStream(CalibratorStream):
    """Taylor state: the last computed value and its divided differences up to ``n_derivatives``."""

    def __init__(self, n_derivatives: int = 1) -> None:
        if n_derivatives < 1:
            raise ValueError(f"taylorseer_order must be >= 1, got {n_derivatives}")
        self.order = n_derivatives
        self.terms: List[Optional[torch.Tensor]] = [None] * (n_derivatives + 1)
        self.last_step: Optional[int] = None
        self.origin: Optional[int] = None  # step of the stream's first value (cache-dit's clock)

    def update(self, value: torch.Tensor, step: int) -> None:
        previous = self.terms
        if previous[0] is not None and previous[0].shape != value.shape:
            # A new resolution: old derivatives are meaningless and the clock restarts here.
            previous = [None] * (self.order + 1)
            self.origin = None
        if self.origin is None:
            self.origin = step
        terms: List[Optional[torch.Tensor]] = [value] + [None] * self.order
        spacing = step - self.last_step if self.last_step is not None else 0
        if step - self.origin >= DERIVATIVE_DELAY and spacing > 0:
            for k in range(self.order):
                if previous[k] is None:
                    break
                terms[k + 1] = (terms[k] - previous[k]) / spacing
        self.terms = terms
        self.last_step = step

    def approximate(self, step: int) -> torch.Tensor:
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

    def tensors(self) -> List[torch.Tensor]:
        return [term for term in self.terms if term is not None]


class FoCaStream(CalibratorStream):
    """FoCa state: the two latest values (computed or forecast) and the two latest computed ones.

    As in cache-dit, differences are taken per value pair (unit spacing), whatever the number of
    steps between the two values.
    """

    def __init__(self) -> None:
        self.anchor: Optional[torch.Tensor] = None  # latest computed value
        self.anchor_before: Optional[torch.Tensor] = None  # the computed value before it
        self.latest: Optional[torch.Tensor] = None  # latest value, computed or forecast
        self.before_latest: Optional[torch.Tensor] = None
        self.anchor_step: Optional[int] = None

    def update(self, value: torch.Tensor, step: int) -> None:
        if self.latest is not None and self.latest.shape != value.shape:
            self.__init__()  # a new resolution starts a new trajectory
        self.anchor_before, self.anchor = self.anchor, value
        self.before_latest, self.latest = self.latest, value
        self.anchor_step = step

    def approximate(self, step: int) -> torch.Tensor:
        if self.anchor is None or self.anchor_step is None:
            raise RuntimeError("FoCa stream has no computed value to forecast from")
        if self.before_latest is None or self.anchor_before is None:
            return self.anchor
        elapsed = float(step - self.anchor_step)
        # Trapezoidal rule: the anchor's derivative averaged with the local (recursive) one.
        slope = (self.anchor - self.anchor_before) + (self.latest - self.before_latest)
        horizon = min(elapsed, FOCA_MAX_HORIZON)
        forecast = self.anchor + (horizon / 2.0) * slope
        if elapsed > FOCA_MAX_HORIZON:
            # A linear trajectory is not trusted beyond the horizon: damp towards the anchor.
            weight = FOCA_MAX_HORIZON / elapsed
            forecast = weight * forecast + (1.0 - weight) * self.anchor
        self.before_latest, self.latest = self.latest, forecast
        return forecast

    def tensors(self) -> List[torch.Tensor]:
        held = (self.anchor, self.anchor_before, self.latest, self.before_latest)
        unique = {id(t): t for t in held if t is not None}
        return list(unique.values())


class _DMDFit:
    """Modes, eigenvalues and amplitudes fitted per batch item; evaluated at any horizon."""

    def __init__(
        self,
        per_item: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        shape: torch.Size,
        dtype: torch.dtype,
    ) -> None:
        self.per_item = per_item
        self.shape = shape
        self.dtype = dtype

    def evaluate(self, horizon: float) -> Optional[torch.Tensor]:
        """``Phi @ (lambda**horizon * b)`` per item, or None if the result is not finite."""
        rows = [(modes @ (eigenvalues.pow(horizon) * amplitudes)).real
                for modes, eigenvalues, amplitudes in self.per_item]
        forecast = torch.stack(rows) if len(self.shape) > 1 else rows[0]
        # Checked after the cast: a finite float64 value may overflow a half-precision dtype.
        forecast = forecast.to(self.dtype).reshape(self.shape)
        return forecast if bool(torch.isfinite(forecast).all()) else None


def _svd(matrix: torch.Tensor, precision: str) -> Tuple[torch.Tensor, ...]:
    if precision == "low":
        # Randomised, so seeded: equal inputs give equal forecasts (and cache-dit's values).
        devices = [matrix.device.index or 0] if matrix.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_DMD_LOWRANK_SEED)
            u, s, v = torch.svd_lowrank(matrix, q=matrix.shape[-1], niter=1)
        return u, s, v.mH
    driver = "gesvd" if precision == "high" and matrix.device.type == "cuda" else None
    return torch.linalg.svd(matrix, full_matrices=False, driver=driver)


def _fit_trajectory(
    trajectory: torch.Tensor, rank: int, ridge: float, precision: str
) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Exact DMD of one ``[features, snapshots]`` trajectory; None when degenerate."""
    before, after = trajectory[:, :-1], trajectory[:, 1:]
    try:
        u, s, vh = _svd(before, precision)
        if rank <= 0:
            rank = int((s > s[0] * _DMD_AUTO_RANK_CUTOFF).sum().clamp(min=1).item())
        rank = max(1, min(rank, s.numel()))
        u, s, v = u[:, :rank], s[:rank], vh[:rank].mH
        inverse = (1.0 / (s + ridge)).to(torch.complex128).unsqueeze(0)
        reduced = (u.mH @ after @ v).to(torch.complex128) * inverse
        eigenvalues, vectors = torch.linalg.eig(reduced)
        modes = ((after @ v).to(torch.complex128) * inverse) @ vectors
        newest = trajectory[:, -1].to(torch.complex128).unsqueeze(1)
        amplitudes = torch.linalg.lstsq(modes, newest).solution.squeeze(1)
    except RuntimeError:  # a singular or non-converging decomposition: caller reuses
        return None
    return modes, eigenvalues, amplitudes


class DMDStream(CalibratorStream):
    """DMD state: the last ``history`` computed values, and a TaylorSeer fallback."""

    def __init__(
        self,
        history: int = 6,
        rank: int = 0,
        ridge: float = 1e-8,
        svd_precision: str = "medium",
        n_derivatives: int = 1,
    ) -> None:
        if svd_precision not in DMD_SVD_PRECISIONS:
            raise ValueError(f"svd_precision must be one of {DMD_SVD_PRECISIONS}")
        self.history = history
        self.rank = rank
        self.ridge = ridge
        self.svd_precision = svd_precision
        self.fallback = TaylorSeerStream(n_derivatives)
        self.snapshots: List[Tuple[int, torch.Tensor]] = []
        self._fit: Optional[_DMDFit] = None
        self._fit_key: Optional[Tuple[int, int, int]] = None  # the window the fit belongs to

    def update(self, value: torch.Tensor, step: int) -> None:
        if self.snapshots and self.snapshots[-1][1].shape != value.shape:
            self.snapshots = []
        self.fallback.update(value, step)
        self.snapshots = [*self.snapshots, (step, value)][-self.history:]
        self._fit_key = None

    def approximate(self, step: int) -> torch.Tensor:
        window, spacing = self._uniform_tail()
        if len(window) < DMD_MIN_SNAPSHOTS:
            return self.fallback.approximate(step)
        newest_step, newest = self.snapshots[-1]
        key = (newest_step, len(window), spacing)
        if self._fit_key != key:  # one decomposition per window, reused by its cached steps
            self._fit = self._fit_window(window)
            self._fit_key = key
        forecast = None if self._fit is None else self._fit.evaluate((step - newest_step) / spacing)
        return newest if forecast is None else forecast

    def _uniform_tail(self) -> Tuple[List[torch.Tensor], int]:
        """The longest equally spaced suffix of the snapshots (oldest first) and its spacing.

        The fitted propagator advances one spacing per application, so mixed spacings (across
        the warmup boundary, or when the cache changes cadence) would corrupt the fit.
        """
        if len(self.snapshots) < 2:
            return [], 0
        steps = [step for step, _ in self.snapshots]
        spacing = steps[-1] - steps[-2]
        if spacing <= 0:
            return [], 0
        start = len(steps) - 2
        while start > 0 and steps[start] - steps[start - 1] == spacing:
            start -= 1
        return [value for _, value in self.snapshots[start:]], spacing

    def _fit_window(self, window: Sequence[torch.Tensor]) -> Optional[_DMDFit]:
        newest = window[-1]
        # Each batch item is fitted on its own so that prompts in one batch stay independent.
        items = newest.shape[0] if newest.dim() > 1 else 1
        stacked = torch.stack([v.reshape(items, -1) for v in window], dim=-1).to(torch.float64)
        per_item = []
        for trajectory in stacked:
            fitted = _fit_trajectory(trajectory, self.rank, self.ridge, self.svd_precision)
            if fitted is None:
                return None
            per_item.append(fitted)
        return _DMDFit(per_item, newest.shape, newest.dtype)

    def tensors(self) -> List[torch.Tensor]:
        held = [value for _, value in self.snapshots] + self.fallback.tensors()
        return list({id(t): t for t in held}.values())


# Calibrator type -> stream class; the constructor's keyword arguments are the accepted
# ``calibrator_kwargs`` (cache-dit's names).
CALIBRATOR_TYPES: Dict[str, Callable[..., CalibratorStream]] = {
    "taylorseer": TaylorSeerStream,
    "foca": FoCaStream,
    "dmd": DMDStream,
}


def accepted_kwargs(calibrator_type: str) -> List[str]:
    """The keyword arguments the streams of ``calibrator_type`` take."""
    return list(inspect.signature(CALIBRATOR_TYPES[calibrator_type]).parameters)


class Calibrator:
    """A set of named streams of one calibrator type (one CFG branch)."""

    def __init__(self, calibrator_type: str = "taylorseer", **kwargs: object) -> None:
        factory = CALIBRATOR_TYPES[calibrator_type]
        factory(**kwargs)  # fail here, not on the first computed step
        self.calibrator_type = calibrator_type
        self._make_stream = lambda: factory(**kwargs)
        self.streams: Dict[str, CalibratorStream] = {}

    def update(self, name: str, value: torch.Tensor, step: int) -> None:
        stream = self.streams.get(name)
        if stream is None:
            stream = self.streams[name] = self._make_stream()
        stream.update(value, step)

    def approximate(self, name: str, step: int) -> Optional[torch.Tensor]:
        stream = self.streams.get(name)
        return None if stream is None else stream.approximate(step)

    def reset(self) -> None:
        self.streams.clear()

    def tensors(self) -> List[torch.Tensor]:
        return [t for stream in self.streams.values() for t in stream.tensors()]

    def num_tensors(self) -> int:
        return len(self.tensors())


class TaylorSeerCalibrator(Calibrator):
    """TaylorSeer streams of one order (the default calibrator)."""

    def __init__(self, order: int = 1) -> None:
        super().__init__("taylorseer", n_derivatives=order)
        self.order = order
