"""DBPrune: a per-block compute-or-reuse decision instead of one decision per block list.

Every block outside the first Fn, the last Bn and ``non_prune_block_ids`` compares its *input* with
its input at the last step it was computed (the policy's rule, as DBCache); when close enough it is
skipped and its stored residual is added instead. A step counts once as "pruned" however many
blocks it skipped (cache-dit 1.5.3 semantics, spec §1.8).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from .blocks import BlockCall, BlockListRunner
from .context import ENCODER_STREAM, HIDDEN_STREAM, BlockListContext
from .policy import BRANCHES, COND, UNCOND

Tensor = torch.Tensor


class PruneContext(BlockListContext):
    """Per-block buffers of one pruned block list: each block's last computed input and residual."""

    def _build_buffers(self) -> None:
        self.block_inputs: Dict[Tuple[str, int], Tensor] = {}
        self.block_residuals: Dict[Tuple[str, int, str], Tensor] = {}
        self.pruned_blocks: Dict[str, List[int]] = {branch: [] for branch in BRANCHES}
        self.actual_blocks: Dict[str, List[int]] = {branch: [] for branch in BRANCHES}

    def begin_call(self, identity: Any) -> None:
        super().begin_call(identity)
        if self.policy.transformer_step == 0:
            for store in (self.pruned_blocks, self.actual_blocks):
                for entries in store.values():
                    entries.clear()

    def decide_block(self, index: int, block_input: Tensor) -> bool:
        """Whether block ``index`` may be skipped on this call."""
        reference = self.block_inputs.get((self.branch, index))
        return self.decide_against(reference, block_input, block=index)[0]

    def store_block(
        self, index: int, block_input: Tensor, residual: Tensor, encoder_residual: Optional[Tensor]
    ) -> None:
        if residual.requires_grad:
            return  # a tracked graph is never reused (see BlockListContext.decide_against)
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

    def end_call(self, pruned: int, num_blocks: int) -> None:
        self.pruned_blocks[self.branch].append(pruned)
        self.actual_blocks[self.branch].append(num_blocks)
        self.policy.record_decision(pruned > 0, f"pruned {pruned}/{num_blocks}")

    def tensors(self) -> List[Tensor]:
        return [*self.block_inputs.values(), *self.block_residuals.values()]


def prune_stats(context: PruneContext) -> Dict[str, Any]:
    """The CacheStats fields only DBPrune has (cache-dit's names); diffs are lists per step."""

    def ratio(branch: str) -> Optional[float]:
        actual = sum(context.actual_blocks[branch])
        return sum(context.pruned_blocks[branch]) / actual if actual else None

    history = context.policy.histories

    def diffs(branch: str) -> Dict[str, List[float]]:
        asked = history[branch].block_diffs
        return {str(step): list(asked[step].values()) for step in sorted(asked)}

    return dict(
        residual_diffs=diffs(COND),
        cfg_residual_diffs=diffs(UNCOND),
        pruned_steps=list(history[COND].cached_steps),
        pruned_blocks=list(context.pruned_blocks[COND]),
        actual_blocks=list(context.actual_blocks[COND]),
        pruned_ratio=ratio(COND),
        cfg_pruned_steps=list(history[UNCOND].cached_steps),
        cfg_pruned_blocks=list(context.pruned_blocks[UNCOND]),
        cfg_actual_blocks=list(context.actual_blocks[UNCOND]),
        cfg_pruned_ratio=ratio(UNCOND),
    )


class PrunedBlocks(BlockListRunner):
    """A block list run with DBPrune."""

    context: PruneContext

    # Each block decides on its own input, so a traced loop would specialise on the block index
    # and on every skip pattern (a new graph per combination, request after request). The loop
    # therefore stays out of compilation (``recursive=False``): the blocks' own forwards are still
    # compiled, regionally or as frames of a whole-model compile, and never see a decision.
    @torch.compiler.disable(recursive=False)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        call = self.capture(args, kwargs)
        context = self.context
        self._begin()
        protected = context.policy.settings.protected_blocks(len(self._blocks))
        hidden, encoder = call.hidden, call.encoder
        pruned = 0
        for index, block in enumerate(self._blocks):
            reused = None
            if index not in protected:
                reused = self._decide_block(index, hidden, encoder)
            if reused is not None:
                hidden, encoder = reused
                pruned += 1
                continue
            block_input, encoder_input = hidden, encoder
            hidden, encoder = _run_one(call, block, hidden, encoder, index)
            if index not in protected:
                hidden, encoder = self._store_block(index, block_input, encoder_input, hidden, encoder)
        self._end(pruned)
        return self.pattern.pack_output(hidden, encoder)

    @torch.compiler.disable
    def _begin(self) -> None:
        self.context.begin_call(self._identity())

    @torch.compiler.disable
    def _end(self, pruned: int) -> None:
        self.context.end_call(pruned, len(self._blocks))

    @torch.compiler.disable
    def _decide_block(
        self, index: int, hidden: Tensor, encoder: Optional[Tensor]
    ) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """Block ``index``'s input plus its stored residual when it may be skipped, else None."""
        context = self.context
        if not context.decide_block(index, hidden):
            return None
        reused = self._apply_residual(index, hidden, encoder)
        if reused is not None:
            context.mark_pruned_step()
        return reused

    @torch.compiler.disable
    def _store_block(
        self,
        index: int,
        block_input: Tensor,
        encoder_input: Optional[Tensor],
        hidden: Tensor,
        encoder: Optional[Tensor],
    ) -> Tuple[Tensor, Optional[Tensor]]:
        hidden = hidden.contiguous()
        encoder_residual = None
        if encoder is not None and encoder_input is not None:
            encoder = encoder.contiguous()
            encoder_residual = encoder - encoder_input
        self.context.store_block(index, block_input, hidden - block_input, encoder_residual)
        return hidden, encoder

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


@torch.compiler.disable(recursive=False)
def _run_one(
    call: BlockCall, block: torch.nn.Module, hidden: Tensor, encoder: Optional[Tensor], index: int
) -> Tuple[Tensor, Optional[Tensor]]:
    """One block, outside compilation itself (its index is no guard); the block compiles alone."""
    return call.run((block,), hidden, encoder, first_index=index)
