"""Tiny random diffusers transformers and offline pipelines, shared by the tests.

Configs follow diffusers' own model tests (``tests/models/transformers``; peers.md §5.1), shrunk
where possible. Every builder seeds torch, so two builds of the same spec have identical
weights, and every ``inputs(step)`` is deterministic: fixed random tensors plus a small per-step
drift and a slowly decreasing timestep, which is what a denoising loop feeds the transformer.

Pipelines (peers.md §5.2) are built with ``text_encoder=None`` and take prompt embeddings directly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Tuple

import diffusers
import torch

Inputs = Dict[str, Any]
Shape = Tuple[int, ...]

# Relative size of the per-step change of the latents: small, like consecutive denoising steps.
DRIFT = 0.02


@functools.lru_cache(maxsize=None)
def _fixed_randn(shape: Shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def randn(shape: Shape, seed: int) -> torch.Tensor:
    """A fixed random tensor: the same ``(shape, seed)`` always gives the same values."""
    return _fixed_randn(tuple(shape), seed).clone()  # a copy: callers may modify theirs


def latents(shape: Shape, step: int, seed: int = 0) -> torch.Tensor:
    """Noisy latents at ``step``: a fixed tensor moving slowly in a fixed random direction."""
    return randn(shape, seed) + DRIFT * step * randn(shape, seed + 1000)


def fraction_t(step: int, batch: int = 1) -> torch.Tensor:
    """Flow-matching time in [0, 1] (Flux-like models scale it by 1000 themselves)."""
    return torch.full((batch,), 1.0 - 0.02 * step)


def thousand_t(step: int, batch: int = 1) -> torch.Tensor:
    """Timestep on the 0..1000 scale used by Wan, SD3, PixArt, CogVideoX, …"""
    return torch.full((batch,), 980.0 - 20.0 * step)


@dataclasses.dataclass(frozen=True)
class TinyTransformer:
    """A diffusers transformer class, a tiny config for it, and its forward inputs per step."""

    class_name: str
    config: Dict[str, Any]
    inputs: Callable[[int], Inputs]
    # Some models zero-initialise their modulation, which makes every block the identity until
    # trained; random values there give blocks that do something.
    zero_init_modulation: bool = False

    def build(self) -> torch.nn.Module:
        torch.manual_seed(0)
        model = getattr(diffusers, self.class_name)(**self.config).eval()
        if self.zero_init_modulation:
            with torch.no_grad():
                for parameter in model.parameters():
                    if not parameter.any():
                        parameter.normal_(0.0, 0.1)
        return model


def _flux_ids(height: int, width: int, text_len: int) -> Inputs:
    img_ids = torch.zeros(height * width, 3)
    img_ids[:, 1] = torch.arange(height).repeat_interleave(width)
    img_ids[:, 2] = torch.arange(width).repeat(height)
    return {"img_ids": img_ids, "txt_ids": torch.zeros(text_len, 3)}


def _flux_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 16, 4), step),
        "encoder_hidden_states": randn((1, 12, 32), 1),
        "pooled_projections": randn((1, 32), 2),
        "timestep": fraction_t(step),
        **_flux_ids(4, 4, 12),
    }


def _flux_like_inputs(step: int) -> Inputs:
    """Flux inputs without the pooled projection (LongCat-Image, Ovis-Image, Chroma)."""
    inputs = _flux_inputs(step)
    del inputs["pooled_projections"]
    return inputs


def _flux2_inputs(step: int) -> Inputs:
    img_ids = torch.cartesian_prod(
        torch.arange(1), torch.arange(4), torch.arange(4), torch.arange(1)
    ).unsqueeze(0)
    txt_ids = torch.cartesian_prod(
        torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(12)
    ).unsqueeze(0)
    return {
        "hidden_states": latents((1, 16, 4), step),
        "encoder_hidden_states": randn((1, 12, 32), 1),
        "img_ids": img_ids,
        "txt_ids": txt_ids,
        "timestep": fraction_t(step),
        "guidance": torch.ones(1),
    }


def _longcat_inputs(step: int) -> Inputs:
    return {**_flux_like_inputs(step), "guidance": torch.full((1,), 3.5)}


def _qwen_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 16, 16), step),
        "encoder_hidden_states": randn((1, 8, 16), 1),
        "encoder_hidden_states_mask": torch.ones(1, 8, dtype=torch.long),
        "timestep": fraction_t(step),
        "img_shapes": [(1, 4, 4)],
    }


def _wan_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 2, 16, 16), step),
        "encoder_hidden_states": randn((1, 12, 16), 1),
        "timestep": thousand_t(step),
    }


def _sd3_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 16, 16), step),
        "encoder_hidden_states": randn((1, 12, 32), 1),
        "pooled_projections": randn((1, 64), 2),
        "timestep": thousand_t(step),
    }


def _zimage_inputs(step: int) -> Inputs:
    # Z-Image takes lists (one entry per image) and its block argument is `x`, not hidden_states.
    return {
        "x": [latents((16, 1, 16, 16), step)],
        "cap_feats": [randn((16, 16), 1)],
        "t": fraction_t(step),
    }


def _hunyuan_video_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 1, 16, 16), step),
        "timestep": thousand_t(step),
        "encoder_hidden_states": randn((1, 12, 16), 1),
        "encoder_attention_mask": torch.ones(1, 12),
        "pooled_projections": randn((1, 8), 2),
        "guidance": torch.full((1,), 3500.0),
    }


def _hunyuan_video15_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 1, 8, 8), step),
        "timestep": thousand_t(step),
        "encoder_hidden_states": randn((1, 6, 16), 1),
        "encoder_hidden_states_2": randn((1, 4, 8), 2),
        "encoder_attention_mask": torch.ones(1, 6),
        "encoder_attention_mask_2": torch.ones(1, 4),
        "image_embeds": torch.zeros(1, 3, 12),
    }


def _dit_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 8, 8), step),
        "timestep": thousand_t(step).long(),
        "class_labels": torch.tensor([1]),
    }


def _pixart_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 8, 8), step),
        "encoder_hidden_states": randn((1, 8, 8), 1),
        "timestep": thousand_t(step),
        "added_cond_kwargs": {"aspect_ratio": None, "resolution": None},
    }


def _sana_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 16, 16), step),
        "encoder_hidden_states": randn((1, 8, 8), 1),
        "timestep": thousand_t(step),
    }


def _cogvideox_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 1, 4, 8, 8), step),
        "encoder_hidden_states": randn((1, 8, 8), 1),
        "timestep": thousand_t(step),
    }


def _mochi_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 2, 16, 16), step),
        "encoder_hidden_states": randn((1, 16, 16), 1),
        "timestep": thousand_t(step),
        "encoder_attention_mask": torch.ones(1, 16, dtype=torch.bool),
    }


def _cogview_inputs(step: int) -> Inputs:
    size = torch.tensor([[64, 64]])
    return {
        "hidden_states": latents((1, 4, 8, 8), step),
        "encoder_hidden_states": randn((1, 8, 8), 1),
        "timestep": thousand_t(step),
        "original_size": size,
        "target_size": size,
        "crop_coords": torch.tensor([[0, 0]]),
    }


def _allegro_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 2, 8, 8), step),
        "encoder_hidden_states": randn((1, 8, 8), 1),
        "timestep": thousand_t(step),
    }


def _lumina2_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 16, 16), step),
        "timestep": fraction_t(step),
        "encoder_hidden_states": randn((1, 8, 32), 1),
        "encoder_attention_mask": torch.ones(1, 8, dtype=torch.bool),
    }


def _lumina_next_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 16, 16), step),
        "timestep": fraction_t(step),
        "encoder_hidden_states": randn((1, 8, 32), 1),
        "encoder_mask": torch.ones(1, 8),
        # diffusers' own test feeds a random table; the model slices it by position.
        "image_rotary_emb": randn((384, 384, 4), 2),
        "cross_attention_kwargs": {},
    }


def _auraflow_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 16, 16), step),
        "encoder_hidden_states": randn((1, 8, 32), 1),
        "timestep": thousand_t(step),
    }


def _ltx_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 2 * 8 * 8, 4), step),
        "encoder_hidden_states": randn((1, 8, 16), 1),
        "timestep": thousand_t(step),
        "encoder_attention_mask": torch.ones(1, 8, dtype=torch.bool),
        "num_frames": 2,
        "height": 8,
        "width": 8,
    }


def _chronoedit_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 16, 2, 8, 8), step),
        "timestep": thousand_t(step),
        "encoder_hidden_states": randn((1, 12, 32), 1),
    }


def _easyanimate_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 2, 16, 16), step),
        "timestep": thousand_t(step),
        "encoder_hidden_states": randn((1, 16, 16), 1),
    }


def _cosmos_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 1, 16, 16), step),
        "timestep": thousand_t(step),
        "encoder_hidden_states": randn((1, 12, 16), 1),
        "attention_mask": torch.ones(1, 12),
        "fps": 30,
    }


def _prx_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 16, 16, 16), step),
        "encoder_hidden_states": randn((1, 8, 32), 1),
        "timestep": fraction_t(step),
    }


def _joyimage_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 16, 1, 4, 4), step),
        "encoder_hidden_states": randn((1, 12, 16), 1),
        "timestep": fraction_t(step),
    }


def _anyflow_inputs(step: int) -> Inputs:
    t = thousand_t(step)
    return {
        "hidden_states": latents((1, 2, 4, 16, 16), step),
        "timestep": t.expand(1, 2),
        "r_timestep": (t / 2).expand(1, 2),
        "encoder_hidden_states": randn((1, 12, 16), 1),
    }


def _helios_inputs(step: int) -> Inputs:
    return {
        "hidden_states": latents((1, 4, 2, 16, 16), step),
        "timestep": thousand_t(step),
        "encoder_hidden_states": randn((1, 12, 16), 1),
        "indices_hidden_states": torch.ones(1, 2),
        "indices_latents_history_short": torch.ones(1, 1),
        "indices_latents_history_mid": torch.ones(1, 1),
        "indices_latents_history_long": torch.ones(1, 4),
        "latents_history_short": randn((1, 4, 1, 16, 16), 2),
        "latents_history_mid": randn((1, 4, 1, 16, 16), 3),
        "latents_history_long": randn((1, 4, 4, 16, 16), 4),
    }


def _krea2_inputs(step: int) -> Inputs:
    text_len, grid = 4, 2
    position_ids = torch.zeros(text_len + grid * grid, 3)
    position_ids[text_len:, 1] = torch.arange(grid).repeat_interleave(grid)
    position_ids[text_len:, 2] = torch.arange(grid).repeat(grid)
    return {
        "hidden_states": latents((1, grid * grid, 16), step),
        "encoder_hidden_states": randn((1, text_len, 3, 16), 1),
        "timestep": fraction_t(step),
        "position_ids": position_ids,
    }


def _flux_config(**extra: Any) -> Dict[str, Any]:
    return {
        "patch_size": 1,
        "in_channels": 4,
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "axes_dims_rope": [4, 4, 8],
        **extra,
    }


def _wan_config(**extra: Any) -> Dict[str, Any]:
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 4,
        "out_channels": 4,
        "text_dim": 16,
        "freq_dim": 256,
        "ffn_dim": 32,
        "num_layers": 3,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 32,
        **extra,
    }


def _stable_audio_inputs(step):
    return {"hidden_states": latents((1, 4, 16), step), "timestep": thousand_t(step),
            "encoder_hidden_states": randn((1, 6, 16), 1), "global_hidden_states": randn((1, 1, 16), 2),
            "rotary_embedding": None}


def _prior_inputs(step):
    return {"hidden_states": latents((1, 8), step), "timestep": thousand_t(step),
            "proj_embedding": randn((1, 8), 1), "encoder_hidden_states": randn((1, 4, 8), 2)}


def _uvit_inputs(step):
    return {"input_ids": torch.randint(0, 16, (1, 4, 4), generator=torch.Generator().manual_seed(0)),
            "encoder_hidden_states": randn((1, 6, 16), 1) + 0.02 * step, "pooled_text_emb": randn((1, 16), 2),
            "micro_conds": torch.tensor([[512.0, 512.0, 0.0, 0.0, 6.0]])}


def _hunyuandit_inputs(step):
    return {"hidden_states": latents((1, 4, 8, 8), step), "timestep": thousand_t(step),
            "encoder_hidden_states": randn((1, 4, 16), 1), "text_embedding_mask": torch.ones(1, 4),
            "encoder_hidden_states_t5": randn((1, 6, 16), 2), "text_embedding_mask_t5": torch.ones(1, 6),
            "image_meta_size": None, "style": None,
            "image_rotary_emb": None}


def _ernie_inputs(step):
    return {"hidden_states": latents((1, 4, 4, 4), step), "timestep": thousand_t(step),
            "text_bth": randn((1, 6, 16), 1), "text_lens": torch.tensor([6])}


def _hunyuan_image_inputs(step):
    return {"hidden_states": latents((1, 4, 8, 8), step), "timestep": thousand_t(step),
            "encoder_hidden_states": randn((1, 6, 16), 1), "encoder_attention_mask": torch.ones(1, 6)}


def _kandinsky_inputs(step):
    return {"hidden_states": latents((1, 1, 4, 4, 4), step), "encoder_hidden_states": randn((1, 6, 16), 1),
            "timestep": thousand_t(step), "pooled_projections": randn((1, 8), 2),
            "visual_rope_pos": [torch.arange(1), torch.arange(2), torch.arange(2)], "text_rope_pos": torch.arange(6)}


def _glm_inputs(step):
    return {"hidden_states": latents((1, 4, 4, 4), step), "encoder_hidden_states": randn((1, 6, 16), 1),
            "prior_token_id": torch.zeros(1, 4, dtype=torch.long), "prior_token_drop": torch.zeros(1, dtype=torch.bool),
            "timestep": thousand_t(step), "target_size": torch.tensor([[32.0, 32.0]]), "crop_coords": torch.tensor([[0.0, 0.0]])}


def _consisid_inputs(step):
    return {"hidden_states": latents((1, 1, 4, 4, 4), step), "encoder_hidden_states": randn((1, 6, 16), 1),
            "timestep": thousand_t(step)}


def _omnigen_inputs(step: int) -> Inputs:
    # 6 text tokens, the timestep token and the 16 latent patches attend to each other.
    tokens = 6 + 1 + 16
    return {
        "hidden_states": latents((1, 4, 8, 8), step),
        "timestep": fraction_t(step),
        "input_ids": torch.arange(1, 7)[None],
        "input_img_latents": [],
        "input_image_sizes": {},
        "attention_mask": torch.ones(1, tokens, tokens),
        "position_ids": torch.arange(tokens)[None],
    }


# Every model has at least 3 blocks per cached list, so F1B0 leaves a middle worth caching.
TINY_TRANSFORMERS: Dict[str, TinyTransformer] = {
    spec.class_name: spec
    for spec in [
        TinyTransformer(
            "FluxTransformer2DModel", _flux_config(pooled_projection_dim=32), _flux_inputs
        ),
        TinyTransformer(
            "Flux2Transformer2DModel",
            {
                "patch_size": 1,
                "in_channels": 4,
                "num_layers": 2,
                "num_single_layers": 3,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 32,
                "timestep_guidance_channels": 256,
                "axes_dims_rope": [4, 4, 4, 4],
            },
            _flux2_inputs,
        ),
        TinyTransformer(
            "QwenImageTransformer2DModel",
            {
                "patch_size": 2,
                "in_channels": 16,
                "out_channels": 4,
                "num_layers": 3,
                "attention_head_dim": 16,
                "num_attention_heads": 3,
                "joint_attention_dim": 16,
                "guidance_embeds": False,
                "axes_dims_rope": (8, 4, 4),
            },
            _qwen_inputs,
        ),
        TinyTransformer("WanTransformer3DModel", _wan_config(), _wan_inputs),
        TinyTransformer(
            "LongCatImageTransformer2DModel",
            _flux_config(pooled_projection_dim=32),
            _longcat_inputs,
        ),
        TinyTransformer(
            "SD3Transformer2DModel",
            {
                "sample_size": 16,
                "patch_size": 2,
                "in_channels": 4,
                "num_layers": 3,
                "attention_head_dim": 8,
                "num_attention_heads": 4,
                "caption_projection_dim": 32,
                "joint_attention_dim": 32,
                "pooled_projection_dim": 64,
                "out_channels": 4,
                "pos_embed_max_size": 16,
            },
            _sd3_inputs,
        ),
        TinyTransformer(
            "ZImageTransformer2DModel",
            {
                "all_patch_size": (2,),
                "all_f_patch_size": (1,),
                "in_channels": 16,
                "dim": 16,
                "n_layers": 3,
                "n_refiner_layers": 1,
                "n_heads": 1,
                "n_kv_heads": 2,
                "qk_norm": True,
                "cap_feat_dim": 16,
                "rope_theta": 256.0,
                "t_scale": 1000.0,
                "axes_dims": [8, 4, 4],
                "axes_lens": [256, 32, 32],
            },
            _zimage_inputs,
        ),
        TinyTransformer(
            "HunyuanVideoTransformer3DModel",
            {
                "in_channels": 4,
                "out_channels": 4,
                "num_attention_heads": 2,
                "attention_head_dim": 10,
                "num_layers": 2,
                "num_single_layers": 2,
                "num_refiner_layers": 1,
                "patch_size": 2,
                "patch_size_t": 1,
                "guidance_embeds": True,
                "text_embed_dim": 16,
                "pooled_projection_dim": 8,
                "rope_axes_dim": (2, 4, 4),
            },
            _hunyuan_video_inputs,
        ),
        TinyTransformer(
            "HunyuanVideo15Transformer3DModel",
            {
                "in_channels": 4,
                "out_channels": 4,
                "num_attention_heads": 2,
                "attention_head_dim": 8,
                "num_layers": 3,
                "num_refiner_layers": 1,
                "mlp_ratio": 2.0,
                "patch_size": 1,
                "patch_size_t": 1,
                "text_embed_dim": 16,
                "text_embed_2_dim": 8,
                "image_embed_dim": 12,
                "rope_axes_dim": (2, 2, 4),
                "target_size": 16,
                "task_type": "t2v",
            },
            _hunyuan_video15_inputs,
        ),
        TinyTransformer(
            "DiTTransformer2DModel",
            {
                "in_channels": 4,
                "out_channels": 8,
                "activation_fn": "gelu-approximate",
                "num_attention_heads": 2,
                "attention_head_dim": 4,
                "attention_bias": True,
                "num_layers": 3,
                "norm_type": "ada_norm_zero",
                "num_embeds_ada_norm": 8,
                "patch_size": 2,
                "sample_size": 8,
            },
            _dit_inputs,
        ),
        TinyTransformer(
            "PixArtTransformer2DModel",
            {
                "sample_size": 8,
                "num_layers": 3,
                "patch_size": 2,
                "attention_head_dim": 2,
                "num_attention_heads": 2,
                "in_channels": 4,
                "cross_attention_dim": 8,
                "out_channels": 8,
                "attention_bias": True,
                "activation_fn": "gelu-approximate",
                "num_embeds_ada_norm": 8,
                "norm_type": "ada_norm_single",
                "norm_elementwise_affine": False,
                "norm_eps": 1e-6,
                "use_additional_conditions": False,
                "caption_channels": None,
            },
            _pixart_inputs,
        ),
        TinyTransformer(
            "SanaTransformer2DModel",
            {
                "patch_size": 1,
                "in_channels": 4,
                "out_channels": 4,
                "num_layers": 3,
                "attention_head_dim": 4,
                "num_attention_heads": 2,
                "num_cross_attention_heads": 2,
                "cross_attention_head_dim": 4,
                "cross_attention_dim": 8,
                "caption_channels": 8,
                "sample_size": 16,
            },
            _sana_inputs,
        ),
        TinyTransformer(
            "CogVideoXTransformer3DModel",
            {
                "num_attention_heads": 2,
                "attention_head_dim": 8,
                "in_channels": 4,
                "out_channels": 4,
                "time_embed_dim": 2,
                "text_embed_dim": 8,
                "num_layers": 3,
                "sample_width": 8,
                "sample_height": 8,
                "sample_frames": 8,
                "patch_size": 2,
                "temporal_compression_ratio": 4,
                "max_text_seq_length": 8,
            },
            _cogvideox_inputs,
        ),
        TinyTransformer(
            "MochiTransformer3DModel",
            {
                "patch_size": 2,
                "num_attention_heads": 2,
                "attention_head_dim": 8,
                "num_layers": 3,
                "pooled_projection_dim": 16,
                "in_channels": 4,
                "qk_norm": "rms_norm",
                "text_embed_dim": 16,
                "time_embed_dim": 4,
                "activation_fn": "swiglu",
                "max_sequence_length": 16,
            },
            _mochi_inputs,
        ),
        TinyTransformer(
            "CogView3PlusTransformer2DModel",
            {
                "patch_size": 2,
                "in_channels": 4,
                "num_layers": 3,
                "attention_head_dim": 4,
                "num_attention_heads": 2,
                "out_channels": 4,
                "text_embed_dim": 8,
                "time_embed_dim": 8,
                "condition_dim": 2,
                "pos_embed_max_size": 8,
                "sample_size": 8,
            },
            _cogview_inputs,
        ),
        TinyTransformer(
            "CogView4Transformer2DModel",
            {
                "patch_size": 2,
                "in_channels": 4,
                "num_layers": 3,
                "attention_head_dim": 4,
                "num_attention_heads": 4,
                "out_channels": 4,
                "text_embed_dim": 8,
                "time_embed_dim": 8,
                "condition_dim": 4,
            },
            _cogview_inputs,
        ),
        TinyTransformer(
            "AllegroTransformer3DModel",
            {
                "num_attention_heads": 2,
                "attention_head_dim": 8,
                "in_channels": 4,
                "out_channels": 4,
                "num_layers": 3,
                "cross_attention_dim": 16,
                "sample_width": 8,
                "sample_height": 8,
                "sample_frames": 8,
                "caption_channels": 8,
            },
            _allegro_inputs,
        ),
        TinyTransformer("SkyReelsV2Transformer3DModel", _wan_config(), _wan_inputs),
        TinyTransformer(
            "Lumina2Transformer2DModel",
            {
                "sample_size": 16,
                "patch_size": 2,
                "in_channels": 4,
                "hidden_size": 24,
                "num_layers": 3,
                "num_refiner_layers": 1,
                "num_attention_heads": 3,
                "num_kv_heads": 1,
                "multiple_of": 2,
                "axes_dim_rope": (4, 2, 2),
                "axes_lens": (128, 128, 128),
                "cap_feat_dim": 32,
            },
            _lumina2_inputs,
        ),
        TinyTransformer(
            "LuminaNextDiT2DModel",
            {
                "sample_size": 16,
                "patch_size": 2,
                "in_channels": 4,
                "hidden_size": 24,
                "num_layers": 3,
                "num_attention_heads": 3,
                "num_kv_heads": 1,
                "multiple_of": 16,
                "learn_sigma": False,
                "qk_norm": True,
                "cross_attention_dim": 32,
            },
            _lumina_next_inputs,
        ),
        TinyTransformer(
            "AuraFlowTransformer2DModel",
            {
                "sample_size": 16,
                "patch_size": 2,
                "in_channels": 4,
                "num_mmdit_layers": 1,
                "num_single_dit_layers": 3,
                "attention_head_dim": 8,
                "num_attention_heads": 4,
                "caption_projection_dim": 32,
                "joint_attention_dim": 32,
                "out_channels": 4,
                "pos_embed_max_size": 64,
            },
            _auraflow_inputs,
        ),
        TinyTransformer(
            "BriaTransformer2DModel",
            {**_flux_config(), "attention_head_dim": 8, "axes_dims_rope": [0, 4, 4]},
            _flux_like_inputs,
        ),
        TinyTransformer("OvisImageTransformer2DModel", _flux_config(), _flux_like_inputs),
        TinyTransformer(
            "ChronoEditTransformer3DModel",
            {
                **_wan_config(),
                "in_channels": 16,
                "out_channels": 16,
                "attention_head_dim": 8,
                "text_dim": 32,
                "freq_dim": 16,
                "rope_max_seq_len": 64,
            },
            _chronoedit_inputs,
        ),
        TinyTransformer(
            "LTXVideoTransformer3DModel",
            {
                "in_channels": 4,
                "out_channels": 4,
                "num_attention_heads": 2,
                "attention_head_dim": 8,
                "cross_attention_dim": 16,
                "num_layers": 3,
                "qk_norm": "rms_norm_across_heads",
                "caption_channels": 16,
            },
            _ltx_inputs,
        ),
        TinyTransformer(
            "EasyAnimateTransformer3DModel",
            {
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "in_channels": 4,
                "mmdit_layers": 3,
                "num_layers": 3,
                "out_channels": 4,
                "patch_size": 2,
                "sample_height": 60,
                "sample_width": 90,
                "text_embed_dim": 16,
                "time_embed_dim": 8,
                "time_position_encoding_type": "3d_rope",
                "timestep_activation_fn": "silu",
            },
            _easyanimate_inputs,
        ),
        TinyTransformer(
            "CosmosTransformer3DModel",
            {
                "in_channels": 4,
                "out_channels": 4,
                "num_attention_heads": 2,
                "attention_head_dim": 12,
                "num_layers": 3,
                "mlp_ratio": 2,
                "text_embed_dim": 16,
                "adaln_lora_dim": 4,
                "max_size": (4, 32, 32),
                "patch_size": (1, 2, 2),
                "rope_scale": (2.0, 1.0, 1.0),
                # True would resize the padding mask with torchvision, which is not installed.
                "concat_padding_mask": False,
                "extra_pos_embed_type": "learnable",
            },
            _cosmos_inputs,
        ),
        TinyTransformer(
            "PRXTransformer2DModel",
            {
                "in_channels": 16,
                "patch_size": 2,
                "context_in_dim": 32,
                "hidden_size": 32,
                "mlp_ratio": 2.0,
                "num_heads": 2,
                "depth": 3,
                "axes_dim": [8, 8],
            },
            _prx_inputs,
            zero_init_modulation=True,
        ),
        TinyTransformer(
            "JoyImageEditTransformer3DModel",
            {
                "patch_size": [1, 2, 2],
                "in_channels": 16,
                "hidden_size": 32,
                "num_attention_heads": 2,
                "text_dim": 16,
                "num_layers": 3,
                "rope_dim_list": [4, 6, 6],
                "theta": 256,
            },
            _joyimage_inputs,
        ),
        TinyTransformer(
            "AnyFlowTransformer3DModel",
            {
                "patch_size": (1, 2, 2),
                "num_attention_heads": 2,
                "attention_head_dim": 12,
                "in_channels": 4,
                "out_channels": 4,
                "text_dim": 16,
                "freq_dim": 256,
                "ffn_dim": 32,
                "num_layers": 3,
                "cross_attn_norm": True,
                "rope_max_seq_len": 32,
            },
            _anyflow_inputs,
        ),
        TinyTransformer(
            "HeliosTransformer3DModel",
            {
                key: value
                for key, value in {**_wan_config(), "rope_dim": (4, 4, 4)}.items()
                if key != "rope_max_seq_len"
            },
            _helios_inputs,
        ),
        TinyTransformer(
            "Krea2Transformer2DModel",
            {
                "in_channels": 16,
                "num_layers": 3,
                "attention_head_dim": 8,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 32,
                "timestep_embed_dim": 8,
                "text_hidden_dim": 16,
                "num_text_layers": 3,
                "text_num_attention_heads": 2,
                "text_num_key_value_heads": 1,
                "text_intermediate_size": 16,
                "num_layerwise_text_blocks": 1,
                "num_refiner_text_blocks": 1,
                "axes_dims_rope": (4, 2, 2),
            },
            _krea2_inputs,
        ),
        TinyTransformer(
            "ChromaTransformer2DModel",
            {
                **_flux_config(),
                "approximator_num_channels": 8,
                "approximator_hidden_dim": 16,
                "approximator_layers": 1,
            },
            _flux_like_inputs,
        ),
        TinyTransformer("StableAudioDiTModel", dict(
            sample_size=16, in_channels=4, num_layers=4, attention_head_dim=4, num_attention_heads=2,
            num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16, time_proj_dim=8,
            global_states_input_dim=16, cross_attention_input_dim=16), _stable_audio_inputs),
        TinyTransformer("PriorTransformer", dict(
            num_attention_heads=2, attention_head_dim=4, num_layers=4, embedding_dim=8, num_embeddings=4,
            additional_embeddings=4), _prior_inputs),
        TinyTransformer("UVit2DModel", dict(
            hidden_size=16, cond_embed_dim=16, micro_cond_encode_dim=2, micro_cond_embed_dim=10,
            encoder_hidden_size=16, vocab_size=32, codebook_size=16, in_channels=16, block_out_channels=16,
            num_res_blocks=1, block_num_heads=2, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
            sample_size=4), _uvit_inputs),
        TinyTransformer("HunyuanDiT2DModel", dict(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=8,
            hidden_size=16, num_layers=6, cross_attention_dim=16, cross_attention_dim_t5=16,
            pooled_projection_dim=16, text_len=4, text_len_t5=6, use_style_cond_and_image_meta_size=False), _hunyuandit_inputs),
        TinyTransformer("ErnieImageTransformer2DModel", dict(
            hidden_size=16, num_attention_heads=2, num_layers=4, ffn_hidden_size=32, in_channels=4, out_channels=4,
            patch_size=1, text_in_dim=16, rope_axes_dim=(2, 2, 4)), _ernie_inputs),
        TinyTransformer("HunyuanImageTransformer2DModel", dict(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_single_layers=3, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=16, rope_axes_dim=(4, 4)),
            _hunyuan_image_inputs),
        TinyTransformer("Kandinsky5Transformer3DModel", dict(
            in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
            model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=4, axes_dims=(4, 2, 2)), _kandinsky_inputs),
        TinyTransformer("GlmImageTransformer2DModel", dict(
            patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=2,
            text_embed_dim=16, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=16), _glm_inputs),
        TinyTransformer("ConsisIDTransformer3DModel", dict(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=16, num_layers=4, sample_width=4, sample_height=4, sample_frames=1, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=6), _consisid_inputs),
        TinyTransformer("OmniGenTransformer2DModel", dict(
            in_channels=4, patch_size=2, hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=32, num_layers=4, pad_token_id=0, vocab_size=32, pos_embed_max_size=8,
            time_step_dim=8, rope_scaling={"short_factor": [1.0] * 4, "long_factor": [1.0] * 4},
            original_max_position_embeddings=64, max_position_embeddings=64), _omnigen_inputs),
    ]
}


# -- offline pipelines (peers.md §5.2) -----------------------------------------------------------


def tiny_flux_pipeline() -> diffusers.FluxPipeline:
    """FluxPipeline around the tiny Flux transformer; call it with ``flux_call_kwargs()``."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=TINY_TRANSFORMERS["FluxTransformer2DModel"].build(),
    )


def flux_call_kwargs(steps: int = 8) -> Inputs:
    return {
        "prompt_embeds": randn((1, 12, 32), 1),
        "pooled_prompt_embeds": randn((1, 32), 2),
        "height": 32,
        "width": 32,
        "num_inference_steps": steps,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "latent",
    }


def _wan_transformer(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = _wan_config(in_channels=16, out_channels=16, text_dim=32)
    return diffusers.WanTransformer3DModel(**config).eval()


def tiny_wan_pipeline(*, two_experts: bool = False) -> diffusers.WanPipeline:
    """WanPipeline (2.1), or Wan 2.2 with a low-noise expert in ``transformer_2``."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    return diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=_wan_transformer(0),
        transformer_2=_wan_transformer(1) if two_experts else None,
        # Wan 2.2's default; with 8 steps at shift 7 each expert gets 4 steps.
        boundary_ratio=0.875 if two_experts else None,
    )


def wan_call_kwargs(steps: int = 8) -> Inputs:
    """Separate CFG: guidance > 1 with negative embeddings runs cond and uncond per step."""
    return {
        "prompt_embeds": randn((1, 16, 32), 1),
        "negative_prompt_embeds": randn((1, 16, 32), 2),
        "guidance_scale": 5.0,
        "height": 16,
        "width": 16,
        "num_frames": 9,
        "num_inference_steps": steps,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "latent",
    }


def tiny_qwenimage_pipeline() -> diffusers.QwenImagePipeline:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    return diffusers.QwenImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        transformer=TINY_TRANSFORMERS["QwenImageTransformer2DModel"].build(),
    )


def qwenimage_call_kwargs(steps: int = 8) -> Inputs:
    """True CFG (two transformer calls per step): negative embeddings and true_cfg_scale > 1."""
    return {
        "prompt_embeds": randn((1, 8, 16), 1),
        "prompt_embeds_mask": torch.ones(1, 8, dtype=torch.long),
        "negative_prompt_embeds": randn((1, 8, 16), 2),
        "negative_prompt_embeds_mask": torch.ones(1, 8, dtype=torch.long),
        "true_cfg_scale": 4.0,
        "height": 32,
        "width": 32,
        "num_inference_steps": steps,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "latent",
    }
