"""Per-block keyword arguments for models whose block loop varies an argument by block index.

A cached block list is run by one stand-in module, so the model's loop body runs once per list
instead of once per block. When that body computes a block argument from the block index, a
:class:`~.block_adapter.PatchFunctor` rebuilds it for each block instead (declared on the model's
registry row, :mod:`.registry`). Each functor here mirrors one diffusers 0.42 ``forward`` exactly.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch


class ChromaModulation:
    """Chroma's loops slice each block's ``temb`` out of ``pooled_temb`` by block index.

    The modulation of every block is rebuilt here with the same slicing, from ``pooled_temb``
    captured at the output of ``distilled_guidance_layer`` (``ChromaTransformer2DModel.forward``).
    """

    def __init__(self) -> None:
        self.pooled_temb: Optional[torch.Tensor] = None
        self.double = self.single = 0

    def install(self, transformer: torch.nn.Module) -> Callable[[], None]:
        self.double = len(transformer.transformer_blocks)
        self.single = len(transformer.single_transformer_blocks)
        handle = transformer.distilled_guidance_layer.register_forward_hook(self._capture)
        return handle.remove

    def _capture(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        self.pooled_temb = output

    def block_kwargs(self, attr: str, index: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        pooled = self.pooled_temb
        if attr == "transformer_blocks":
            image = 3 * self.single + 6 * index
            text = 3 * self.single + 6 * self.double + 6 * index
            temb = torch.cat((pooled[:, image : image + 6], pooled[:, text : text + 6]), dim=1)
        else:
            temb = pooled[:, 3 * index : 3 * index + 3]
        return {**kwargs, "temb": temb}
