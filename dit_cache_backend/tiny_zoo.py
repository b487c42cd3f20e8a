"""The fidelity benchmark set: tiny *trained* models of DiT families, run in real pipelines.

* ``flux`` — the tiny Flux of :mod:`dit_cache_backend.tiny_model` (plane-wave classes);
* ``qwen-image`` — a ``QwenImageTransformer2DModel`` in a real ``QwenImagePipeline``, trained on
  Gaussian-blob classes (4 latent channels, 16 x 16, packed into 64 tokens of 16 channels);
* ``wan`` — a ``WanTransformer3DModel`` in a real ``WanPipeline`` (Wan 2.1's UniPC flow scheduler,
  classifier-free guidance: two transformer calls per step), trained on videos of Gaussian blobs
  moving across 4 latent frames (4 channels, 8 x 8, 64 tokens of 16 values).

Each model was trained once by ``scripts/train_tiny_family.py`` (rectified flow on CPU, minutes)
and ships as one safetensors asset under ``dit_cache_backend/assets`` (< 2 MB): transformer
weights, per-class condition embeddings and clean class prototypes in the pipeline's output
layout. The VAEs are random and seeded (not stored): compare ``output_type="latent"`` outputs.
See ``docs/tiny_model.md``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

from . import tiny_model

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
NUM_CLASSES = 8
TEXT_SEQ_LEN = 8
INIT_SEED = 0  # seed of the transformers' random initialisation (the training's start)
VAE_SEED = 42
PROMPT_EMBEDS_KEY = "class_prompt_embeds"
PROTOTYPES_KEY = "class_prototypes"
_TRANSFORMER_PREFIX = "transformer."

QWEN_TRANSFORMER_CONFIG: Dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 4,
    "num_layers": 6,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 16,
    "guidance_embeds": False,
    "axes_dims_rope": (8, 4, 4),
}
QWEN_VAE_CONFIG: Dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True],
    "latents_mean": [0.0] * 4,
    "latents_std": [1.0] * 4,
}
# Qwen-Image's own scheduler config (exponential dynamic shift, terminal sigma 0.02).
QWEN_SCHEDULER_CONFIG: Dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}
QWEN_IMAGE_SIZE = 64  # pixels; the VAE downsamples by 4: a 16 x 16 latent, 64 packed tokens
QWEN_LATENT = (4, 16, 16)  # channels, height, width

WAN_TRANSFORMER_CONFIG: Dict[str, Any] = {
    "patch_size": (1, 2, 2),
    # 64 wide: at 32 (2 heads) the model learned 3x slower and had not converged in 1500 steps.
    "num_attention_heads": 4,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,  # the width of the prompt embeddings the pipeline passes through unchanged
    "freq_dim": 64,
    "ffn_dim": 128,
    "num_layers": 6,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}
# The VAE's real factors (2 down-samplings in space, one in time). AutoencoderKLWan's defaults
# (4 and 8) are those of Wan 2.1's VAE, and WanPipeline reads them from the config.
WAN_VAE_CONFIG: Dict[str, Any] = {
    **QWEN_VAE_CONFIG,
    "scale_factor_temporal": 2,
    "scale_factor_spatial": 4,
}
# Wan 2.1's scheduler config (UniPC, flow prediction, flow shift 3): the transformer gets the
# timestep sigma * 1000 and predicts the velocity eps - x0.
WAN_SCHEDULER_CONFIG: Dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "solver_order": 2,
    "solver_type": "bh2",
    "final_sigmas_type": "zero",
}
WAN_VIDEO = (7, 32, 32)  # frames, height, width in pixels
WAN_LATENT = (4, 4, 8, 8)  # channels, latent frames, height, width
WAN_GUIDANCE_SCALE = 5.0  # WanPipeline's default

@dataclasses.dataclass(frozen=True)
class TinyFamily:
    """One trained tiny model: how to build its pipeline and call it for a class."""

    name: str
    description: str
    asset: Path
    build_pipeline: Callable[[bool], Any]  # pretrained -> pipeline
    call_kwargs: Callable[..., Dict[str, Any]]  # (class_id, batch_size, seed, steps) -> kwargs
    output_of: Callable[[Any], torch.Tensor]  # the pipeline's return value -> latents
    separate_cfg: bool = False  # one transformer call per branch (cond, uncond) and step
    blocks: str = "transformer_blocks"  # the transformer's ModuleList of blocks


def _load(asset: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not asset.is_file():
        raise FileNotFoundError(
            f"tiny model asset missing: {asset}; run scripts/train_tiny_family.py to create it"
        )
    return {key: value.float() for key, value in load_file(str(asset)).items()}


def asset_metadata(family: str) -> Dict[str, str]:
    """The training record stored in a family's asset header."""
    from safetensors import safe_open

    with safe_open(str(FAMILIES[family].asset), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_transformer(family: str, pretrained: bool = True) -> torch.nn.Module:
    """The family's transformer: trained weights, or the seeded initialisation training began at."""
    import diffusers

    class_name, config = _TRANSFORMERS[family]
    model = _seeded(lambda: getattr(diffusers, class_name)(**config), INIT_SEED)
    if pretrained:
        asset = _load(FAMILIES[family].asset)
        weights = {
            key[len(_TRANSFORMER_PREFIX):]: value
            for key, value in asset.items()
            if key.startswith(_TRANSFORMER_PREFIX)
        }
        model.load_state_dict(weights, strict=True)
    return model.eval()


def class_embeddings(family: str) -> torch.Tensor:
    """Per-class prompt embeddings ``(NUM_CLASSES, TEXT_SEQ_LEN, text_dim)``."""
    if family == "flux":
        return tiny_model.tiny_flux_class_embeddings()[0]
    return _load(FAMILIES[family].asset)[PROMPT_EMBEDS_KEY]


def class_prototypes(family: str) -> torch.Tensor:
    """Clean class samples in the pipeline's ``output_type="latent"`` layout, one per class."""
    if family == "flux":
        return tiny_model.tiny_flux_class_prototypes()
    return _load(FAMILIES[family].asset)[PROTOTYPES_KEY]


def _qwen_pipeline(pretrained: bool = True) -> Any:
    import diffusers

    pipe = diffusers.QwenImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER_CONFIG),
        vae=_seeded(lambda: diffusers.AutoencoderKLQwenImage(**QWEN_VAE_CONFIG), VAE_SEED),
        text_encoder=None,
        tokenizer=None,
        transformer=tiny_transformer("qwen-image", pretrained),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan_pipeline(pretrained: bool = True) -> Any:
    import diffusers

    pipe = diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=_seeded(lambda: diffusers.AutoencoderKLWan(**WAN_VAE_CONFIG), VAE_SEED),
        transformer=tiny_transformer("wan", pretrained),
        scheduler=diffusers.UniPCMultistepScheduler(**WAN_SCHEDULER_CONFIG),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _class_batch(family: str, class_ids: List[int]) -> torch.Tensor:
    return class_embeddings(family)[class_ids].contiguous()


def _check_request(class_id: int, batch_size: int) -> None:
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class_id must be in [0, {NUM_CLASSES}), got {class_id}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _qwen_kwargs(
    class_id: int, batch_size: int = 1, *, seed: int = 0, num_inference_steps: int = 28
) -> Dict[str, Any]:
    _check_request(class_id, batch_size)
    return {
        "prompt_embeds": _class_batch("qwen-image", [class_id] * batch_size),
        "prompt_embeds_mask": torch.ones(batch_size, TEXT_SEQ_LEN, dtype=torch.long),
        "true_cfg_scale": 1.0,  # no negative prompt: one transformer call per step
        "height": QWEN_IMAGE_SIZE,
        "width": QWEN_IMAGE_SIZE,
        **_seeded_latent_request(seed, num_inference_steps),
    }


def _seeded_latent_request(seed: int, num_inference_steps: int) -> Dict[str, Any]:
    """What every tiny-zoo request shares: its step count, a seeded CPU generator, latent output."""
    return {
        "num_inference_steps": num_inference_steps,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "latent",
    }


def _wan_kwargs(
    class_id: int, batch_size: int = 1, *, seed: int = 0, num_inference_steps: int = 28
) -> Dict[str, Any]:
    _check_request(class_id, batch_size)
    prompt_embeds = _class_batch("wan", [class_id] * batch_size)
    frames, height, width = WAN_VIDEO
    return {
        "prompt_embeds": prompt_embeds,
        # The training's null condition (dropped in 15 % of its batches): CFG's uncond branch.
        "negative_prompt_embeds": torch.zeros_like(prompt_embeds),
        "guidance_scale": WAN_GUIDANCE_SCALE,
        "num_frames": frames,
        "height": height,
        "width": width,
        **_seeded_latent_request(seed, num_inference_steps),
    }


def _flux_kwargs(
    class_id: int, batch_size: int = 1, *, seed: int = 0, num_inference_steps: int = 28
) -> Dict[str, Any]:
    return tiny_model.tiny_flux_inputs(
        class_id, batch_size, seed=seed, num_inference_steps=num_inference_steps
    )


_TRANSFORMERS = {
    "qwen-image": ("QwenImageTransformer2DModel", QWEN_TRANSFORMER_CONFIG),
    "wan": ("WanTransformer3DModel", WAN_TRANSFORMER_CONFIG),
}

FAMILIES: Dict[str, TinyFamily] = {
    "flux": TinyFamily(
        "flux",
        "tiny Flux (FluxPipeline), plane-wave classes, 28 steps x 1 call",
        tiny_model.ASSET_PATH,
        lambda pretrained=True: tiny_model.tiny_flux_pipeline(pretrained),
        _flux_kwargs,
        lambda result: result.images,
    ),
    "qwen-image": TinyFamily(
        "qwen-image",
        "tiny Qwen-Image (QwenImagePipeline), Gaussian-blob classes, 1 call per step",
        ASSETS / "tiny_qwen_image.safetensors",
        _qwen_pipeline,
        _qwen_kwargs,
        lambda result: result.images,
    ),
    "wan": TinyFamily(
        "wan",
        "tiny Wan 2.1 (WanPipeline), moving-blob videos of 4 latent frames, CFG: 2 calls per step",
        ASSETS / "tiny_wan.safetensors",
        _wan_pipeline,
        _wan_kwargs,
        lambda result: result.frames,
        separate_cfg=True,
        blocks="blocks",
    ),
}


def tiny_pipeline(family: str, pretrained: bool = True) -> Any:
    """The family's real diffusers pipeline around its tiny transformer, built offline."""
    return FAMILIES[_family(family)].build_pipeline(pretrained)


def tiny_inputs(
    family: str,
    class_id: int,
    batch_size: int = 1,
    *,
    seed: int = 0,
    num_inference_steps: int = 28,
) -> Dict[str, Any]:
    """Call kwargs generating ``batch_size`` latents of a class (a fresh seeded generator)."""
    return FAMILIES[_family(family)].call_kwargs(
        class_id, batch_size, seed=seed, num_inference_steps=num_inference_steps
    )


def generate(pipe: Any, family: str, **call_kwargs: Any) -> torch.Tensor:
    """Run the pipeline and return its latents (the layout of :func:`class_prototypes`)."""
    with torch.no_grad():
        return FAMILIES[_family(family)].output_of(pipe(**call_kwargs))


def first_block_residual_diffs(pipe: Any, family: str, **call_kwargs: Any) -> List[float]:
    """Per step, the first block's relative L1 residual change (the FBC / DBCache F1 signal).

    With classifier-free guidance (``wan``) it is the conditional branch's, step to step.
    """
    spec = FAMILIES[_family(family)]
    return tiny_model.block_residual_diffs(
        getattr(pipe.transformer, spec.blocks)[0],
        lambda: generate(pipe, family, **call_kwargs),
        calls_per_step=2 if spec.separate_cfg else 1,
    )


def _family(name: str) -> str:
    if name not in FAMILIES:
        raise ValueError(f"unknown tiny model family {name!r}; one of {sorted(FAMILIES)}")
    return name
