"""The cached block list: runs the front blocks, asks the policy, then runs or reuses the middle.

During a cached transformer's forward the model's own ``for block in self.blocks:`` loop sees a
single :class:`CachedBlocks` in place of the whole list, so the model code is untouched. The
wrapper threads the hidden streams through the real blocks exactly as the model would have
(same argument names, same positional/keyword style), which keeps computed steps bit-exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .context import ENCODER_STREAM, HIDDEN_STREAM, BlockListContext, DBCacheContext
from .patterns import ENCODER, HIDDEN, ForwardPattern
from .policy import CallIdentity

Tensor = torch.Tensor


@dataclasses.dataclass
class BlockCall:
    """How the model called the block list: the streams, how they were passed, everything else."""

    pattern: ForwardPattern
    hidden_arg: str
    encoder_arg: str
    hidden: Tensor
    encoder: Optional[Tensor]
    hidden_by_keyword: bool
    encoder_by_keyword: Optional[bool]  # None: the caller did not pass an encoder stream
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    # Keyword arguments that differ per block (Chroma slices each block's modulation by index).
    block_kwargs: Optional[Callable[[int, Dict[str, Any]], Dict[str, Any]]] = None

    @classmethod
    def capture(
        cls,
        pattern: ForwardPattern,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        hidden_arg: str = HIDDEN,
        encoder_arg: str = ENCODER,
        block_kwargs: Optional[Callable[[int, Dict[str, Any]], Dict[str, Any]]] = None,
    ) -> "BlockCall":
        args = list(args)
        kwargs = dict(kwargs)
        if hidden_arg in kwargs:
            hidden, hidden_by_keyword = kwargs.pop(hidden_arg), True
        elif args:
            hidden, hidden_by_keyword = args.pop(0), False
        else:
            raise TypeError(
                f"cached block list called without '{hidden_arg}' (got keywords {sorted(kwargs)})"
            )
        encoder, encoder_by_keyword = None, None
        if pattern.takes_encoder:
            if encoder_arg in kwargs:
                encoder, encoder_by_keyword = kwargs.pop(encoder_arg), True
            elif args and not hidden_by_keyword:
                encoder, encoder_by_keyword = args.pop(0), False
        return cls(
            pattern=pattern,
            hidden_arg=hidden_arg,
            encoder_arg=encoder_arg,
            hidden=hidden,
            encoder=encoder,
            hidden_by_keyword=hidden_by_keyword,
            encoder_by_keyword=encoder_by_keyword,
            args=tuple(args),
            kwargs=kwargs,
            block_kwargs=block_kwargs,
        )

    def run(
        self,
        blocks: Sequence[torch.nn.Module],
        hidden: Tensor,
        encoder: Optional[Tensor],
        first_index: int = 0,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Run ``blocks`` (the list's blocks from ``first_index`` on), threading the streams."""
        pattern = self.pattern
        for index, block in enumerate(blocks, start=first_index):
            positional: List[Any] = []
            keywords = dict(self.kwargs)
            if self.block_kwargs is not None:
                keywords = self.block_kwargs(index, keywords)
            if self.hidden_by_keyword:
                keywords[self.hidden_arg] = hidden
            else:
                positional.append(hidden)
            if pattern.takes_encoder and self.encoder_by_keyword is not None:
                if self.encoder_by_keyword:
                    keywords[self.encoder_arg] = encoder
                else:
                    positional.append(encoder)
            positional.extend(self.args)
            output = block(*positional, **keywords)
            if pattern.takes_encoder:
                hidden, encoder = pattern.split_block_output(output, encoder)
            else:
                # Patterns 3-5 feed only the hidden stream forward; an encoder output is a result.
                hidden, encoder = pattern.split_block_output(output, None)
        return hidden, encoder


class BlockListRunner(torch.nn.Module):
    """What every technique's block-list wrapper shares: the blocks of this call, the first
    block's attributes, and how the model called the list."""

    def __init__(
        self,
        blocks: Sequence[torch.nn.Module],
        pattern: ForwardPattern,
        context: BlockListContext,
        identity: Callable[[], Optional[CallIdentity]],
        hidden_arg: str = HIDDEN,
        encoder_arg: str = ENCODER,
        block_kwargs: Optional[Callable[[int, Dict[str, Any]], Dict[str, Any]]] = None,
    ) -> None:
        super().__init__()
        # A tuple, not a ModuleList: the blocks stay owned by the model's own module tree.
        self._blocks: Tuple[torch.nn.Module, ...] = ()
        self.pattern = pattern
        self.context = context
        self._identity = identity
        self.hidden_arg = hidden_arg
        self.encoder_arg = encoder_arg
        self._block_kwargs = block_kwargs
        self.bind(blocks)

    def bind(self, blocks: Sequence[torch.nn.Module]) -> None:
        """Run ``blocks`` from now on: the session binds the list the module holds at each call, so
        a block replaced after enabling (compiled, FSDP-wrapped, hot-swapped) is the one that runs."""
        self._blocks = tuple(blocks)
        # Plain ints on the wrapper: compiled graphs guard on their values, not on the policy.
        self._bounds = self.context.policy.settings.partition(len(self._blocks))

    def release(self) -> None:
        """Hold no block between calls (a replaced block must not stay in memory through us)."""
        self._blocks = ()

    @property
    def blocks(self) -> Tuple[torch.nn.Module, ...]:
        return self._blocks

    def __getattr__(self, name: str) -> Any:
        # While a forward runs, `transformer.blocks[0]` is this wrapper; models that read a block's
        # attributes there (DiT: `transformer_blocks[0].norm1.emb`, SD3: `block.context_pre_only`)
        # get the first real block's.
        try:
            return super().__getattr__(name)
        except AttributeError:
            blocks = self.__dict__.get("_blocks")
            if not blocks:
                raise
            return getattr(blocks[0], name)

    def capture(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> BlockCall:
        return BlockCall.capture(
            self.pattern, args, kwargs, self.hidden_arg, self.encoder_arg, self._block_kwargs
        )


class CachedBlocks(BlockListRunner):
    """One block list run with DBCache: F blocks, decision, M blocks or cache, B blocks."""

    context: DBCacheContext

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        call = self.capture(args, kwargs)
        blocks = self._blocks
        front_end, back_start = self._bounds
        original = call.hidden
        hidden, encoder = call.run(blocks[:front_end], call.hidden, call.encoder)
        fn_residual = hidden - original.to(hidden.device)
        reused = self._decide(fn_residual, hidden, encoder)
        if reused is not None:
            hidden, encoder = reused
        else:
            front_hidden, front_encoder = hidden, encoder
            middle = blocks[front_end:back_start]
            hidden, encoder = call.run(middle, hidden, encoder, first_index=front_end)
            hidden, encoder = self._store_middle(hidden, encoder, front_hidden, front_encoder)
        hidden, encoder = call.run(blocks[back_start:], hidden, encoder, first_index=back_start)
        return self.pattern.pack_output(hidden, encoder)

    # Decision and bookkeeping are plain Python over counters and dicts; compiled graphs must
    # neither trace them (their ints and dict contents would become guards and recompile at every
    # step or request) nor depend on them. Tensors leave them contiguous, so the back blocks see
    # the same strides whether the step was cached or computed.

    @torch.compiler.disable
    def _decide(
        self, fn_residual: Tensor, hidden: Tensor, encoder: Optional[Tensor]
    ) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """Counters, rule and diff for this call; the reconstructed M output when it is cached."""
        context = self.context
        context.begin_call(self._identity())
        cached, reason, diff = context.decide(fn_residual)
        reused = self._reuse(hidden, encoder) if cached else None
        if cached and reused is None:
            cached, reason = False, "nothing_cached"
        if cached:
            context.policy.mark_cached()
        context.settle(fn_residual, cached)
        context.policy.record_decision(cached, reason, diff)
        return reused

    @torch.compiler.disable
    def _store_middle(
        self,
        hidden: Tensor,
        encoder: Optional[Tensor],
        front_hidden: Tensor,
        front_encoder: Optional[Tensor],
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Keep the middle blocks' contribution of this computed step for later cached steps."""
        context = self.context
        as_states = context.stores_hidden_states
        hidden = hidden.contiguous()
        context.store_middle(HIDDEN_STREAM, hidden if as_states else hidden - front_hidden)
        if isinstance(encoder, torch.Tensor):
            encoder = encoder.contiguous()
            if self.pattern.returns_encoder and isinstance(front_encoder, torch.Tensor):
                context.store_middle(
                    ENCODER_STREAM, encoder if as_states else encoder - front_encoder
                )
        return hidden, encoder

    def _reuse(
        self, hidden: Tensor, encoder: Optional[Tensor]
    ) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """F output plus the cached middle contribution, or None when nothing usable is cached."""
        context = self.context
        as_states = context.stores_hidden_states
        cached_hidden = context.cached_middle(HIDDEN_STREAM)
        if cached_hidden is None or cached_hidden.shape != hidden.shape:
            return None
        hidden = (cached_hidden if as_states else cached_hidden + hidden).contiguous()
        # The encoder slot may carry a non-tensor (BAGEL threads its KV cache there): pass it on.
        if isinstance(encoder, torch.Tensor):
            if self.pattern.returns_encoder:
                cached_encoder = context.cached_middle(ENCODER_STREAM)
                if cached_encoder is not None and cached_encoder.shape == encoder.shape:
                    encoder = cached_encoder if as_states else cached_encoder + encoder
            encoder = encoder.contiguous()
        return hidden, encoder
