"""The per-step compute-or-cache decision, free of tensors and modules.

One :class:`StepPolicy` belongs to one cache context (one block list). It owns the step counters,
the per-branch histories (cached steps, recorded diffs, streaks) and the gate sequence of
cache-dit 1.5.3 (spec §1.4): warmup → steps mask → max cached → max continuous → accumulated diff →
threshold; the similarity test itself runs in the engine, which feeds the diff back here.

Call identity (rule 3 of DESIGN.md): when the caller says which branch (diffusers'
``cache_context("cond" | "uncond", step_index=...)``) or which step a call belongs to, that is used;
otherwise calls are counted the way cache-dit counts them.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

COND = "cond"
UNCOND = "uncond"
BRANCHES = (COND, UNCOND)


@dataclasses.dataclass(frozen=True)
class CallIdentity:
    """What the caller declared about a transformer call; ``None`` fields are counted instead."""

    branch: Optional[str] = None
    step: Optional[int] = None

    @classmethod
    def from_context_name(cls, name: Optional[str], step: Optional[int] = None) -> "CallIdentity":
        """Map a diffusers cache-context name to a branch ("uncond"/"negative" names are CFG)."""
        if name is None:
            return cls(branch=None, step=step)
        lowered = name.lower()
        branch = UNCOND if ("uncond" in lowered or "negative" in lowered) else COND
        return cls(branch=branch, step=step)


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of one block-list call, kept for stats and tests."""

    step: int
    transformer_call: int
    branch: str
    cached: bool
    diff: Optional[float]
    reason: str


@dataclasses.dataclass
class BranchHistory:
    """What one CFG branch of a context has done since the context (or request) began."""

    cached_steps: List[int] = dataclasses.field(default_factory=list)
    residual_diffs: Dict[int, float] = dataclasses.field(default_factory=dict)
    accumulated_diff: float = 0.0
    streak: int = 0
    accumulated_cached_steps: int = 0

    def clear_request(self) -> None:
        self.cached_steps.clear()
        self.residual_diffs.clear()


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    """The decision-relevant fields of a DBCache config, resolved to plain values."""

    max_warmup_steps: int = 8
    warmup_interval: int = 1
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1
    max_accumulated_diff: Optional[float] = None
    threshold: float = 0.08
    separate_cfg: bool = False
    cfg_compute_first: bool = False
    cfg_diff_compute_separate: bool = True
    mask: Optional[Tuple[int, ...]] = None
    static_mask: bool = False
    num_inference_steps: Optional[int] = None
    force_refresh_step_hint: Optional[int] = None

    def warmup_steps(self) -> frozenset:
        limit = self.max_warmup_steps
        if self.mask is not None:
            # The mask's leading run of 1s always computes, so warmup never extends past it.
            leading_ones = 0
            for bit in self.mask:
                if bit != 1:
                    break
                leading_ones += 1
            limit = min(limit, leading_ones)
        return frozenset(range(0, limit, self.warmup_interval))


class StepPolicy:
    """Counters, histories and gates of one cache context."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.warmup = settings.warmup_steps()
        self.transformer_calls = 0
        self.executed_steps = 0
        self.accumulated_executed_steps = 0
        self.accumulated_transformer_calls = 0
        self.step = -1
        self.transformer_step = -1
        self.branch = COND
        self.histories: Dict[str, BranchHistory] = {b: BranchHistory() for b in BRANCHES}
        self.decisions: List[Decision] = []
        self._branches_in_step: set = set()
        self._last_step_index: Optional[int] = None

    # -- call identity -------------------------------------------------------------------------

    def _counted_call(self, transformer_step: int) -> Tuple[str, bool]:
        """(branch, starts a new step) for a call known only by its position."""
        if not self.settings.separate_cfg:
            return COND, True
        first_of_pair = transformer_step % 2 == 0
        cfg_first = self.settings.cfg_compute_first
        return (UNCOND if first_of_pair == cfg_first else COND), first_of_pair

    def _resolve(self, identity: Optional[CallIdentity]) -> Tuple[str, int]:
        """(branch, step) the next call will have, without changing any state."""
        transformer_step = self.transformer_calls
        if identity is None or identity.branch is None:
            branch, advances = self._counted_call(transformer_step)
            if identity is not None and identity.step is not None:
                return branch, identity.step
            return branch, (self.executed_steps if advances else self.step)
        new_step = self.step < 0 or identity.branch in self._branches_in_step
        if identity.step is not None:
            # The caller's step index marks step boundaries, but each context counts its own steps:
            # Wan 2.2's low-noise expert first sees step_index 30, and starts (with warmup) at 0.
            new_step = new_step or identity.step != self._last_step_index
        return identity.branch, (self.step + 1 if new_step else self.step)

    def refresh_reason(self, identity: Optional[CallIdentity]) -> Optional[str]:
        """Why the context must start afresh before the next call, or None.

        Unlike cache-dit, the step-count refresh happens exactly when step N would begin, so
        back-to-back requests of N steps each see steps 0..N-1.
        """
        if self.transformer_calls == 0:
            return None
        branch, step = self._resolve(identity)
        limit = self.settings.num_inference_steps
        if limit is not None and step >= limit:
            return "num_inference_steps"
        if identity is not None and identity.step is not None and self._last_step_index is not None:
            index = identity.step
            if index < self._last_step_index or (
                index == self._last_step_index and branch in self._branches_in_step
            ):
                return "new_request"
        hint = self.settings.force_refresh_step_hint
        if hint is not None and self.transformer_step == hint - 1:
            return "force_refresh_step_hint"
        return None

    def next_step(self, identity: Optional[CallIdentity]) -> int:
        """The diffusion-step index the next call will get (used to size per-request state)."""
        return self._resolve(identity)[1]

    def begin_call(self, identity: Optional[CallIdentity] = None) -> None:
        """Advance the counters for one call (cache-dit's ``mark_step_begin``)."""
        branch, step = self._resolve(identity)
        self.transformer_calls += 1
        self.accumulated_transformer_calls += 1
        self.transformer_step = self.transformer_calls - 1
        if step != self.step:
            self.executed_steps += 1
            self.accumulated_executed_steps += 1
            self._branches_in_step = set()
        if identity is not None and identity.step is not None:
            self._last_step_index = identity.step
        self.step = step
        self.branch = branch
        self._branches_in_step.add(branch)
        if self.transformer_step == 0:
            for history in self.histories.values():
                history.clear_request()
        history = self.history
        if not history.cached_steps or history.cached_steps[-1] != step - 1:
            history.streak = 0

    @property
    def history(self) -> BranchHistory:
        return self.histories[self.branch]

    # -- gates ---------------------------------------------------------------------------------

    def gate(self) -> Optional[Tuple[bool, str]]:
        """Gates 1–6: ``(cached, reason)`` when they settle the call, None when the diff decides."""
        settings = self.settings
        step = self.step
        if step in self.warmup:
            return False, "warmup"
        mask = settings.mask
        if mask is not None:
            if step < len(mask) and mask[step] == 1:
                return False, "mask"
            if settings.static_mask:
                return True, "static_mask"
        history = self.history
        if 0 <= settings.max_cached_steps <= len(history.cached_steps):
            return False, "max_cached_steps"
        streak = history.streak
        if history.cached_steps and history.cached_steps[-1] == step:
            streak -= 1  # DBPrune asks once per block within a step; only earlier steps count
        if 0 <= settings.max_continuous_cached_steps <= streak:
            return False, "max_continuous_cached_steps"
        limit = settings.max_accumulated_diff
        if limit is not None and limit > 0 and history.accumulated_diff >= limit:
            return False, "max_accumulated_residual_diff"
        if settings.threshold <= 0:
            return False, "threshold_disabled"
        return None

    def reusable_diff(self) -> Optional[float]:
        """The cond branch's diff of this step when the CFG branch may reuse it."""
        settings = self.settings
        if self.branch != UNCOND or settings.cfg_diff_compute_separate:
            return None
        return self.histories[COND].residual_diffs.get(self.step)

    def record_diff(self, diff: float) -> None:
        """Keep the first diff of this (step, branch); only positive diffs accumulate."""
        history = self.history
        if self.step in history.residual_diffs:
            return
        history.residual_diffs[self.step] = diff
        if diff > 0.0:
            history.accumulated_diff += diff

    def accepts(self, diff: float) -> bool:
        return diff < self.settings.threshold

    def mark_cached(self) -> None:
        history = self.history
        history.cached_steps.append(self.step)
        history.streak += 1
        history.accumulated_cached_steps += 1

    def record_decision(self, cached: bool, reason: str, diff: Optional[float] = None) -> None:
        self.decisions.append(
            Decision(
                step=self.step,
                transformer_call=self.transformer_step,
                branch=self.branch,
                cached=cached,
                diff=diff,
                reason=reason,
            )
        )

    def carry_totals_from(self, previous: "StepPolicy") -> None:
        """Keep run-wide totals across a forced refresh inside one request (cache-dit semantics)."""
        self.accumulated_executed_steps = previous.accumulated_executed_steps
        self.accumulated_transformer_calls = previous.accumulated_transformer_calls
        for branch in BRANCHES:
            self.histories[branch].accumulated_cached_steps = previous.histories[
                branch
            ].accumulated_cached_steps
        self.decisions = list(previous.decisions)


def normalize_mask(mask: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
    return None if mask is None else tuple(int(bit) for bit in mask)
