"""Train a tiny model of the fidelity benchmark set (``dit_cache_backend.tiny_zoo``).

Usage (repository root, package installed editable)::

    python scripts/train_tiny_family.py --family qwen-image     # writes assets/tiny_qwen_image.safetensors
    python scripts/train_tiny_family.py --family qwen-image --iters 200 --out /tmp/q.safetensors  # a try

Recipe (docs/tiny_model.md): rectified flow as the pipeline samples it — ``x_t = (1 - t) x0 + t eps``
with ``t = sigmoid(N(0, 1))``, target ``eps - x0``; the transformer gets the pipeline's timestep
convention (Qwen-Image: ``t``) and layout (packed 2 x 2 tokens with ``img_shapes``). Data: 8 classes
with a fixed random text embedding each; every sample adds N(0, 0.05^2) to its class prototype,
which is, per latent channel, a sum of three Gaussian bumps (random centres, widths and signs) on
the 16 x 16 latent.

AdamW, lr 2e-3 constant for the first half then cosine to 1e-4, batch 32, fixed seeds.
The asset (fp32 safetensors) holds the transformer weights, the class embeddings and prototypes,
and the training record in its header. CPU training is not bit-reproducible across torch
versions: the asset is committed and CI never retrains.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import diffusers
import torch
from safetensors.torch import save_file

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


def qwen_forward(model: torch.nn.Module, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
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


Forward = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
RECIPES: Dict[str, Tuple[Callable[[torch.Generator], torch.Tensor], Forward, int]] = {
    # family: (prototypes, forward, text_dim)
    "qwen-image": (qwen_prototypes, qwen_forward, zoo.QWEN_TRANSFORMER_CONFIG["joint_attention_dim"]),
}


def lr_at(it: int, iters: int, lr: float, lr_min: float = 1e-4) -> float:
    half = iters // 2
    if it < half:
        return lr
    progress = (it - half) / max(1, iters - half)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))


def train(family: str, iters: int, batch: int, lr: float) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    make_prototypes, forward, text_dim = RECIPES[family]
    data_gen = torch.Generator().manual_seed(DATA_SEED)
    prototypes = make_prototypes(data_gen)
    embeds = torch.randn(zoo.NUM_CLASSES, zoo.TEXT_SEQ_LEN, text_dim, generator=data_gen)
    model = zoo.tiny_transformer(family, pretrained=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    view = (batch,) + (1,) * (prototypes.dim() - 1)
    start, ema = time.perf_counter(), None
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = lr_at(it, iters, lr)
        cls = torch.randint(zoo.NUM_CLASSES, (batch,), generator=gen)
        x0 = prototypes[cls] + SAMPLE_NOISE * torch.randn((batch, *prototypes.shape[1:]), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(batch, generator=gen))
        x_t = (1 - t.view(view)) * x0 + t.view(view) * eps
        cond = embeds[cls]
        loss = torch.nn.functional.mse_loss(forward(model, x_t, cond, t), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if it % 100 == 0 or it == iters - 1:
            print(f"iter {it:5d}  loss {loss.item():.4f}  ema {ema:.4f}  {time.perf_counter() - start:6.1f}s", flush=True)
    seconds = time.perf_counter() - start
    tensors = {"transformer." + k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    tensors[zoo.PROMPT_EMBEDS_KEY] = embeds
    tensors[zoo.PROTOTYPES_KEY] = prototypes.contiguous()
    meta = {
        "family": family,
        "iterations": str(iters),
        "batch_size": str(batch),
        "lr": str(lr),
        "train_seconds": f"{seconds:.1f}",
        "threads": str(torch.get_num_threads()),
        "final_loss_ema": f"{ema:.4f}",
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "seeds": f"data={DATA_SEED} train={TRAIN_SEED} init={zoo.INIT_SEED}",
    }
    return tensors, meta


def report(family: str) -> None:
    """Reload the asset through the public API: diff profile and distance to the prototypes."""
    pipe = zoo.tiny_pipeline(family)
    prototypes = zoo.class_prototypes(family)
    for cls in range(zoo.NUM_CLASSES):
        diffs = zoo.first_block_residual_diffs(pipe, family, **zoo.tiny_inputs(family, cls, seed=cls))
        out = zoo.generate(pipe, family, **zoo.tiny_inputs(family, cls, batch_size=2, seed=100 + cls))
        rms = (out - prototypes[cls]).pow(2).flatten(1).mean(1).sqrt()
        later = sorted(diffs[1:])
        print(
            f"class {cls}: step1 {diffs[0]:.3f} step2 {diffs[1]:.3f}, later median {later[len(later) // 2]:.3f} "
            f"max {later[-1]:.3f}; RMS to prototype {rms.mean():.3f}"
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
    if out == zoo.FAMILIES[args.family].asset:
        report(args.family)


if __name__ == "__main__":
    main()
