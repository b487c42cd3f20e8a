"""DBPrune: a per-block compute-or-reuse decision instead of one decision per block list.

Every block outside the first Fn, the last Bn and ``non_prune_block_ids`` compares its *input* with
its input at the last step it was computed (same relative-L1 and gates as DBCache); when close
enough it is skipped and its stored residual is added instead. A step counts once as "pruned"
however many blocks it skipped (cache-dit 1.5.3 semantics, spec §1.8).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from .blocks import CachedBlocks
from .context import ENCODER_STREAM, HIDDEN_STREAM, CacheContext

Tensor = torch.Tensor


class PruneContext(CacheContext):
    """A cache context whose buffers are per block; diffs are recorded as a list per step."""

    def _build(self) -> None:
        super()._build()
        self.block_inputs: Dict[Tuple[str, int], Tensor] = {}
        self.block_residuals: Dict[Tuple[str, int, str], Tensor] = {}
        self.block_diffs: Dict[str, Dict[int, List[float]]] = {"cond": {}, "uncond": {}}
        self.pruned_blocks: Dict[str, List[int]] = {"cond": [], "uncond": []}
        self.actual_blocks: Dict[str, List[int]] = {"cond": [], "uncond": []}

    def begin_call(self, identity: Any) -> None:
        super().begin_call(identity)
        if self.policy.transformer_step == 0:
            for store in (self.pruned_blocks, self.actual_blocks, self.block_diffs):
                for entries in store.values():
                    entries.clear()

    def protected_blocks(self, num_blocks: int) -> frozenset:
        config = self.cache_config
        front = range(min(config.Fn_compute_blocks, num_blocks))
        back = range(num_blocks - min(config.Bn_compute_blocks, num_blocks), num_blocks)
        listed = [i for i in (config.non_prune_block_ids or []) if i < num_blocks]
        return frozenset([*front, *back, *listed])

    def _threshold(self) -> float:
        """The base threshold, relaxed from this step's first diffs when dynamic pruning is on."""
        config = self.cache_config
        base = self.policy.settings.threshold
        if not config.enable_dynamic_prune_threshold:
            return base
        recent = [d for d in self.block_diffs[self.branch].get(self.policy.step, [])[:5] if d > 0]
        if not recent:
            return base
        relaxed = sum(recent) / len(recent) * config.dynamic_prune_threshold_relax_ratio
        ceiling = config.max_dynamic_prune_threshold
        if ceiling is None:
            ceiling = 2 * base
        return relaxed if base < relaxed < ceiling else base

    def _record(self, diff: float) -> None:
        self.block_diffs[self.branch].setdefault(self.policy.step, []).append(diff)

    def decide_block(self, index: int, block_input: Tensor) -> bool:
        """Whether block ``index`` may be skipped on this call."""
        settled = self.policy.gate()
        if settled is not None:
            return settled[0]
        previous = self.block_inputs.get((self.branch, index))
        if previous is None:
            return False
        if previous.shape != block_input.shape:
            self._record(-2.0)
            return False
        threshold = self._threshold()
        if threshold >= 1.0:
            self._record(-1.0)
            return True
        diff = self._relative_l1(previous, block_input)
        self._record(diff)
        return diff < threshold

    def store_block(
        self, index: int, block_input: Tensor, residual: Tensor, encoder_residual: Optional[Tensor]
    ) -> None:
        branch = self.branch
        self.block_inputs[(branch, index)] = block_input
        self.block_residuals[(branch, index, HIDDEN_STREAM)] = residual
        if encoder_residual is not None:
            self.block_residuals[(branch, index, ENCODER_STREAM)] = encoder_residual

    def block_residual(self, index: int, stream: str) -> Optional[Tensor]:
        return self.block_residuals.get((self.branch, index, stream))

    def mark_pruned_step(self) -> None:
        history = self.policy.history
        if not history.cached_steps or history.cached_steps[-1] != self.policy.step:
            self.policy.mark_cached()

    def num_cached_tensors(self) -> int:
        return len(self.block_inputs) + len(self.block_residuals)


class PrunedBlocks(CachedBlocks):
    """A block list run with DBPrune."""

    context: PruneContext

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        call = self.capture(args, kwargs)
        context = self.context
        context.begin_call(self._identity())
        protected = context.protected_blocks(len(self._blocks))
        hidden, encoder = call.hidden, call.encoder
        pruned = 0
        for index, block in enumerate(self._blocks):
            reused = None
            if index not in protected and context.decide_block(index, hidden):
                reused = self._apply_residual(index, hidden, encoder)
            if reused is not None:
                hidden, encoder = reused
                context.mark_pruned_step()
                pruned += 1
                continue
            block_input, encoder_input = hidden, encoder
            hidden, encoder = call.run((block,), hidden, encoder, first_index=index)
            if index not in protected:
                hidden = hidden.contiguous()
                encoder_residual = None
                if encoder is not None and encoder_input is not None:
                    encoder = encoder.contiguous()
                    encoder_residual = encoder - encoder_input
                context.store_block(index, block_input, hidden - block_input, encoder_residual)
        context.pruned_blocks[context.branch].append(pruned)
        context.actual_blocks[context.branch].append(len(self._blocks))
        context.policy.record_decision(pruned > 0, f"pruned {pruned}/{len(self._blocks)}")
        return self.pattern.pack_output(hidden, encoder)

    def _apply_residual(
        self, index: int, hidden: Tensor, encoder: Optional[Tensor]
    ) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        residual = self.context.block_residual(index, HIDDEN_STREAM)
        if residual is None or residual.shape != hidden.shape:
            return None
        hidden = (residual + hidden).contiguous()
        if encoder is not None:
            encoder_residual = self.context.block_residual(index, ENCODER_STREAM)
            if encoder_residual is not None and encoder_residual.shape == encoder.shape:
                encoder = encoder_residual + encoder
            encoder = encoder.contiguous()
        return hidden, encoder
