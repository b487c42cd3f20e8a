"""The model families enable_cache knows without a BlockAdapter (cache-dit's registry, spec §5).

Each entry names the transformer's block-list attributes and their forward patterns; registration
order matters because prefixes are matched with ``startswith`` (``Flux2`` before ``Flux``).
"""

from __future__ import annotations

from typing import Any

import torch

from .adapter import BlockAdapter, BlockAdapterRegister, is_pipeline, register_model
from .patterns import ForwardPattern

P0, P1, P2, P3 = (
    ForwardPattern.Pattern_0,
    ForwardPattern.Pattern_1,
    ForwardPattern.Pattern_2,
    ForwardPattern.Pattern_3,
)

# FLUX.2 keeps two lists with different signatures: two contexts.
register_model("Flux2", ["transformer_blocks", "single_transformer_blocks"], [P1, P3])


@BlockAdapterRegister.register("Flux")
def _flux(obj: Any) -> BlockAdapter:
    """FLUX.1: one context over the 19 double + 38 single blocks, as cache-dit does by default.

    Both block kinds take the same arguments and return (encoder, hidden), so during a forward the
    double-block loop runs the whole concatenated list and the single-block loop runs nothing.
    Fn_compute_blocks=1 then probes with double block 0 and caches the other 56 blocks.
    """
    pipe = obj if is_pipeline(obj) else None
    transformer = pipe.transformer if pipe is not None else obj
    blocks = torch.nn.ModuleList(
        [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    )
    return BlockAdapter(
        pipe=pipe,
        transformer=transformer,
        blocks=blocks,
        blocks_name="transformer_blocks",
        dummy_blocks_names=["single_transformer_blocks"],
        forward_pattern=P1,
        check_forward_pattern=False,
    )

register_model("Wan", ["blocks"], [P2], has_separate_cfg=True,
               transformer_attrs=("transformer", "transformer_2"))
register_model("QwenImage", ["transformer_blocks"], [P1], has_separate_cfg=True)
register_model("LongCatImage", ["transformer_blocks", "single_transformer_blocks"], [P1, P1],
               has_separate_cfg=True)
register_model("HunyuanVideo15", ["transformer_blocks"], [P0], has_separate_cfg=True)
register_model("HunyuanVideo", ["transformer_blocks", "single_transformer_blocks"], [P0, P0])
register_model("StableDiffusion3", ["transformer_blocks"], [P1])
register_model("SD3", ["transformer_blocks"], [P1])
register_model("CogView4", ["transformer_blocks"], [P0], has_separate_cfg=True)
register_model("CogVideoX", ["transformer_blocks"], [P0])
register_model("Mochi", ["transformer_blocks"], [P0])
register_model("PixArt", ["transformer_blocks"], [P3])
register_model("Sana", ["transformer_blocks"], [P3])
register_model("ZImage", ["layers"], [P3], hidden_argument="x")
register_model("Lumina2", ["layers"], [P3], has_separate_cfg=True)
register_model("SkyReelsV2", ["blocks"], [P3], has_separate_cfg=True)
register_model("Allegro", ["transformer_blocks"], [P2])
