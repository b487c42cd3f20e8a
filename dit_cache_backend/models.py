"""The model families enable_cache knows without a BlockAdapter (cache-dit's registry, spec §5).

Each :class:`Family` names the block-list attributes of its transformer(s) and their forward
patterns, read off the diffusers 0.42.1 block signatures and off how each transformer's forward
loop unpacks the block outputs (``encoder_hidden_states, hidden_states = block(...)`` is
Pattern_1). Prefixes match class names with ``startswith`` in registration order, so specific
prefixes come first (``Flux2`` before ``Flux``, ``HunyuanVideo15`` before ``HunyuanVideo``).

A prefix also matches diffusers classes whose layout was not verified here (``WanVACE…``,
``WanAnimate…``, ``Flux3…``, ``QwenImage21…``, ``SanaVideo…``). For those the family returns
no adapter and ``enable_cache`` falls back to :mod:`.inference`, which reads the transformer's
forward and refuses loops that a cached list would change (VACE hints and controlnet residuals
added by block index, per-block modulation slices).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .adapter import BlockAdapter, BlockAdapterRegister, is_pipeline
from .errors import UnsupportedModelError
from .patterns import HIDDEN, ForwardPattern

P0, P1, P2, P3 = (
    ForwardPattern.Pattern_0,
    ForwardPattern.Pattern_1,
    ForwardPattern.Pattern_2,
    ForwardPattern.Pattern_3,
)


@dataclasses.dataclass(frozen=True)
class Family:
    """One registry entry: which block lists of which transformer(s), and their patterns."""

    prefix: str
    # The diffusers transformer classes this layout was checked against (tests/test_models.py).
    classes: Tuple[str, ...]
    lists: Tuple[Tuple[str, ForwardPattern], ...]
    separate_cfg: bool = False
    hidden_argument: str = HIDDEN
    # Wan 2.2 pipelines carry a second expert in `transformer_2`: one context per transformer.
    transformer_attrs: Tuple[str, ...] = ("transformer",)

    def transformers(self, obj: Any) -> Tuple[Optional[Any], List[torch.nn.Module]]:
        """(pipeline or None, the transformers to cache)."""
        if not is_pipeline(obj):
            return None, [obj]
        _refuse_controlnet(obj)
        found = [getattr(obj, attr, None) for attr in self.transformer_attrs]
        return obj, [t for t in found if isinstance(t, torch.nn.Module)]

    def verified(self, transformers: Sequence[torch.nn.Module]) -> bool:
        """Diffusers classes must be listed; others are trusted by prefix, as cache-dit does."""
        return all(
            type(t).__name__ in self.classes or not type(t).__module__.startswith("diffusers")
            for t in transformers
        )

    def adapter(self, obj: Any) -> Optional[BlockAdapter]:
        pipe, transformers = self.transformers(obj)
        if not self.verified(transformers):
            return None  # enable_cache then infers the layout (inference.py)
        attrs = [attr for attr, _ in self.lists]
        patterns = [pattern for _, pattern in self.lists]
        blocks = [[getattr(t, attr) for attr in attrs] for t in transformers]
        single = len(transformers) == 1
        return BlockAdapter(
            pipe=pipe,
            transformer=transformers[0] if single else transformers,
            blocks=blocks[0] if single else blocks,
            blocks_name=[attrs] * len(transformers),
            forward_pattern=[patterns] * len(transformers),
            has_separate_cfg=self.separate_cfg,
            # Our check matches parameter names; Z-Image's blocks name the hidden stream `x`.
            check_forward_pattern=self.hidden_argument == HIDDEN,
            hidden_argument=self.hidden_argument,
        )

    def register(self) -> None:
        BlockAdapterRegister.register(self.prefix, has_separate_cfg=self.separate_cfg)(
            self.adapter
        )


def _refuse_controlnet(pipe: Any) -> None:
    """ControlNet residuals are added per block inside the transformer loop: not cacheable as-is."""
    if getattr(pipe, "controlnet", None) is not None:
        raise UnsupportedModelError(
            f"{type(pipe).__name__} adds ControlNet residuals inside the transformer's block loop, "
            "indexed by block; a cached block list would add only the first one. Cache the "
            "pipeline without ControlNet, or pass a BlockAdapter for a transformer whose forward "
            "applies the residuals inside the blocks."
        )


@dataclasses.dataclass(frozen=True)
class FluxFamily(Family):
    """FLUX.1: one context over the 19 double + 38 single blocks, as cache-dit does by default.

    Both block kinds take ``(hidden_states, encoder_hidden_states)`` and return
    ``(encoder_hidden_states, hidden_states)``, so during a forward the double-block loop runs the
    whole concatenated list and the single-block loop runs nothing (a "dummy" list).
    Fn_compute_blocks=1 then probes with double block 0 and caches the other 56 blocks.
    """

    def adapter(self, obj: Any) -> Optional[BlockAdapter]:
        pipe, transformers = self.transformers(obj)
        if not self.verified(transformers):
            return None  # enable_cache then infers the layout (inference.py)
        transformer = transformers[0]
        return BlockAdapter(
            pipe=pipe,
            transformer=transformer,
            blocks=torch.nn.ModuleList(
                [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
            ),
            blocks_name="transformer_blocks",
            dummy_blocks_names=["single_transformer_blocks"],
            forward_pattern=P1,
            check_forward_pattern=True,
        )


class ChromaModulation:
    """Chroma's loops slice each block's ``temb`` out of ``pooled_temb`` by block index.

    A cached list runs its blocks from one call of the model's loop, so the modulation of every
    block is rebuilt here with the same slicing, from ``pooled_temb`` captured at the output of
    ``distilled_guidance_layer`` (diffusers 0.42's ``ChromaTransformer2DModel.forward``).
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


@dataclasses.dataclass(frozen=True)
class ChromaFamily(Family):
    """Chroma: double blocks (Pattern_1) and single blocks on the joined stream (Pattern_3)."""

    def adapter(self, obj: Any) -> Optional[BlockAdapter]:
        adapter = super().adapter(obj)
        if adapter is not None:
            adapter.patch_functor = ChromaModulation()
        return adapter


FAMILIES: Tuple[Family, ...] = (
    # Double blocks return (encoder, hidden); single blocks get the joined stream and return it
    # (their annotation says a pair, which is why patterns are read off the forward loops).
    Family("Flux2", ("Flux2Transformer2DModel",),
           (("transformer_blocks", P1), ("single_transformer_blocks", P3))),
    FluxFamily("Flux", ("FluxTransformer2DModel",), (("transformer_blocks", P1),)),
    ChromaFamily("Chroma", ("ChromaTransformer2DModel",),
                 (("transformer_blocks", P1), ("single_transformer_blocks", P3)), separate_cfg=True),
    Family("Mochi", ("MochiTransformer3DModel",), (("transformer_blocks", P0),)),
    Family("CogVideoX", ("CogVideoXTransformer3DModel",), (("transformer_blocks", P0),)),
    Family("CogView3Plus", ("CogView3PlusTransformer2DModel",), (("transformer_blocks", P0),)),
    Family("CogView4", ("CogView4Transformer2DModel",), (("transformer_blocks", P0),),
           separate_cfg=True),
    Family("EasyAnimate", ("EasyAnimateTransformer3DModel",), (("transformer_blocks", P0),)),
    Family("Wan", ("WanTransformer3DModel",), (("blocks", P2),), separate_cfg=True,
           transformer_attrs=("transformer", "transformer_2")),
    Family("ChronoEdit", ("ChronoEditTransformer3DModel",), (("blocks", P2),), separate_cfg=True),
    Family("Helios", ("HeliosTransformer3DModel",), (("blocks", P2),), separate_cfg=True),
    Family("AnyFlow", ("AnyFlowTransformer3DModel",), (("blocks", P2),)),
    # The text stream reaches every block unchanged; cache-dit says Pattern_3 for the same effect.
    Family("SkyReelsV2", ("SkyReelsV2Transformer3DModel",), (("blocks", P2),), separate_cfg=True),
    Family("HunyuanVideo15", ("HunyuanVideo15Transformer3DModel",),
           (("transformer_blocks", P0),), separate_cfg=True),
    Family("HunyuanVideo", ("HunyuanVideoTransformer3DModel",),
           (("transformer_blocks", P0), ("single_transformer_blocks", P0))),
    Family("QwenImage", ("QwenImageTransformer2DModel",), (("transformer_blocks", P1),),
           separate_cfg=True),
    Family("LTX", ("LTXVideoTransformer3DModel",), (("transformer_blocks", P2),)),
    Family("Allegro", ("AllegroTransformer3DModel",), (("transformer_blocks", P2),)),
    Family("Cosmos", ("CosmosTransformer3DModel",), (("transformer_blocks", P2),),
           separate_cfg=True),
    # The last JointTransformerBlock is context_pre_only and returns None as its encoder output.
    Family("StableDiffusion3", ("SD3Transformer2DModel",), (("transformer_blocks", P1),)),
    Family("SD3", ("SD3Transformer2DModel",), (("transformer_blocks", P1),)),
    # DiT's forward reads `transformer_blocks[0].norm1.emb` after its loop; that needs the engine's
    # stand-in for the list to expose the first block's attributes (test_dit_runs_cached).
    Family("DiT", ("DiTTransformer2DModel",), (("transformer_blocks", P3),)),
    Family("Lumina2", ("Lumina2Transformer2DModel",), (("layers", P3),), separate_cfg=True),
    Family("Lumina", ("LuminaNextDiT2DModel",), (("layers", P3),)),
    # BasicTransformerBlock takes the caption by keyword and returns only the hidden stream.
    Family("PixArt", ("PixArtTransformer2DModel",), (("transformer_blocks", P2),)),
    Family("Sana", ("SanaTransformer2DModel",), (("transformer_blocks", P3),)),
    # Only the single-stream blocks, as cache-dit: the joint blocks are few (4 of 36 in AuraFlow).
    Family("AuraFlow", ("AuraFlowTransformer2DModel",), (("single_transformer_blocks", P3),)),
    # Both Bria block kinds return (encoder, hidden); cache-dit 1.5.3 registers Pattern_0 here.
    Family("Bria", ("BriaTransformer2DModel",),
           (("transformer_blocks", P1), ("single_transformer_blocks", P1))),
    Family("PRX", ("PRXTransformer2DModel",), (("blocks", P2),)),
    Family("ZImage", ("ZImageTransformer2DModel",), (("layers", P3),), hidden_argument="x"),
    Family("OvisImage", ("OvisImageTransformer2DModel",),
           (("transformer_blocks", P1), ("single_transformer_blocks", P1)), separate_cfg=True),
    Family("LongCatImage", ("LongCatImageTransformer2DModel",),
           (("transformer_blocks", P1), ("single_transformer_blocks", P1)), separate_cfg=True),
    Family("Krea2", ("Krea2Transformer2DModel",), (("transformer_blocks", P3),), separate_cfg=True),
    Family("JoyImage", ("JoyImageEditTransformer3DModel",), (("double_blocks", P0),),
           separate_cfg=True),
)

for _family in FAMILIES:
    _family.register()
