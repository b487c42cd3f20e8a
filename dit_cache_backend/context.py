"""Cache contexts: the tensor state of one cached block list, around its :class:`StepPolicy`.

:class:`BlockListContext` is the part every technique shares: the configs, the policy, the request
lifetime (rebuilt at every request boundary, so nothing crosses requests, rule 4) and the measured
relative-L1 diff. :class:`DBCacheContext` adds DBCache's buffers: per CFG branch, the Fn residual of
the last computed step (the decision's reference) and the middle-block residuals (plain buffers or
TaylorSeer streams). DBPrune's per-block buffers are in ``prune.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .calibrators import Calibrator
from .config import CalibratorConfig, DBCacheConfig
from .policy import BRANCHES, CallIdentity, PolicySettings, StepPolicy

logger = logging.getLogger(__name__)

HIDDEN_STREAM = "hidden"
ENCODER_STREAM = "encoder"


def relative_l1(
    previous: torch.Tensor, current: torch.Tensor, process_group: Optional[object] = None
) -> float:
    """``mean|previous - current| / mean|previous|``, the same on every rank of the group."""
    return reduced_ratio((previous - current).abs(), previous.abs(), process_group)


def reduced_ratio(
    numerator: torch.Tensor, denominator: torch.Tensor, process_group: Optional[object] = None
) -> float:
    """``mean(numerator) / mean(denominator)`` of two same-shaped tensors, the same on every rank.

    Every rank must take the same decision (rule 6 of DESIGN.md). Under torch.distributed the
    sums, not the means, are reduced across the group: the ratio of the global sums is the
    single-process ratio even when the shards are uneven.
    """
    if _is_distributed(process_group):
        stacked = torch.stack([numerator.sum(), denominator.sum()])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=process_group)
        return (stacked[0] / stacked[1]).item()
    return (numerator.mean() / denominator.mean()).item()


def _is_distributed(process_group: Optional[object]) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


# -- decision signals (DBCache's ``decision_signal``) ---------------------------------------------
#
# Each signal turns a call's F residual into the one number the policy compares with the threshold,
# measured since the branch's last computed step; every reduction goes through `reduced_ratio`, so
# all ranks see the same value. The policy stays the same for every signal.


@dataclasses.dataclass
class SignalState:
    """What a signal keeps per CFG branch between the calls of one request."""

    previous: Optional[torch.Tensor] = None  # the last call's F residual (online magnitude ratios)
    ratio: float = 1.0  # product of the step ratios since the last computed step
    error: float = 0.0  # accumulated |1 - ratio| since the last computed step
    pending: Optional[Tuple[float, float]] = None  # (ratio, error) if this call is cached


class Signal:
    """``relative_l1``: cache-dit's relative-L1 diff of the F residual against the reference."""

    def measure(
        self, context: "DBCacheContext", reference: torch.Tensor, current: torch.Tensor
    ) -> float:
        return relative_l1(reference, current, context.process_group)

    def settle(self, context: "DBCacheContext", current: torch.Tensor, cached: bool) -> None:
        """Update the branch's state once the call is decided (nothing to keep by default)."""


class LowPassSignal(Signal):
    """``lowpass_l1`` (in the spirit of SeaCache): the relative-L1 diff of the F residuals after a
    low-pass filter along the token axis, so that high-frequency detail, which changes at every
    step without moving the trajectory, does not trigger a compute. Under sequence parallelism each
    rank filters its own shard (a windowed filter) and the sums are reduced as usual."""

    def measure(
        self, context: "DBCacheContext", reference: torch.Tensor, current: torch.Tensor
    ) -> float:
        keep = context.cache_config.signal_lowpass_ratio
        filtered = low_pass(reference, keep), low_pass(current, keep)
        return relative_l1(*filtered, context.process_group)


class MagnitudeSignal(Signal):
    """``magnitude`` (MagCache's rule): the error accumulated since the last computed step from
    the magnitude ratio of consecutive steps, ``error += |1 - prod(ratios)|``. The ratios are the
    calibrated ``signal_mag_ratios`` (one per step, stretched to the request's step count) or,
    without them, measured online: the mean per-token norm of this step's F residual over the
    previous step's."""

    def measure(
        self, context: "DBCacheContext", reference: torch.Tensor, current: torch.Tensor
    ) -> float:
        state = context.signal_state
        ratio = state.ratio * self._step_ratio(context, current)
        state.pending = (ratio, state.error + abs(1.0 - ratio))
        return state.pending[1]

    def settle(self, context: "DBCacheContext", current: torch.Tensor, cached: bool) -> None:
        state = context.signal_state
        if cached:
            if state.pending is None:  # a gate cached it without asking: the error still grows
                self.measure(context, current, current)
            state.ratio, state.error = state.pending
        else:
            state.ratio, state.error = 1.0, 0.0
        state.pending = None
        if context.cache_config.signal_mag_ratios is None:
            state.previous = current

    def _step_ratio(self, context: "DBCacheContext", current: torch.Tensor) -> float:
        calibrated = context.cache_config.signal_mag_ratios
        step = context.policy.step
        if calibrated is not None:
            steps = context.policy.settings.num_inference_steps
            return calibrated[stretched_index(step, len(calibrated), steps)]
        previous = context.signal_state.previous
        if previous is None or previous.shape != current.shape:
            return 1.0
        norms = torch.linalg.vector_norm(current.float(), dim=-1)
        previous_norms = torch.linalg.vector_norm(previous.float(), dim=-1)
        return reduced_ratio(norms, previous_norms, context.process_group)


SIGNALS: Dict[str, Signal] = {
    "relative_l1": Signal(),
    "lowpass_l1": LowPassSignal(),
    "magnitude": MagnitudeSignal(),
}


def low_pass(tensor: torch.Tensor, keep: float) -> torch.Tensor:
    """``tensor`` with only the lowest ``keep`` fraction of its frequencies along the token axis
    (dim 1 of a ``(batch, tokens, channels)`` tensor; the last dim of a smaller one)."""
    dim = 1 if tensor.dim() >= 3 else -1
    spectrum = torch.fft.rfft(tensor.float(), dim=dim)
    kept = max(1, math.ceil(keep * spectrum.shape[dim]))
    # irfft zero-pads the kept low frequencies back to the full length.
    return torch.fft.irfft(spectrum.narrow(dim, 0, kept), n=tensor.shape[dim], dim=dim)


def stretched_index(step: int, length: int, steps: Optional[int]) -> int:
    """The entry of a ``length``-long per-step curve for ``step`` of ``steps`` (nearest, as
    diffusers' MagCache stretches its ratios); the step itself, clipped, when ``steps`` is
    unknown."""
    if steps is None or steps <= 1 or length == 1:
        return min(step, length - 1)
    return min(length - 1, round(step * (length - 1) / (steps - 1)))


class BlockListContext:
    """Configs, policy and request lifetime of one cached block list (any technique)."""

    def __init__(
        self,
        name: str,
        cache_config: DBCacheConfig,
        calibrator_config: Optional[CalibratorConfig],
        *,
        separate_cfg: bool,
        process_group: Optional[object] = None,
    ) -> None:
        self.name = name
        self.cache_config = cache_config
        self.calibrator_config = calibrator_config
        self.separate_cfg = separate_cfg
        self.process_group = process_group
        self.nonfinite_diffs = 0
        self._build()

    def _build(self, settings: Optional[PolicySettings] = None) -> None:
        if settings is None:
            settings = PolicySettings.from_config(self.cache_config, self.separate_cfg)
        self.policy = StepPolicy(settings)
        self._build_buffers()

    def _build_buffers(self) -> None:
        """Fresh, empty tensor state for a new request."""
        raise NotImplementedError

    def tensors(self) -> List[torch.Tensor]:
        """Every tensor this context holds right now (for memory accounting)."""
        raise NotImplementedError

    def num_cached_tensors(self) -> int:
        return len(self.tensors())

    # -- lifetime -------------------------------------------------------------------------------

    def reset(self, *, keep_totals: bool = False) -> None:
        """Start afresh (new request); ``keep_totals`` keeps run-wide counters (forced refresh).

        A forced refresh with the "once" policy drops the hint from this request's settings only:
        the next request rebuilds from the config the user gave, and fires it again.
        """
        previous = self.policy
        settings = None
        if keep_totals and not previous.settings.force_refresh_repeats:
            settings = dataclasses.replace(previous.settings, force_refresh_step_hint=None)
        self._build(settings)
        if keep_totals:
            self.policy.carry_totals_from(previous)

    def reconfigure(
        self,
        cache_config: DBCacheConfig,
        calibrator_config: Optional[CalibratorConfig],
        *,
        separate_cfg: Optional[bool] = None,
    ) -> None:
        self.cache_config = cache_config
        self.calibrator_config = calibrator_config
        if separate_cfg is not None:
            self.separate_cfg = separate_cfg
        self._build()

    def begin_call(self, identity: Optional[CallIdentity]) -> None:
        reason = self.policy.refresh_reason(identity)
        if reason is not None:
            logger.debug("context %s refreshed: %s", self.name, reason)
            self.reset(keep_totals=reason == "force_refresh_step_hint")
        self.policy.begin_call(identity)

    @property
    def branch(self) -> str:
        return self.policy.branch

    # -- the decision ----------------------------------------------------------------------------

    def decide_against(
        self,
        reference: Optional[torch.Tensor],
        current: torch.Tensor,
        block: Optional[int] = None,
        measure: Optional[Callable[[], float]] = None,
    ) -> Tuple[bool, str, Optional[float]]:
        """The policy's rule, measuring ``current`` against ``reference`` only when it asks
        (the relative-L1 diff unless ``measure`` is given).

        A call that autograd tracks (training with gradients) always computes and keeps nothing:
        a residual from an earlier graph would be backpropagated through twice.
        """
        if current.requires_grad:
            return False, "gradients", None
        if measure is None:
            measure = lambda: relative_l1(reference, current, self.process_group)  # noqa: E731
        cached, reason, diff = self.policy.decide(
            measure,
            has_reference=reference is not None,
            same_shape=reference is not None and reference.shape == current.shape,
            block=block,
        )
        if reason == "nonfinite_diff":
            self.nonfinite_diffs += 1
        return cached, reason, diff


class DBCacheContext(BlockListContext):
    """DBCache state of one cached block list for the current request."""

    def _build_buffers(self) -> None:
        self.signal = SIGNALS[self.cache_config.decision_signal]
        self.signal_states: Dict[str, SignalState] = {branch: SignalState() for branch in BRANCHES}
        self.fn_residuals: Dict[str, torch.Tensor] = {}
        self.middle: Dict[Tuple[str, str], torch.Tensor] = {}
        calibrator = self.calibrator_config
        self.calibrators: Dict[str, Calibrator] = {}
        if calibrator is not None and (
            calibrator.enable_calibrator or calibrator.enable_encoder_calibrator
        ):
            self.calibrators = {branch: calibrator.make_calibrator() for branch in BRANCHES}

    def decide(self, fn_residual: torch.Tensor) -> Tuple[bool, str, Optional[float]]:
        """Whether this call may reuse the cached middle residual, why, and the signal value it
        recorded (``decision_signal``: the relative-L1 diff of the F residual by default)."""
        reference = self.fn_residuals.get(self.policy.branch)
        return self.decide_against(
            reference,
            fn_residual,
            measure=lambda: self.signal.measure(self, reference, fn_residual),
        )

    def settle(self, fn_residual: torch.Tensor, cached: bool) -> None:
        """After the decision: a computed call becomes the reference; the signal keeps its state."""
        if not cached:
            self.store_fn_residual(fn_residual)
        self.signal.settle(self, fn_residual, cached)

    @property
    def signal_state(self) -> SignalState:
        return self.signal_states[self.policy.branch]

    # -- buffers ---------------------------------------------------------------------------------

    def store_fn_residual(self, fn_residual: torch.Tensor) -> None:
        if not fn_residual.requires_grad:
            self.fn_residuals[self.policy.branch] = fn_residual

    def _calibrated(self, stream: str) -> bool:
        calibrator = self.calibrator_config
        if not self.calibrators or calibrator is None:
            return False
        if stream == HIDDEN_STREAM:
            return calibrator.enable_calibrator
        return calibrator.enable_encoder_calibrator

    def store_middle(self, stream: str, value: torch.Tensor) -> None:
        """Keep the middle blocks' contribution of a computed step for later cached steps."""
        if value.requires_grad:
            return
        branch = self.policy.branch
        if self._calibrated(stream):
            self.calibrators[branch].update(stream, value, self.policy.step)
        else:
            self.middle[(branch, stream)] = value

    def cached_middle(self, stream: str) -> Optional[torch.Tensor]:
        """The middle blocks' contribution for this cached step (reused or forecast)."""
        branch = self.policy.branch
        if self._calibrated(stream):
            return self.calibrators[branch].approximate(stream, self.policy.step)
        return self.middle.get((branch, stream))

    @property
    def stores_hidden_states(self) -> bool:
        """Whether the middle contribution is the M output itself rather than a residual."""
        calibrator = self.calibrator_config
        return calibrator is not None and calibrator.calibrator_cache_type == "hidden_states"

    def tensors(self) -> List[torch.Tensor]:
        found: List[torch.Tensor] = [*self.fn_residuals.values(), *self.middle.values()]
        found.extend(s.previous for s in self.signal_states.values() if s.previous is not None)
        for calibrator in self.calibrators.values():
            found.extend(calibrator.tensors())
        return found
