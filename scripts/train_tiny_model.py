"""Train the tiny Flux transformer shipped as ``dit_cache_backend/assets/tiny_flux.safetensors``.

Usage (from the repository root, with the package importable, e.g. after ``pip install -e .``)::

    python scripts/train_tiny_model.py                  # ~1500 iterations, ~2.5 min on 2 CPU threads
    python scripts/train_tiny_model.py --iters 300 --out /tmp/tiny_flux.safetensors   # quick try

What it does (recipe of docs/tiny_model.md):

* data: 8 classes, each a smooth sinusoidal 16x16 one-channel latent (unit std), packed by
  ``FluxPipeline._pack_latents`` into the 64-token x 4-channel layout the pipeline feeds the
  transformer; every training sample adds N(0, 0.05^2) noise. Each class has a fixed random
  ``(8, 32)`` text embedding and ``(32,)`` pooled vector;
* rectified flow as FluxPipeline samples it: ``x_t = (1 - t) x0 + t eps`` with ``t = sigmoid(N(0, 1))``,
  the transformer gets ``timestep = t`` (the pipeline passes ``scheduler_timestep / 1000 = sigma``)
  and predicts ``eps - x0``; no guidance embedding;
* AdamW, lr 2e-3 with a cosine decay to 1e-4 over the last half, batch 64, fixed seeds.

It writes the transformer and (random, fixed) VAE weights plus the class embeddings and prototypes
into one fp32 safetensors file, with the training record in its header, then reloads it through
``tiny_flux_pipeline()`` and prints the first-block residual diff profile and sample quality.
CPU training is not bit-reproducible across torch versions: the asset is committed, CI never
retrains.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxPipeline
from safetensors.torch import save_file
from tiny_training import train_flow, training_record

from dit_cache_backend import tiny_model as tm

DATA_SEED = 1234
TRAIN_SEED = 5678
VAE_SEED = 42
SAMPLE_NOISE = 0.05


def make_prototypes(gen: torch.Generator) -> torch.Tensor:
    """Per class the sum of two random plane waves on the 16x16 latent, normalised to unit std.

    Returns the packed ``(NUM_CLASSES, 64, 4)`` layout.
    """
    size = tm.IMAGE_SIZE
    coords = torch.arange(size, dtype=torch.float32) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for _ in range(tm.NUM_CLASSES):
        img = torch.zeros(size, size)
        for _wave in range(2):
            # 0.5-2 cycles across the image: smooth, like a low-frequency latent.
            freq = torch.rand(2, generator=gen) * 1.5 + 0.5
            fy, fx = freq * torch.sign(torch.rand(2, generator=gen) - 0.5)
            phase = torch.rand((), generator=gen) * 2 * math.pi
            img += torch.sin(2 * math.pi * (fy * yy + fx * xx) + phase)
        img = (img - img.mean()) / img.std()
        images.append(img)
    latents = torch.stack(images)[:, None]  # (K, 1, 16, 16)
    return FluxPipeline._pack_latents(latents, tm.NUM_CLASSES, 1, size, size)


def flux_forward(
    model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor
) -> torch.Tensor:
    grid = tm.IMAGE_SIZE // 2
    return model(
        hidden_states=x_t,
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=t,  # FluxPipeline passes scheduler_timestep / 1000 = sigma
        img_ids=FluxPipeline._prepare_latent_image_ids(1, grid, grid, "cpu", torch.float32),
        txt_ids=torch.zeros(tm.TEXT_SEQ_LEN, 3),  # what FluxPipeline.encode_prompt uses
        return_dict=False,
    )[0]


def train(iters: int, batch: int, lr: float) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    data_gen = torch.Generator().manual_seed(DATA_SEED)
    prototypes = make_prototypes(data_gen)
    prompt_embeds = torch.randn(tm.NUM_CLASSES, tm.TEXT_SEQ_LEN, 32, generator=data_gen)
    pooled = torch.randn(tm.NUM_CLASSES, 32, generator=data_gen)
    model = tm.tiny_flux_transformer(pretrained=False).train()
    seconds, ema_loss = train_flow(
        model,
        prototypes,
        [prompt_embeds, pooled],
        flux_forward,
        iters=iters,
        batch=batch,
        lr=lr,
        seed=TRAIN_SEED,
        sample_noise=SAMPLE_NOISE,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(VAE_SEED)
        vae = AutoencoderKL(**tm.VAE_CONFIG)

    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("transformer.", model), ("vae.", vae)):
        tensors.update({prefix + k: v.detach().float().contiguous() for k, v in module.state_dict().items()})
    tensors[tm.PROMPT_EMBEDS_KEY] = prompt_embeds
    tensors[tm.POOLED_EMBEDS_KEY] = pooled
    tensors[tm.PROTOTYPES_KEY] = prototypes.contiguous()
    seeds = f"data={DATA_SEED} train={TRAIN_SEED} init={tm.INIT_SEED} vae={VAE_SEED}"
    meta = training_record(iters, batch, lr, seconds, ema_loss, seeds)
    return tensors, meta


def report(out: Path) -> None:
    """Reload the written asset through the public API and print dynamics and sample quality."""
    # Point the loader at the file just written (it may not be the packaged one).
    tm.ASSET_PATH = out
    pipe = tm.tiny_flux_pipeline()
    prototypes = tm.tiny_flux_class_prototypes()
    for cls in range(tm.NUM_CLASSES):
        diffs = tm.first_block_residual_diffs(pipe, **tm.tiny_flux_inputs(cls, seed=cls))
        latents = pipe(**tm.tiny_flux_inputs(cls, batch_size=4, seed=100 + cls)).images
        rms = (latents - prototypes[cls]).pow(2).mean(dim=(1, 2)).sqrt()
        print(
            f"class {cls}: step1 diff {diffs[0]:.3f}, steps>=2 min {min(diffs[1:]):.3f} "
            f"median {sorted(diffs[1:])[len(diffs[1:]) // 2]:.3f} max {max(diffs[1:]):.3f}; "
            f"sample RMS to prototype {rms.mean():.3f}"
        )
        if cls == 0:
            print("class 0 per-step diffs: " + " ".join(f"{d:.3f}" for d in diffs))
    random_pipe = tm.tiny_flux_pipeline(pretrained=False)
    random_diffs = tm.first_block_residual_diffs(random_pipe, **tm.tiny_flux_inputs(0))
    print("random-init per-step diffs: " + " ".join(f"{d:.3f}" for d in random_diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=tm.ASSET_PATH)
    args = parser.parse_args()

    torch.set_num_threads(2)
    tensors, meta = train(args.iters, args.batch, args.lr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.3f} MB)")
    report(args.out)


if __name__ == "__main__":
    main()
