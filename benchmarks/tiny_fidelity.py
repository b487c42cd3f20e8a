"""Fidelity vs compute on the trained tiny Flux (all 8 classes, 28 steps, one batched call).

Prints three Markdown tables: a DBCache threshold sweep, static SCM masks with and without
TaylorSeer (equal computed steps by construction), and the "fewer steps" floor. PSNR is in dB
on the packed output latents against the uncached 28-step run (float, no uint8 wrap-around).

    python benchmarks/tiny_fidelity.py
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

import dit_cache_backend as dcb
from dit_cache_backend.metrics import psnr
from dit_cache_backend.tiny_model import (
    NUM_CLASSES,
    tiny_flux_class_embeddings,
    tiny_flux_inputs,
    tiny_flux_pipeline,
)

STEPS = 28


def run(
    pipe, steps: int = STEPS, cache_config=None, calibrator_config=None
) -> Tuple[torch.Tensor, int]:
    inputs = tiny_flux_inputs(0, batch_size=NUM_CLASSES, num_inference_steps=steps)
    inputs["prompt_embeds"], inputs["pooled_prompt_embeds"] = tiny_flux_class_embeddings()
    if cache_config is None:
        with torch.no_grad():
            return pipe(**inputs).images, steps
    dcb.enable_cache(pipe, cache_config=cache_config, calibrator_config=calibrator_config)
    try:
        with torch.no_grad():
            output = pipe(**inputs).images
        return output, steps - len(dcb.summary(pipe, logging=False)[0].cached_steps)
    finally:
        dcb.disable_cache(pipe)


def main() -> None:
    torch.set_num_threads(2)
    pipe = tiny_flux_pipeline()
    reference, _ = run(pipe)
    data_range = (reference.max() - reference.min()).item()

    def score(output: torch.Tensor) -> str:
        return f"{psnr(reference, output, data_range):.1f}"

    print("| threshold (F1B0 W2) | computed / 28 | PSNR dB |\n|---|---|---|")
    for threshold in (0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5):
        config = dcb.DBCacheConfig(
            Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=threshold
        )
        output, computed = run(pipe, cache_config=config)
        print(f"| {threshold} | {computed} | {score(output)} |")

    print("\n| static SCM mask | computed / 28 | reuse | TaylorSeer O1 | TaylorSeer O2 |")
    print("|---|---|---|---|---|")
    for policy in ("slow", "medium", "fast", "ultra"):
        mask = dcb.steps_mask(total_steps=STEPS, mask_policy=policy)
        config = dcb.DBCacheConfig(
            Fn_compute_blocks=1,
            max_warmup_steps=0,
            num_inference_steps=STEPS,
            steps_computation_mask=mask,
            steps_computation_policy="static",
        )
        cells = []
        calibrators: Tuple[Optional[dcb.CalibratorConfig], ...] = (
            None,
            dcb.TaylorSeerCalibratorConfig(taylorseer_order=1),
            dcb.TaylorSeerCalibratorConfig(taylorseer_order=2),
        )
        for calibrator in calibrators:
            output, computed = run(pipe, cache_config=config, calibrator_config=calibrator)
            cells.append(score(output))
        print(f"| {policy} | {computed} | " + " | ".join(cells) + " |")

    print("\n| fewer steps (no cache) | computed | PSNR dB vs 28 steps |\n|---|---|---|")
    for steps in (8, 11, 15, 18):
        output, _ = run(pipe, steps=steps)
        print(f"| {steps} steps | {steps} | {score(output)} |")


if __name__ == "__main__":
    main()
