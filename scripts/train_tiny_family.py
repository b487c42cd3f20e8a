"""Train a tiny model of the fidelity benchmark set (``dit_cache_backend.tiny_zoo``).

Usage (repository root, package installed editable)::

    python scripts/train_tiny_family.py --family qwen-image     # writes assets/tiny_qwen_image.safetensors
    python scripts/train_tiny_family.py --family qwen-image --iters 200 --out /tmp/q.safetensors  # a try
    python scripts/train_tiny_family.py --family wan --iters 1200 --lr 5e-3 --threads 1  # the Wan asset

Recipe (docs/tiny_model.md): rectified flow as the pipeline samples it — ``x_t = (1 - t) x0 + t eps``
with ``t = sigmoid(N(0, 1))``, target ``eps - x0``; the transformer gets the pipeline's timestep
convention (Qwen-Image: ``t``; Wan: ``1000 t``, unscaled by its pipeline) and layout (Qwen-Image:
packed 2 x 2 tokens with ``img_shapes``; Wan: ``(B, C, F, H, W)`` video latents). Data: 8 classes
with a fixed random text embedding each; every sample adds N(0, 0.05^2) to its class prototype,
which is, per latent channel, a sum of three Gaussian bumps (random centres, widths and signs) on
the 16 x 16 latent (Wan: on 4 frames of 8 x 8, each bump moving at its own velocity). Wan's
pipeline runs classifier-free guidance, so 15 % of its samples are trained with zero embeddings.

AdamW, lr 2e-3 (Wan: 5e-3) constant for the first half then cosine to 1e-4, batch 32, fixed seeds.
The asset (fp32 safetensors) holds the transformer weights, the class embeddings and prototypes,
and the training record in its header. CPU training is not bit-reproducible across torch
versions: the asset is committed and CI never retrains.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Callable, Dict, Tuple

import diffusers
import torch
from safetensors.torch import save_file
from tiny_training import train_flow, training_record

from dit_cache_backend import tiny_zoo as zoo

DATA_SEED = 2024
TRAIN_SEED = 7
SAMPLE_NOISE = 0.05


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()


def qwen_prototypes(gen: torch.Generator) -> torch.Tensor:
    """``(8, 64, 16)``: Gaussian-blob latents, packed as QwenImagePipeline packs them."""
    channels, size, _ = zoo.QWEN_LATENT
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    latents = torch.zeros(zoo.NUM_CLASSES, channels, size, size)
    for k in range(zoo.NUM_CLASSES):
        for c in range(channels):
            for _blob in range(3):
                cy, cx = (torch.rand(2, generator=gen) * size).tolist()
                width = 1.5 + 2.5 * torch.rand((), generator=gen).item()
                sign = 1.0 if torch.rand((), generator=gen).item() < 0.5 else -1.0
                latents[k, c] += sign * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
        latents[k] = _unit(latents[k])
    return diffusers.QwenImagePipeline._pack_latents(latents, zoo.NUM_CLASSES, channels, size, size)


def qwen_forward(model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    _, size, _ = zoo.QWEN_LATENT
    batch = x_t.shape[0]
    return model(
        hidden_states=x_t,
        encoder_hidden_states=cond,
        encoder_hidden_states_mask=torch.ones(batch, cond.shape[1], dtype=torch.long),
        timestep=t,  # QwenImagePipeline passes timestep / 1000 = sigma
        img_shapes=[[(1, size // 2, size // 2)]] * batch,
        return_dict=False,
    )[0]


def wan_prototypes(gen: torch.Generator) -> torch.Tensor:
    """``(8, 4, 4, 8, 8)``: per class and latent channel, 3 Gaussian blobs moving across the frames.

    Each blob has a random centre, width, sign and a constant velocity of up to 1.5 latent pixels
    per frame, on a periodic 8 x 8 grid (a blob leaving one side enters at the other).
    """
    channels, frames, size, _ = zoo.WAN_LATENT
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")

    def wrapped(d: torch.Tensor) -> torch.Tensor:
        return torch.remainder(d + size / 2, size) - size / 2

    latents = torch.zeros(zoo.NUM_CLASSES, channels, frames, size, size)
    for k in range(zoo.NUM_CLASSES):
        for c in range(channels):
            for _blob in range(3):
                cy, cx = (torch.rand(2, generator=gen) * size).tolist()
                vy, vx = ((torch.rand(2, generator=gen) * 2 - 1) * 1.5).tolist()
                width = 1.0 + 1.5 * torch.rand((), generator=gen).item()
                sign = 1.0 if torch.rand((), generator=gen).item() < 0.5 else -1.0
                for f in range(frames):
                    dy, dx = wrapped(yy - cy - vy * f), wrapped(xx - cx - vx * f)
                    latents[k, c, f] += sign * torch.exp(-(dy**2 + dx**2) / (2 * width**2))
        latents[k] = _unit(latents[k])
    return latents


def wan_forward(model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return model(
        hidden_states=x_t,
        timestep=t * 1000,  # WanPipeline passes the scheduler's timestep, sigma * 1000, unscaled
        encoder_hidden_states=cond,
        return_dict=False,
    )[0]


@dataclasses.dataclass(frozen=True)
class Recipe:
    prototypes: Callable[[torch.Generator], torch.Tensor]
    forward: Callable[..., torch.Tensor]
    text_dim: int
    null_condition: float = 0.0  # fraction of samples trained unconditionally (CFG pipelines)


RECIPES: Dict[str, Recipe] = {
    "qwen-image": Recipe(qwen_prototypes, qwen_forward, zoo.QWEN_TRANSFORMER_CONFIG["joint_attention_dim"]),
    "wan": Recipe(wan_prototypes, wan_forward, zoo.WAN_TRANSFORMER_CONFIG["text_dim"], null_condition=0.15),
}


def train(
    family: str, iters: int, batch: int, lr: float
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    recipe = RECIPES[family]
    data_gen = torch.Generator().manual_seed(DATA_SEED)
    prototypes = recipe.prototypes(data_gen)
    embeds = torch.randn(zoo.NUM_CLASSES, zoo.TEXT_SEQ_LEN, recipe.text_dim, generator=data_gen)
    model = zoo.tiny_transformer(family, pretrained=False).train()
    seconds, ema = train_flow(
        model,
        prototypes,
        [embeds],
        recipe.forward,
        iters=iters,
        batch=batch,
        lr=lr,
        seed=TRAIN_SEED,
        sample_noise=SAMPLE_NOISE,
        null_condition=recipe.null_condition,
    )
    tensors = {"transformer." + k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    tensors[zoo.PROMPT_EMBEDS_KEY] = embeds
    tensors[zoo.PROTOTYPES_KEY] = prototypes.contiguous()
    seeds = f"data={DATA_SEED} train={TRAIN_SEED} init={zoo.INIT_SEED}"
    meta = {"family": family, **training_record(iters, batch, lr, seconds, ema, seeds)}
    if recipe.null_condition:
        meta["null_condition"] = str(recipe.null_condition)
    return tensors, meta


def report(family: str, asset: Path) -> None:
    """Reload the written asset through the public API: diff profile and distance to the prototypes."""
    # Point the family at the file just written (it may not be the packaged one).
    zoo.FAMILIES[family] = dataclasses.replace(zoo.FAMILIES[family], asset=asset)
    pipe = zoo.tiny_pipeline(family)
    prototypes = zoo.class_prototypes(family)
    for cls in range(zoo.NUM_CLASSES):
        diffs = zoo.first_block_residual_diffs(pipe, family, **zoo.tiny_inputs(family, cls, seed=cls))
        out = zoo.generate(pipe, family, **zoo.tiny_inputs(family, cls, batch_size=2, seed=100 + cls))
        rms = (out[:, None] - prototypes[None]).pow(2).flatten(2).mean(2).sqrt()  # (sample, class)
        later = sorted(diffs[1:])
        print(
            f"class {cls}: step1 {diffs[0]:.3f} step2 {diffs[1]:.3f}, later median {later[len(later) // 2]:.3f} "
            f"max {later[-1]:.3f}; RMS to prototype {rms[:, cls].mean():.3f}, nearest other class "
            f"{rms[:, [k for k in range(zoo.NUM_CLASSES) if k != cls]].min():.3f}, "
            f"nearest classes {rms.argmin(1).tolist()}"
        )
        if cls == 0:
            print("class 0 diffs: " + " ".join(f"{d:.3f}" for d in diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(RECIPES), required=True)
    parser.add_argument("--iters", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = args.out or zoo.FAMILIES[args.family].asset
    tensors, meta = train(args.family, args.iters, args.batch, args.lr)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.3f} MB)")
    report(args.family, out)


if __name__ == "__main__":
    main()
