"""Per-block keyword arguments for models whose block loop varies an argument by block index.

A cached block list is run by one stand-in module, so the model's loop body runs once per list
instead of once per block. When that body computes a block argument from the block index, a
:class:`~.block_adapter.PatchFunctor` rebuilds it for each block instead (declared on the model's
registry row, :mod:`.registry`). Each functor here mirrors one diffusers 0.42 ``forward`` exactly.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

import torch

from .errors import ConfigError


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


class HunyuanDiTSkips:
    """HunyuanDiT's loop feeds each block past the middle a long skip: block ``L`` (``L > n // 2``)
    takes the output of block ``n - 1 - L`` as ``skip`` (``HunyuanDiT2DModel.forward``).

    Forward hooks keep the outputs of the blocks that feed skips during one call of the list, and
    each later block gets its skip from them. On a cached step only the front and back blocks run:
    a back block whose skip comes from a block that did not run cannot be computed, so
    ``Bn_compute_blocks`` may not exceed ``Fn_compute_blocks`` on this model.
    """

    def __init__(self) -> None:
        self.num_layers = 0
        self.outputs: Dict[int, torch.Tensor] = {}

    def install(self, transformer: torch.nn.Module) -> Callable[[], None]:
        self.num_layers = transformer.config.num_layers
        handles = [
            block.register_forward_hook(self._keeper(index))
            for index, block in enumerate(transformer.blocks)
            if index < self.num_layers // 2 - 1
        ]

        def undo() -> None:
            for handle in handles:
                handle.remove()
            self.outputs.clear()

        return undo

    def _keeper(self, index: int) -> Callable[..., None]:
        def keep(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            self.outputs[index] = output

        return keep

    def block_kwargs(self, attr: str, index: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        if index == 0:
            self.outputs.clear()  # a new call of the list: no output of the last one is reused
        if index <= self.num_layers // 2:
            return kwargs
        source = self.num_layers - 1 - index
        if source not in self.outputs:
            raise ConfigError(
                "Bn_compute_blocks",
                f"a back block (block {index}) whose skip comes from block {source}, which a "
                "cached step does not run",
                "at most Fn_compute_blocks on HunyuanDiT (its last blocks take skips from its first)",
            )
        return {**kwargs, "skip": self.outputs[source]}


class GlmImageKVCaches:
    """GLM-Image passes block ``i`` its own ``kv_cache=kv_caches[i]`` (``None`` without caches).

    The transformer's ``kv_caches`` argument is captured by a forward pre-hook for each call.
    """

    def __init__(self) -> None:
        self.kv_caches: Any = None

    def install(self, transformer: torch.nn.Module) -> Callable[[], None]:
        signature = inspect.signature(type(transformer).forward)

        def capture(module: torch.nn.Module, args: Any, kwargs: Dict[str, Any]) -> None:
            bound = signature.bind_partial(module, *args, **kwargs).arguments
            self.kv_caches = bound.get("kv_caches")

        handle = transformer.register_forward_pre_hook(capture, with_kwargs=True)

        def undo() -> None:
            handle.remove()
            self.kv_caches = None

        return undo

    def block_kwargs(self, attr: str, index: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        caches = self.kv_caches
        return {**kwargs, "kv_cache": caches[index] if caches is not None else None}
