"""What the tiny-model training scripts share: the rectified-flow loop, its schedule and its record.

``train_tiny_model.py`` (Flux) and ``train_tiny_family.py`` (the other families) import it; it is
not part of the package (CI never trains). The objective is the velocity the pipelines' flow
schedulers integrate: ``x_t = (1 - t) x0 + t eps`` with ``t = sigmoid(N(0, 1))``, target
``eps - x0``; each script's ``forward`` feeds the transformer in its pipeline's layout and
timestep convention.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, Sequence, Tuple

import diffusers
import torch

# (model, x_t, t in [0, 1], condition tensors indexed by the batch's classes) -> predicted velocity
Forward = Callable[..., torch.Tensor]


def lr_at(it: int, iters: int, lr: float, lr_min: float = 1e-4) -> float:
    """Constant for the first half (fast progress), then a cosine to ``lr_min`` (less final noise)."""
    half = iters // 2
    if it < half:
        return lr
    progress = (it - half) / max(1, iters - half)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))


def train_flow(
    model: torch.nn.Module,
    prototypes: torch.Tensor,
    conditions: Sequence[torch.Tensor],
    forward: Forward,
    *,
    iters: int,
    batch: int,
    lr: float,
    seed: int,
    sample_noise: float,
    null_condition: float = 0.0,
) -> Tuple[float, float]:
    """Train ``model`` in place; returns (seconds, final EMA loss).

    A sample of class ``k`` is ``prototypes[k]`` plus N(0, sample_noise^2); its condition is
    ``c[k]`` for every ``c`` in ``conditions``. With ``null_condition > 0`` that fraction of the
    samples gets all-zero conditions instead, so the model also learns the unconditional velocity
    that classifier-free guidance needs (the pipelines' negative prompt is then zeros).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    view = (batch,) + (1,) * (prototypes.dim() - 1)
    start, ema = time.perf_counter(), None
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = lr_at(it, iters, lr)
        cls = torch.randint(prototypes.shape[0], (batch,), generator=gen)
        x0 = prototypes[cls] + sample_noise * torch.randn((batch, *prototypes.shape[1:]), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(batch, generator=gen))
        x_t = (1 - t.view(view)) * x0 + t.view(view) * eps
        cond = [c[cls] for c in conditions]
        if null_condition > 0:
            keep = (torch.rand(batch, generator=gen) >= null_condition).float()
            cond = [c * keep.view((batch,) + (1,) * (c.dim() - 1)) for c in cond]
        loss = torch.nn.functional.mse_loss(forward(model, x_t, t, *cond), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if it % 100 == 0 or it == iters - 1:
            print(f"iter {it:5d}  loss {loss.item():.4f}  ema {ema:.4f}  {time.perf_counter() - start:6.1f}s", flush=True)
    seconds = time.perf_counter() - start
    print(f"training done: {iters} iterations in {seconds:.1f}s, final loss (ema) {ema:.4f}")
    return seconds, ema


def training_record(iters: int, batch: int, lr: float, seconds: float, ema: float, seeds: str) -> Dict[str, str]:
    """The asset header: how the weights were made."""
    return {
        "iterations": str(iters),
        "batch_size": str(batch),
        "lr": str(lr),
        "train_seconds": f"{seconds:.1f}",
        "threads": str(torch.get_num_threads()),
        "final_loss_ema": f"{ema:.4f}",
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "seeds": seeds,
    }
