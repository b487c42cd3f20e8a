"""A tiny *trained* Flux transformer shipped with the package, for realistic offline CPU tests.

Random-weight tiny DiTs (what diffusers' own tests use) have flat, trendless step-to-step dynamics:
the first-block relative residual diff sits at 0.14-0.45 on every step, so any cache threshold either
never or always fires. The model here was trained for ~2.5 minutes on 2 CPU threads by
``scripts/train_tiny_model.py`` (rectified flow on 8 smooth sinusoidal class patterns) and shows the
profile of a real model: a large diff on the first step, then small ones. See ``docs/tiny_model.md``.

Layout (everything fits a real :class:`diffusers.FluxPipeline`, no Hub access needed):

* image: ``16 x 16`` pixels; the tiny VAE has one block, so ``vae_scale_factor == 1`` and the latent
  is ``1 x 16 x 16``;
* FluxPipeline packs 2x2 latent patches into tokens: 64 tokens of 4 channels, which is exactly the
  transformer's ``in_channels == 4`` (the pipeline derives ``num_channels_latents = in_channels // 4``);
* condition: per class a fixed ``(8, 32)`` text embedding and a ``(32,)`` pooled vector, stored in the
  asset next to the weights (there is no text encoder).

The VAE is random (but fixed, its weights are in the asset too): decoded images are deterministic
but meaningless, so quality metrics should use ``output_type="latent"`` (the default of
:func:`tiny_flux_inputs`), which returns the packed ``(B, 64, 4)`` latents that
:func:`tiny_flux_class_prototypes` can be compared with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

logger = logging.getLogger(__name__)

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "tiny_flux.safetensors"

TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 2,
    "num_single_layers": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": [4, 6, 6],
    # Like FLUX.1-schnell: no guidance embedding, so the pipeline passes guidance=None.
    "guidance_embeds": False,
}

# One down block => vae_scale_factor 1; latent_channels 1 => packed tokens carry 1 * 2 * 2 = 4 channels.
VAE_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (4,),
    "layers_per_block": 1,
    "latent_channels": 1,
    "norm_num_groups": 1,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    # Identity latent scaling: the trained latents already have unit scale.
    "shift_factor": 0.0,
    "scaling_factor": 1.0,
}

# FLUX.1's scheduler config: dynamic (resolution-dependent) exponential time shift. For 64 tokens
# mu is ~0.47, a mild shift towards high noise.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

NUM_CLASSES = 8
TEXT_SEQ_LEN = 8
IMAGE_SIZE = 16
NUM_TOKENS = (IMAGE_SIZE // 2) ** 2
TOKEN_CHANNELS = TRANSFORMER_CONFIG["in_channels"]

# Seed of the random initialisation (also used by the training script), so pretrained=False is
# reproducible too.
INIT_SEED = 0

_TRANSFORMER_PREFIX = "transformer."
_VAE_PREFIX = "vae."
PROMPT_EMBEDS_KEY = "class_prompt_embeds"
POOLED_EMBEDS_KEY = "class_pooled_prompt_embeds"
PROTOTYPES_KEY = "class_prototypes"


def _load_asset() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not ASSET_PATH.is_file():
        raise FileNotFoundError(
            f"tiny model asset missing: {ASSET_PATH}; run scripts/train_tiny_model.py to create it"
        )
    return load_file(str(ASSET_PATH))


def _sub_state_dict(asset: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # fp32 on load whatever the storage dtype, so the model always runs in the dtype it was trained in.
    return {k[len(prefix):]: v.float() for k, v in asset.items() if k.startswith(prefix)}


def asset_metadata() -> dict[str, str]:
    """Training record stored in the asset header (iterations, seconds, final loss, versions...)."""
    from safetensors import safe_open

    with safe_open(str(ASSET_PATH), framework="pt") as f:
        return dict(f.metadata() or {})


def tiny_flux_transformer(pretrained: bool = True) -> FluxTransformer2DModel:
    """The tiny Flux transformer (153.6 k parameters), trained weights by default.

    ``pretrained=False`` returns the deterministic random initialisation the training started from,
    useful as the "unrealistic dynamics" contrast. The caller's global RNG state is left untouched.
    """
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    if pretrained:
        model.load_state_dict(_sub_state_dict(_load_asset(), _TRANSFORMER_PREFIX), strict=True)
    return model.eval()


def _tiny_vae(asset: dict[str, torch.Tensor]) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE_CONFIG)
    # The VAE is random, but its weights are stored so decoding does not depend on torch's init code.
    vae.load_state_dict(_sub_state_dict(asset, _VAE_PREFIX), strict=True)
    return vae.eval()


def tiny_flux_pipeline(pretrained: bool = True) -> FluxPipeline:
    """A real :class:`diffusers.FluxPipeline` around the tiny transformer, built fully offline.

    Text encoders and tokenizers are ``None``: call it with the embeddings from
    :func:`tiny_flux_inputs`. The VAE decodes deterministically but is untrained, so compare
    ``output_type="latent"`` outputs when quality matters.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=_tiny_vae(_load_asset()),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=tiny_flux_transformer(pretrained=pretrained),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_class_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed per-class condition: prompt embeds ``(8, 8, 32)`` and pooled embeds ``(8, 32)``."""
    asset = _load_asset()
    return asset[PROMPT_EMBEDS_KEY].float(), asset[POOLED_EMBEDS_KEY].float()


def tiny_flux_class_prototypes() -> torch.Tensor:
    """Clean class patterns in the pipeline's packed latent layout, ``(8, 64, 4)``.

    Training samples were these plus N(0, 0.05^2) noise, so a good sample of class ``k`` (from
    ``output_type="latent"``) lies close to ``prototypes[k]``.
    """
    return _load_asset()[PROTOTYPES_KEY].float()


def tiny_flux_inputs(
    class_id: int,
    batch_size: int = 1,
    *,
    seed: int = 0,
    num_inference_steps: int = 28,
    output_type: str = "latent",
) -> dict[str, Any]:
    """Keyword arguments for ``tiny_flux_pipeline()(**kwargs)`` generating ``batch_size`` samples of a class.

    With ``output_type="latent"`` the pipeline returns packed latents ``(B, 64, 4)``; with ``"np"``
    images ``(B, 16, 16, 3)`` decoded by the random VAE. A fresh seeded generator is created on every
    call, so equal arguments give bit-identical outputs.
    """
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class_id must be in [0, {NUM_CLASSES}), got {class_id}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompt_embeds, pooled = tiny_flux_class_embeddings()
    return {
        "prompt_embeds": prompt_embeds[class_id].expand(batch_size, -1, -1).contiguous(),
        "pooled_prompt_embeds": pooled[class_id].expand(batch_size, -1).contiguous(),
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "num_inference_steps": num_inference_steps,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": output_type,
    }


def first_block_residual_diffs(pipe: FluxPipeline, **call_kwargs: Any) -> list[float]:
    """Run ``pipe(**call_kwargs)`` and return the first-block relative L1 residual diff per step.

    The residual is ``transformer_blocks[0]``'s image-stream output minus its input; entry ``i - 1`` is
    ``mean|r_i - r_{i-1}| / mean|r_{i-1}|`` for step ``i >= 1``, the quantity diffusers'
    FirstBlockCache (and DBCache with Fn=1) compares with its threshold.
    """
    return block_residual_diffs(pipe.transformer.transformer_blocks[0], lambda: pipe(**call_kwargs))


def block_residual_diffs(
    block: torch.nn.Module, run: Callable[[], Any], calls_per_step: int = 1
) -> list[float]:
    """The relative L1 change of ``block``'s residual from step to step while ``run()`` runs.

    A block returning a tuple (Flux: ``(encoder_hidden_states, hidden_states)``) has its image
    stream last. With ``calls_per_step`` calls a step (separate CFG), the first call's residuals
    are compared: the conditional branch's.
    """
    residuals: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hidden_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        hidden_out = output[-1] if isinstance(output, tuple) else output
        residuals.append((hidden_out - hidden_in).detach().float())

    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    branch = residuals[::calls_per_step]
    return [((cur - prev).abs().mean() / prev.abs().mean()).item() for prev, cur in zip(branch, branch[1:])]
