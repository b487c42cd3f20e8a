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
from typing import Dict, List, Optional, Tuple

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
    """``mean|previous - current| / mean|previous|``, the same on every rank of the group.

    Every rank must take the same decision (rule 6 of DESIGN.md). Under torch.distributed the
    sums, not the means, are reduced across the group: the ratio of the global sums is the
    single-process ratio even when the shards are uneven.
    """
    if _is_distributed(process_group):
        stacked = torch.stack([(previous - current).abs().sum(), previous.abs().sum()])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=process_group)
        return (stacked[0] / stacked[1]).item()
    return ((previous - current).abs().mean() / previous.abs().mean()).item()


def _is_distributed(process_group: Optional[object]) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


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
    ) -> Tuple[bool, str, Optional[float]]:
        """The policy's rule, measuring ``current`` against ``reference`` only when it asks.

        A call that autograd tracks (training with gradients) always computes and keeps nothing:
        a residual from an earlier graph would be backpropagated through twice.
        """
        if current.requires_grad:
            return False, "gradients", None
        cached, reason, diff = self.policy.decide(
            lambda: relative_l1(reference, current, self.process_group),
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
        self.fn_residuals: Dict[str, torch.Tensor] = {}
        self.middle: Dict[Tuple[str, str], torch.Tensor] = {}
        calibrator = self.calibrator_config
        self.calibrators: Dict[str, Calibrator] = {}
        if calibrator is not None and (
            calibrator.enable_calibrator or calibrator.enable_encoder_calibrator
        ):
            self.calibrators = {branch: calibrator.make_calibrator() for branch in BRANCHES}

    def decide(self, fn_residual: torch.Tensor) -> Tuple[bool, str, Optional[float]]:
        """Whether this call may reuse the cached middle residual, why, and the diff it recorded."""
        return self.decide_against(self.fn_residuals.get(self.policy.branch), fn_residual)

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
        for calibrator in self.calibrators.values():
            found.extend(calibrator.tensors())
        return found
