"""The per-step compute-or-cache decision, free of tensors and modules.

One :class:`StepPolicy` belongs to one cache context (one block list). It owns the step counters,
the per-branch histories (cached steps, recorded diffs, streaks) and the gate sequence of
cache-dit 1.5.3 (spec §1.4): warmup → steps mask → max cached → max continuous → accumulated diff →
threshold, and the whole threshold rule after them (:meth:`StepPolicy.decide`): no reference, shape
change, threshold ≥ 1, the CFG branch reusing the cond diff, a non-finite diff, ``diff < threshold``.
DBCache (one decision per block list) and DBPrune (one per block) both decide here; the engine only
measures the diff (or the configured ``decision_signal``), through a callback, when the rule needs
it. A DBCache ``compute_budget`` puts :meth:`StepPolicy.budget_gate` ahead of the gates and scales
the threshold (:meth:`StepPolicy.budget_scale`); ``budget.py`` counts the steps.

Call identity (rule 3 of DESIGN.md): when the caller says which branch (diffusers'
``cache_context("cond" | "uncond", step_index=...)``) or which step a call belongs to, that is used;
otherwise calls are counted the way cache-dit counts them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .budget import budget_steps, warmup_limit, warmup_steps

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
    # DBPrune: {step: {block index: diff}} in the order the blocks were asked.
    block_diffs: Dict[int, Dict[int, float]] = dataclasses.field(default_factory=dict)
    accumulated_diff: float = 0.0
    streak: int = 0
    accumulated_cached_steps: int = 0
    calls: int = 0  # calls of this branch in this request (DBCache: one per step)

    def clear_request(self) -> None:
        self.cached_steps.clear()
        self.residual_diffs.clear()
        self.block_diffs.clear()
        self.calls = 0

    @property
    def computed_before(self) -> int:
        """Calls of this request computed before the current one (the budget's spending)."""
        return max(0, self.calls - 1 - len(self.cached_steps))


@dataclasses.dataclass(frozen=True)
class PruneSettings:
    """DBPrune's own decision fields (cache-dit's ``DBPruneConfig``)."""

    dynamic_threshold: bool = False
    relax_ratio: float = 1.25
    max_dynamic_threshold: Optional[float] = None
    non_prune_block_ids: Tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    """The decision-relevant fields of a cache config, resolved to plain values."""

    front_blocks: int = 8
    back_blocks: int = 0
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
    force_refresh_repeats: bool = False
    prune: Optional[PruneSettings] = None  # None: DBCache (one decision per block list)
    # Computed steps allowed per CFG branch in this request (``compute_budget`` resolved for
    # ``num_inference_steps``, warmup included); None: no budget.
    compute_budget: Optional[int] = None

    @classmethod
    def from_config(cls, config: Any, separate_cfg: bool) -> "PolicySettings":
        """Resolve a validated DBCache/DBPrune config into plain values."""
        prune = None
        if hasattr(config, "non_prune_block_ids"):
            prune = PruneSettings(
                dynamic_threshold=bool(config.enable_dynamic_prune_threshold),
                relax_ratio=float(config.dynamic_prune_threshold_relax_ratio),
                max_dynamic_threshold=_plain_float(config.max_dynamic_prune_threshold),
                non_prune_block_ids=tuple(config.non_prune_block_ids or ()),
            )
        return cls(
            front_blocks=config.Fn_compute_blocks,
            back_blocks=config.Bn_compute_blocks,
            max_warmup_steps=config.max_warmup_steps,
            warmup_interval=config.warmup_interval,
            max_cached_steps=config.max_cached_steps,
            max_continuous_cached_steps=config.max_continuous_cached_steps,
            max_accumulated_diff=_plain_float(config.max_accumulated_residual_diff_threshold),
            threshold=_plain_float(config.residual_diff_threshold),
            separate_cfg=separate_cfg,
            cfg_compute_first=bool(config.cfg_compute_first),
            cfg_diff_compute_separate=bool(config.cfg_diff_compute_separate),
            mask=normalize_mask(config.steps_computation_mask),
            static_mask=config.steps_computation_policy == "static",
            num_inference_steps=config.num_inference_steps,
            force_refresh_step_hint=config.force_refresh_step_hint,
            force_refresh_repeats=config.force_refresh_step_policy == "repeat",
            prune=prune,
            compute_budget=budget_steps(config.compute_budget, config.num_inference_steps),
        )

    def partition(self, num_blocks: int) -> Tuple[int, int]:
        """``(end of the front blocks, start of the back blocks)`` of a list of ``num_blocks``."""
        front = min(self.front_blocks, num_blocks)
        return front, max(front, num_blocks - self.back_blocks)

    def protected_blocks(self, num_blocks: int) -> frozenset:
        """DBPrune: the blocks that always compute (front, back and ``non_prune_block_ids``)."""
        front_end, back_start = self.partition(num_blocks)
        listed = () if self.prune is None else self.prune.non_prune_block_ids
        return frozenset(
            [*range(front_end), *range(back_start, num_blocks), *(i for i in listed if i < num_blocks)]
        )

    def warmup_steps(self, start: int, stop: int) -> int:
        """How many warmup steps lie in ``[start, stop)`` (the budget reserves them)."""
        return warmup_steps(self.warmup_limit(), self.warmup_interval, start, stop)

    def warmup_limit(self) -> int:
        """Steps before this one may be warmup; the mask's leading 1s bound it (they compute)."""
        return warmup_limit(self.max_warmup_steps, self.mask)


class StepPolicy:
    """Counters, histories and gates of one cache context."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        # Arithmetic, not a set of steps: memory must not grow with max_warmup_steps.
        self._warmup_limit = settings.warmup_limit()
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
        history.calls += 1
        if not history.cached_steps or history.cached_steps[-1] != step - 1:
            history.streak = 0

    def is_warmup(self, step: int) -> bool:
        return 0 <= step < self._warmup_limit and step % self.settings.warmup_interval == 0

    @property
    def history(self) -> BranchHistory:
        return self.histories[self.branch]

    # -- gates ---------------------------------------------------------------------------------

    def gate(self) -> Optional[Tuple[bool, str]]:
        """Gates 1–5 (warmup, mask, max cached, max continuous, accumulated diff): ``(cached,
        reason)`` when they settle the call, None when the threshold rule decides."""
        settings = self.settings
        step = self.step
        if self.is_warmup(step):
            return False, "warmup"
        mask = settings.mask
        if mask is not None:
            if step >= len(mask):
                # A mask says nothing past its end: compute rather than reuse one residual forever.
                return False, "past_mask"
            if mask[step] == 1:
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
        return None

    def decide(
        self,
        measure: Callable[[], float],
        *,
        has_reference: bool,
        same_shape: bool,
        block: Optional[int] = None,
    ) -> Tuple[bool, str, Optional[float]]:
        """The whole rule for one call (DBCache) or one block (DBPrune, ``block`` its index).

        Returns ``(cached, reason, recorded diff)``. ``measure`` computes the relative-L1 diff
        against the reference and is only called when the rule needs it; ``has_reference`` and
        ``same_shape`` say whether a reference exists and matches the current shape.
        """
        settled = self.budget_gate(has_reference and same_shape) if block is None else None
        if settled is None:
            settled = self.gate()
        if settled is not None:
            return settled[0], settled[1], None
        if self.settings.threshold <= 0:
            return False, "threshold_disabled", None
        if not has_reference:
            return False, "no_reference", None
        if not same_shape:
            # A new resolution or batch size inside a context: compute, never a shape error.
            self._record(-2.0, block)
            return False, "shape_changed", -2.0
        threshold = self.threshold(block)
        if threshold >= 1.0:
            self._record(-1.0, block)
            return True, "threshold_always", -1.0
        diff = self.reusable_diff(block)
        if diff is None:
            diff = measure()
        if not math.isfinite(diff):
            return False, "nonfinite_diff", None
        self._record(diff, block)
        return diff < threshold * self.budget_scale(), "diff", diff

    # -- compute budget --------------------------------------------------------------------------

    def _budget_position(self) -> Optional[Tuple[int, Optional[int]]]:
        """``(spendable, steps left)`` for this non-warmup call of a budgeted request: computes the
        branch may still spend beyond the warmup steps ahead, and the non-warmup steps from this
        one to the request's end (None when the step count is unknown). None: no budget applies."""
        settings = self.settings
        if settings.compute_budget is None or self.is_warmup(self.step):
            return None
        steps = settings.num_inference_steps
        horizon = self.step + 1 if steps is None else steps
        ahead = settings.warmup_steps(self.step + 1, horizon)
        spendable = settings.compute_budget - self.history.computed_before - ahead
        left = None if steps is None else steps - self.step - ahead
        return spendable, left

    def budget_gate(self, reusable: bool) -> Optional[Tuple[bool, str]]:
        """The budget's hard edges, ahead of every other gate: reuse once the budget is spent
        (when there is something to reuse), compute when the budget covers every step left."""
        position = self._budget_position()
        if position is None:
            return None
        spendable, left = position
        if spendable <= 0:
            return (True, "budget_spent") if reusable else None
        if left is not None and spendable >= left:
            return False, "budget_covers_rest"
        return None

    def budget_scale(self) -> float:
        """How much the threshold is relaxed (> 1) or tightened (< 1) so that the rest of the
        budget is spent at the rate planned for the whole request: the planned compute rate over
        the rate still affordable. 1 without a budget or a known step count."""
        position = self._budget_position()
        if position is None or position[1] is None:
            return 1.0
        spendable, left = position
        settings = self.settings
        steps = settings.num_inference_steps
        free_steps = steps - settings.warmup_steps(0, steps)
        planned = (settings.compute_budget - settings.warmup_steps(0, steps)) / free_steps
        return planned / (spendable / left)

    def threshold(self, block: Optional[int] = None) -> float:
        """The threshold of this call; DBPrune's dynamic one is relaxed from this step's first
        positive block diffs (cache-dit's ``enable_dynamic_prune_threshold``)."""
        base = self.settings.threshold
        prune = self.settings.prune
        if block is None or prune is None or not prune.dynamic_threshold:
            return base
        asked = self.history.block_diffs.get(self.step, {})
        recent = [d for d in list(asked.values())[:5] if d > 0]
        if not recent:
            return base
        relaxed = sum(recent) / len(recent) * prune.relax_ratio
        ceiling = prune.max_dynamic_threshold
        if ceiling is None:
            ceiling = 2 * base
        return relaxed if base < relaxed < ceiling else base

    def reusable_diff(self, block: Optional[int] = None) -> Optional[float]:
        """The cond branch's diff of this step (and block) when the CFG branch may reuse it."""
        if self.branch != UNCOND or self.settings.cfg_diff_compute_separate:
            return None
        cond = self.histories[COND]
        if block is None:
            return cond.residual_diffs.get(self.step)
        return cond.block_diffs.get(self.step, {}).get(block)

    def _record(self, diff: float, block: Optional[int]) -> None:
        if block is None:
            self.record_diff(diff)
        else:
            self.history.block_diffs.setdefault(self.step, {})[block] = diff

    def record_diff(self, diff: float) -> None:
        """Keep the first diff of this (step, branch); only positive diffs accumulate."""
        history = self.history
        if self.step in history.residual_diffs:
            return
        history.residual_diffs[self.step] = diff
        if diff > 0.0:
            history.accumulated_diff += diff

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


def _plain_float(value: Any) -> Optional[float]:
    """A float from a validated number (a 0-d tensor threshold included), None kept."""
    return None if value is None else float(value)


def normalize_mask(mask: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
    return None if mask is None else tuple(int(bit) for bit in mask)
