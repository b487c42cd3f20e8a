"""Fidelity of a cached output against the uncached one: PSNR, SSIM, max abs error.

Computed in float64 on the raw arrays — cache-dit's published PSNR squares uint8 differences, which
wrap modulo 256 and inflate the score (reference spec §10.1).
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_float64(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.detach().to("cpu", torch.float64)


def max_abs_error(reference: ArrayLike, candidate: ArrayLike) -> float:
    return (_as_float64(reference) - _as_float64(candidate)).abs().max().item()


def psnr(reference: ArrayLike, candidate: ArrayLike, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical inputs."""
    mse = (_as_float64(reference) - _as_float64(candidate)).pow(2).mean().item()
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return torch.outer(kernel, kernel)


def ssim(
    reference: ArrayLike,
    candidate: ArrayLike,
    data_range: float = 1.0,
    channel_axis: int = -1,
) -> float:
    """Mean structural similarity (Gaussian window 11, sigma 1.5, as in Wang et al. 2004).

    Inputs are one image (H, W[, C]) or a batch (N, H, W, C) with channels on ``channel_axis``;
    images smaller than the window use a window as large as the image allows.
    """
    ref, cand = _as_float64(reference), _as_float64(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(ref.shape)} and {tuple(cand.shape)}")
    if ref.dim() == 2:
        ref, cand = ref[None, None], cand[None, None]
    else:
        ref = ref.movedim(channel_axis, -1)
        cand = cand.movedim(channel_axis, -1)
        if ref.dim() == 3:
            ref, cand = ref[None], cand[None]
        ref = ref.permute(0, 3, 1, 2).reshape(-1, 1, *ref.shape[1:3])
        cand = cand.permute(0, 3, 1, 2).reshape(-1, 1, *cand.shape[1:3])
    size = min(11, ref.shape[-1], ref.shape[-2])
    size -= (size + 1) % 2  # odd window
    window = _gaussian_window(size, 1.5 * size / 11)[None, None]

    def blur(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, window)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_r, mu_c = blur(ref), blur(cand)
    var_r = blur(ref * ref) - mu_r**2
    var_c = blur(cand * cand) - mu_c**2
    cov = blur(ref * cand) - mu_r * mu_c
    score = ((2 * mu_r * mu_c + c1) * (2 * cov + c2)) / (
        (mu_r**2 + mu_c**2 + c1) * (var_r + var_c + c2)
    )
    return score.mean().item()
