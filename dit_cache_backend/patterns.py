"""Forward patterns: how a transformer block takes and returns its hidden streams.

A block list is cached as a whole, so the wrapper must know which positional inputs a block threads
through and in which order it returns them. The six patterns are cache-dit's, with the same names.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any, Optional, Tuple

import torch

HIDDEN = "hidden_states"
ENCODER = "encoder_hidden_states"


class ForwardPattern(enum.Enum):
    """(Return_H_First, Return_H_Only, Forward_H_only, In, Out) of a block's forward."""

    def __init__(
        self,
        Return_H_First: bool,
        Return_H_Only: bool,
        Forward_H_only: bool,
        In: Tuple[str, ...],
        Out: Tuple[str, ...],
        Supported: bool,
    ) -> None:
        self.Return_H_First = Return_H_First
        self.Return_H_Only = Return_H_Only
        self.Forward_H_only = Forward_H_only
        self.In = In
        self.Out = Out
        self.Supported = Supported

    Pattern_0 = (True, False, False, (HIDDEN, ENCODER), (HIDDEN, ENCODER), True)
    Pattern_1 = (False, False, False, (HIDDEN, ENCODER), (ENCODER, HIDDEN), True)
    Pattern_2 = (False, True, False, (HIDDEN, ENCODER), (HIDDEN,), True)
    Pattern_3 = (False, True, True, (HIDDEN,), (HIDDEN,), True)
    Pattern_4 = (True, False, True, (HIDDEN,), (HIDDEN, ENCODER), True)
    Pattern_5 = (False, False, True, (HIDDEN,), (ENCODER, HIDDEN), True)

    @property
    def takes_encoder(self) -> bool:
        """Whether blocks receive ``encoder_hidden_states`` as their second input."""
        return not self.Forward_H_only

    @property
    def returns_encoder(self) -> bool:
        """Whether the block list's output contains an encoder stream."""
        return not self.Return_H_Only

    def split_block_output(
        self, output: Any, encoder: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(hidden, encoder)`` from one block's return value.

        Patterns 2 and 3 return a bare tensor; the encoder stream then passes through unchanged
        (pattern 2) or does not exist (pattern 3). A pair whose second item is not a tensor counts as
        a bare hidden state, as some blocks return ``(hidden, None)``.
        """
        if isinstance(output, torch.Tensor):
            return output, encoder
        if isinstance(output, (tuple, list)):
            if len(output) == 1:
                return output[0], encoder
            first, second = output[0], output[1]
            if self.Forward_H_only and not isinstance(second, torch.Tensor):
                return first, encoder
            # A Pattern 3 block has no encoder stream: a pair it returns starts with the hidden one
            # (its Return_H_First is False only because cache-dit's enum says so).
            if self.Return_H_First or (self.Return_H_Only and self.Forward_H_only):
                return first, second
            return second, first
        raise TypeError(
            f"a block with {self.name} must return a tensor or a (tensor, tensor) pair, "
            f"got {type(output).__name__}"
        )

    def pack_output(self, hidden: torch.Tensor, encoder: Optional[torch.Tensor]) -> Any:
        """Shape the block list's result the way one of its blocks would have returned it."""
        if self.Return_H_Only:
            return hidden
        if self.Return_H_First:
            return hidden, encoder
        return encoder, hidden

    def signature_mismatch(self, block: torch.nn.Module) -> Optional[str]:
        """Why ``block``'s forward cannot follow this pattern, or None when it can."""
        block, signature = _forward_signature(block)
        if signature is None:
            return None
        parameters = signature.parameters
        missing = [name for name in self.In if name not in parameters]
        if missing:
            return (
                f"{type(block).__name__}.forward has no parameter(s) {missing} required by {self.name} "
                f"(it takes {list(parameters)})"
            )
        return None

    def output_count_mismatch(self, block: torch.nn.Module) -> Optional[str]:
        """Why ``block``'s annotated outputs do not fit this pattern, or None when they do.

        cache-dit's rule (``check_num_outputs``): the outputs are the ``torch.Tensor``s named in
        the forward's return annotation; a forward annotated with none is not checked.
        """
        block, signature = _forward_signature(block)
        if signature is None:
            return None
        annotation = signature.return_annotation
        returned = str(annotation).count("torch.Tensor")
        if returned and returned != len(self.Out):
            return (
                f"{type(block).__name__}.forward is annotated to return {returned} tensor(s) "
                f"({inspect.formatannotation(annotation)}); {self.name} returns "
                f"{len(self.Out)} {list(self.Out)}"
            )
        return None


def _forward_signature(
    block: torch.nn.Module,
) -> Tuple[torch.nn.Module, Optional[inspect.Signature]]:
    """The block whose forward is checked, and that forward's signature (None: not inspectable)."""
    inner = getattr(block, "block", None)
    if isinstance(inner, torch.nn.Module):
        block = inner  # HiDream-style wrappers keep the real block in `.block`
    try:
        return block, inspect.signature(block.forward)
    except (TypeError, ValueError):
        return block, None
