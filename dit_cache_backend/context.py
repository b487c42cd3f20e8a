"""Cache contexts: the tensor state of one cached block list, around its :class:`StepPolicy`.

A context holds, per CFG branch, the Fn residual of the last computed step (the decision's
reference) and the middle-block residuals (plain buffers or TaylorSeer streams). It is rebuilt from
its configuration at every request boundary, so nothing crosses requests (rule 4).
"""

from __future__ import annotations

import logging
import math
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

from .calibrators import Calibrator
from .config import CalibratorConfig, DBCacheConfig
from .policy import BRANCHES, CallIdentity, PolicySettings, StepPolicy, normalize_mask

logger = logging.getLogger(__name__)

HIDDEN_STREAM = "hidden"
ENCODER_STREAM = "encoder"


def policy_settings(config: DBCacheConfig, separate_cfg: bool) -> PolicySettings:
    """Resolve a validated config into the plain values the policy needs."""
    threshold = config.residual_diff_threshold
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.item()
    return PolicySettings(
        max_warmup_steps=config.max_warmup_steps,
        warmup_interval=config.warmup_interval,
        max_cached_steps=config.max_cached_steps,
        max_continuous_cached_steps=config.max_continuous_cached_steps,
        max_accumulated_diff=config.max_accumulated_residual_diff_threshold,
        threshold=float(threshold),
        separate_cfg=separate_cfg,
        cfg_compute_first=bool(config.cfg_compute_first),
        cfg_diff_compute_separate=bool(config.cfg_diff_compute_separate),
        mask=normalize_mask(config.steps_computation_mask),
        static_mask=config.steps_computation_policy == "static",
        num_inference_steps=config.num_inference_steps,
        force_refresh_step_hint=config.force_refresh_step_hint,
    )


class CacheContext:
    """State of one cached block list for the current request."""

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

    def _build(self) -> None:
        self.policy = StepPolicy(policy_settings(self.cache_config, self.separate_cfg))
        self.fn_residuals: Dict[str, torch.Tensor] = {}
        self.middle: Dict[Tuple[str, str], torch.Tensor] = {}
        calibrator = self.calibrator_config
        self.calibrators: Dict[str, Calibrator] = {}
        if calibrator is not None and (
            calibrator.enable_calibrator or calibrator.enable_encoder_calibrator
        ):
            self.calibrators = {branch: calibrator.make_calibrator() for branch in BRANCHES}

    # -- lifetime -------------------------------------------------------------------------------

    def reset(self, *, keep_totals: bool = False) -> None:
        """Start afresh (new request); ``keep_totals`` keeps run-wide counters (forced refresh)."""
        previous = self.policy
        if keep_totals and self.cache_config.force_refresh_step_policy == "once":
            self.cache_config = self.cache_config.copy()
            self.cache_config.force_refresh_step_hint = None
        self._build()
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

    # -- the decision ----------------------------------------------------------------------------

    @property
    def branch(self) -> str:
        return self.policy.branch

    def decide(self, fn_residual: torch.Tensor) -> Tuple[bool, str, Optional[float]]:
        """Whether this call may reuse the cached middle residual, why, and the diff it recorded."""
        policy = self.policy
        settled = policy.gate()
        if settled is not None:
            cached, reason = settled
            return cached, reason, None
        previous = self.fn_residuals.get(policy.branch)
        if previous is None:
            return False, "no_reference", None
        if previous.shape != fn_residual.shape:
            # A new resolution or batch size inside a context: compute, never a shape error.
            policy.record_diff(-2.0)
            return False, "shape_changed", -2.0
        if policy.settings.threshold >= 1.0:
            policy.record_diff(-1.0)
            return True, "threshold_always", -1.0
        diff = policy.reusable_diff()
        if diff is None:
            diff = self._relative_l1(previous, fn_residual)
        if not math.isfinite(diff):
            self.nonfinite_diffs += 1
            return False, "nonfinite_diff", None
        policy.record_diff(diff)
        return policy.accepts(diff), "diff", diff

    def _relative_l1(self, previous: torch.Tensor, current: torch.Tensor) -> float:
        mean_diff = (previous - current).abs().mean()
        mean_previous = previous.abs().mean()
        if self._is_distributed():
            # Every rank must take the same decision (rule 6): average both means first.
            stacked = torch.stack([mean_diff, mean_previous])
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=self.process_group)
            mean_diff, mean_previous = stacked[0], stacked[1]
        return (mean_diff / mean_previous).item()

    def _is_distributed(self) -> bool:
        if not (dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.process_group) > 1

    # -- buffers ---------------------------------------------------------------------------------

    def store_fn_residual(self, fn_residual: torch.Tensor) -> None:
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

    def num_cached_tensors(self) -> int:
        """How many tensors this context holds right now (for memory accounting)."""
        count = len(self.fn_residuals) + len(self.middle)
        return count + sum(c.num_tensors() for c in self.calibrators.values())
