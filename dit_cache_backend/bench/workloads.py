"""What is benchmarked: a model, fixed inputs, and ``generate(steps)`` producing one output.

The trained tiny models (``tiny``: the Flux of docs/tiny_model.md; ``qwen-image``: the tiny
Qwen-Image of ``tiny_zoo``) run all their classes in one batched pipeline call; ``medium`` and
``flux-dev`` are random-weight FLUX-like transformers in an Euler loop; a directory is a local
diffusers pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch

from ..errors import DitCacheError

# A FLUX-like transformer sized so one step takes tens of ms on 2 CPU threads (docs/benchmarks.md).
# FLUX.1's 1 : 2 ratio of double to single blocks and its 64-dim heads, scaled down in width.
MEDIUM_CONFIG: Dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 6,
    "num_single_layers": 12,
    "attention_head_dim": 64,
    "num_attention_heads": 2,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 64,
    "axes_dims_rope": [16, 24, 24],
    "guidance_embeds": False,
}
MEDIUM_TOKENS = (256, 32)  # image tokens (16 x 16 grid), text tokens

# FLUX.1-dev's transformer config (random weights): 19 double + 38 single blocks, 24 x 128 heads.
FLUX_DEV_CONFIG: Dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
}
FLUX_DEV_TOKENS = (4096, 512)  # 1024 x 1024 image: 64 x 64 packed tokens; T5 length 512

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@dataclasses.dataclass
class Workload:
    """What is benchmarked: ``generate(steps)`` produces one output from fixed inputs."""

    name: str
    description: str
    total_steps: int
    transformer: torch.nn.Module
    cache_target: Any  # what enable_cache receives (pipeline or transformer)
    generate: Callable[[int], torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    to_images: Callable[[torch.Tensor], torch.Tensor]  # output → (N, H, W, C) for SSIM
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)


def _flow_sigmas(steps: int, shift: float = 3.0) -> List[float]:
    """FLUX-style shifted flow-matching sigmas from 1 towards 0, then 0."""
    base = [1.0 - i / steps for i in range(steps)]
    return [shift * s / (1 + (shift - 1) * s) for s in base] + [0.0]


def loop_workload(
    name: str,
    description: str,
    config: Dict[str, Any],
    tokens: Tuple[int, int],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
) -> Workload:
    """A transformer-only Euler loop over fixed random inputs (random weights, seed 0)."""
    from diffusers import FluxTransformer2DModel

    image_tokens, text_tokens = tokens
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
        try:
            with torch.device(device):
                transformer = FluxTransformer2DModel(**config)
        finally:
            torch.set_default_dtype(previous)
    transformer = transformer.eval()  # built directly on ``device`` in ``dtype``
    generator = torch.Generator("cpu").manual_seed(args.seed)
    batch, side = args.batch, int(round(image_tokens**0.5))
    noise = torch.randn(batch, image_tokens, config["in_channels"], generator=generator)
    text = torch.randn(batch, text_tokens, config["joint_attention_dim"], generator=generator)
    pooled = torch.randn(batch, config["pooled_projection_dim"], generator=generator)
    img_ids = torch.zeros(image_tokens, 3)
    img_ids[:, 1] = torch.arange(image_tokens) // side
    img_ids[:, 2] = torch.arange(image_tokens) % side
    fixed = {
        "encoder_hidden_states": text.to(device, dtype),
        "pooled_projections": pooled.to(device, dtype),
        "img_ids": img_ids.to(device, dtype),
        "txt_ids": torch.zeros(text_tokens, 3, device=device, dtype=dtype),
        "return_dict": False,
    }
    if config.get("guidance_embeds"):
        fixed["guidance"] = torch.full((batch,), 3.5, device=device, dtype=torch.float32)
    noise = noise.to(device, dtype)

    def generate(steps: int) -> torch.Tensor:
        sigmas = _flow_sigmas(steps)
        x = noise.clone()
        with torch.no_grad():
            for i in range(steps):
                timestep = torch.full((batch,), sigmas[i], device=device, dtype=dtype)
                # As FluxPipeline does: diffusers' caches need the context, ours reads the branch.
                with transformer.cache_context("cond"):
                    v = transformer(hidden_states=x, timestep=timestep, **fixed)[0]
                x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x

    def to_images(out: torch.Tensor) -> torch.Tensor:
        return out.float().reshape(out.shape[0], side, side, out.shape[-1])

    params = sum(p.numel() for p in transformer.parameters())
    info = {
        "transformer_config": config,
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
        "batch": batch,
        "parameters": params,
        "weights": "random (seed 0)",
    }
    return Workload(
        name,
        description,
        args.steps,
        transformer,
        transformer,
        generate,
        device,
        dtype,
        to_images,
        info,
    )


def _token_grid(out: torch.Tensor) -> torch.Tensor:
    """Packed (B, T, C) tokens as a square (B, √T, √T, C) image for SSIM."""
    batch, tokens, channels = out.shape
    side = int(round(tokens**0.5))
    return out.float().cpu().reshape(batch, side, side, channels)


def _video_frames(out: torch.Tensor) -> torch.Tensor:
    """Video latents (B, C, F, H, W) as B·F images (B·F, H, W, C) for SSIM."""
    batch, channels, frames, height, width = out.shape
    return out.float().cpu().permute(0, 2, 3, 4, 1).reshape(batch * frames, height, width, channels)


def _flux_images(out: torch.Tensor) -> torch.Tensor:
    from ..tiny_model import tiny_flux_latents_to_images

    return tiny_flux_latents_to_images(out.float().cpu())[..., None]


def _flux_pooled(batch: int) -> Dict[str, torch.Tensor]:
    from ..tiny_model import tiny_flux_class_embeddings

    return {"pooled_prompt_embeds": tiny_flux_class_embeddings()[1][:batch]}


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained tiny model of ``tiny_zoo``: its family, how its output becomes images, and the
    call inputs its pipeline needs besides the class prompt embeddings."""

    family: str
    description: str
    output: str
    to_images: Callable[[torch.Tensor], torch.Tensor]
    extra_inputs: Callable[[int], Dict[str, torch.Tensor]] = lambda batch: {}


# --model name → trained tiny model. ``tiny`` is the demo model (docs/tiny_model.md).
TRAINED: Dict[str, TrainedModel] = {
    "tiny": TrainedModel(
        "flux",
        "trained tiny Flux, all classes in one batched pipeline call",
        "packed latents (B, 64, 4)",
        _flux_images,
        _flux_pooled,
    ),
    "qwen-image": TrainedModel(
        "qwen-image",
        "trained tiny Qwen-Image, all classes in one batched pipeline call",
        "packed latents (B, T, C)",
        _token_grid,
    ),
    # The held-out family of the benchmark set (docs/quality.md "Held-out: wan"): CFG, 2 calls a step.
    "wan": TrainedModel(
        "wan",
        "trained tiny Wan 2.1 (video, CFG), all classes in one batched pipeline call",
        "video latents (B, C, F, H, W)",
        _video_frames,
    ),
}


def _trained_workload(
    name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> Workload:
    from .. import tiny_zoo as zoo

    model = TRAINED[name]
    pipe = zoo.tiny_pipeline(model.family)
    if device.type != "cpu" or dtype != torch.float32:  # it is built as fp32 on the CPU
        pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    batch = min(args.batch, zoo.NUM_CLASSES)
    fixed = {"prompt_embeds": zoo.class_embeddings(model.family)[:batch]}
    fixed.update(model.extra_inputs(batch))
    fixed = {key: value.to(device, dtype) for key, value in fixed.items()}

    def generate(steps: int) -> torch.Tensor:
        inputs = zoo.tiny_inputs(model.family, 0, batch, seed=args.seed, num_inference_steps=steps)
        inputs.update(fixed)
        return zoo.generate(pipe, model.family, **inputs)

    info = {
        "pipeline": f"{type(pipe).__name__} (tiny trained, tiny_zoo {model.family!r})",
        "batch": batch,
        "classes": list(range(batch)),
        "output": model.output,
        "parameters": sum(p.numel() for p in pipe.transformer.parameters()),
        "weights": "trained",
    }
    return Workload(
        name,
        model.description,
        args.steps,
        pipe.transformer,
        pipe,
        generate,
        device,
        dtype,
        model.to_images,
        info,
    )


def _local_workload(
    path: Path, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> Workload:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise DitCacheError(f"{path}: the pipeline has no `transformer` component")
    extra: Dict[str, Any] = {}
    if args.height:
        extra["height"] = args.height
    if args.width:
        extra["width"] = args.width

    def generate(steps: int) -> torch.Tensor:
        with torch.no_grad():
            out = pipe(
                prompt=args.prompt,
                num_inference_steps=steps,
                output_type="np",
                generator=torch.Generator("cpu").manual_seed(args.seed),
                **extra,
            ).images
        return torch.as_tensor(out)

    info = {
        "pipeline": type(pipe).__name__,
        "path": str(path),
        "prompt": args.prompt,
        "output": "decoded images in [0, 1]",
        "weights": "from the directory",
    }
    return Workload(
        str(path),
        f"{type(pipe).__name__} from {path}",
        args.steps,
        transformer,
        pipe,
        generate,
        device,
        dtype,
        lambda out: out.float(),
        info,
    )


def _check_flux_dev_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise DitCacheError(
            "--model flux-dev needs CUDA (a FLUX.1-dev-sized transformer, 12B parameters, bf16); "
            f"got --device {device}. Use --device cuda on a GPU machine, --dry-run to check the "
            "arguments, or --model medium for CPU speed measurements"
        )
    if not torch.cuda.is_available():
        raise DitCacheError(
            "--model flux-dev needs CUDA, but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); use --dry-run to check the arguments, or --model medium"
        )


def device_and_dtype(args: argparse.Namespace) -> Tuple[torch.device, torch.dtype]:
    gpu = args.model == "flux-dev"
    device = torch.device(args.device or ("cuda" if gpu else "cpu"))
    dtype_name = args.dtype or ("bfloat16" if gpu else "float32")
    if dtype_name not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype_name!r}; choose from {', '.join(DTYPES)}")
    return device, DTYPES[dtype_name]


def _medium(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Workload:
    return loop_workload(
        "medium",
        "random-weight FLUX-like transformer, Euler loop",
        MEDIUM_CONFIG,
        MEDIUM_TOKENS,
        args,
        device,
        dtype,
    )


def _flux_dev(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Workload:
    _check_flux_dev_device(device)
    return loop_workload(
        "flux-dev",
        "FLUX.1-dev-sized transformer, random weights, Euler loop",
        FLUX_DEV_CONFIG,
        FLUX_DEV_TOKENS,
        args,
        device,
        dtype,
    )


# --model name → workload builder; any other value must be a local pipeline directory.
BUILDERS: Dict[str, Callable[[argparse.Namespace, torch.device, torch.dtype], Workload]] = {
    **{name: (lambda a, d, t, n=name: _trained_workload(n, a, d, t)) for name in TRAINED},
    "medium": _medium,
    "flux-dev": _flux_dev,
}
MODEL_HELP = f"{', '.join(BUILDERS)} or a local pipeline directory"


def check_model(model: str) -> None:
    if model not in BUILDERS and not Path(model).is_dir():
        raise ValueError(f"--model must be {MODEL_HELP}; got {model!r}")


def build_workload(args: argparse.Namespace) -> Workload:
    """The workload ``args.model`` names, on ``args.device`` in ``args.dtype``."""
    check_model(args.model)
    device, dtype = device_and_dtype(args)
    if args.model in BUILDERS:
        return BUILDERS[args.model](args, device, dtype)
    return _local_workload(Path(args.model), args, device, dtype)
