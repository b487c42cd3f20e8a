"""Fidelity on the trained tiny Flux: the trade-offs users tune must behave as documented."""

import pytest
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


def all_classes_inputs(steps=STEPS):
    inputs = tiny_flux_inputs(0, batch_size=NUM_CLASSES, num_inference_steps=steps)
    prompt_embeds, pooled = tiny_flux_class_embeddings()
    inputs["prompt_embeds"], inputs["pooled_prompt_embeds"] = prompt_embeds, pooled
    return inputs


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def reference(pipe):
    with torch.no_grad():
        return pipe(**all_classes_inputs()).images


def fidelity(pipe, reference, cache_config, calibrator_config=None):
    """(computed steps, PSNR in dB against the uncached run) of one cached run."""
    dcb.enable_cache(pipe, cache_config=cache_config, calibrator_config=calibrator_config)
    try:
        with torch.no_grad():
            output = pipe(**all_classes_inputs()).images
        computed = STEPS - len(dcb.summary(pipe, logging=False)[0].cached_steps)
    finally:
        dcb.disable_cache(pipe)
    data_range = (reference.max() - reference.min()).item()
    return computed, psnr(reference, output, data_range)


def test_psnr_falls_and_compute_falls_as_the_threshold_rises(pipe, reference):
    results = [
        fidelity(
            pipe,
            reference,
            dcb.DBCacheConfig(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=t),
        )
        for t in (0.03, 0.05, 0.08, 0.3, 0.5)
    ]
    computed = [c for c, _ in results]
    quality = [q for _, q in results]
    assert computed == sorted(computed, reverse=True) and computed[0] > computed[-1]
    assert quality == sorted(quality, reverse=True)
    assert quality[-1] > 30.0, "even the most aggressive setting stays recognisable"


def static_mask_config(mask):
    """Computed steps fixed by a static mask, so methods compare at equal compute."""
    return dcb.DBCacheConfig(
        Fn_compute_blocks=1,
        max_warmup_steps=0,
        num_inference_steps=STEPS,
        steps_computation_mask=mask,
        steps_computation_policy="static",
    )


@pytest.mark.parametrize("policy", ["slow", "medium", "fast", "ultra"])
def test_taylorseer_is_at_least_as_faithful_as_reuse_at_equal_compute(pipe, reference, policy):
    mask = dcb.steps_mask(total_steps=STEPS, mask_policy=policy)
    config = static_mask_config(mask)
    reuse = fidelity(pipe, reference, config)
    forecast = fidelity(pipe, reference, config, dcb.TaylorSeerCalibratorConfig(taylorseer_order=1))
    assert reuse[0] == forecast[0] == sum(mask), "a static mask fixes the computed steps"
    assert forecast[1] >= reuse[1]


@pytest.mark.parametrize(
    "calibrator",
    [
        dcb.TaylorSeerCalibratorConfig(taylorseer_order=2),
        dcb.DMDCalibratorConfig(),
    ],
    ids=["taylorseer-2", "dmd"],
)
def test_forecasting_calibrators_are_more_faithful_than_reuse_on_a_fixed_schedule(
    pipe, reference, calibrator
):
    """FoCa is not here: like cache-dit's, it takes its slopes per value pair whatever the step
    distance, which on the sparse "fast" mask costs 12 dB against reuse (docs/quality.md)."""
    mask = dcb.steps_mask(total_steps=STEPS, mask_policy="fast")
    config = static_mask_config(mask)
    reuse = fidelity(pipe, reference, config)
    forecast = fidelity(pipe, reference, config, calibrator)
    assert reuse[0] == forecast[0] == sum(mask)
    assert forecast[1] > reuse[1]


# The presets' compute budgets (docs/quality.md "Presets"): at most N/k computed steps.
PRESET_BUDGETS = {"quality": STEPS / 1.5, "balanced": STEPS / 3, "fast": STEPS / 4, "ultra": STEPS / 6}


@pytest.mark.parametrize("name", list(PRESET_BUDGETS))
def test_each_speed_preset_keeps_its_budget_and_beats_running_that_many_steps(
    pipe, reference, name
):
    from dit_cache_backend.presets import preset_path

    options = dcb.load_configs(preset_path(name))
    computed, quality = fidelity(
        pipe, reference, options["cache_config"], options["calibrator_config"]
    )
    assert computed <= PRESET_BUDGETS[name]
    with torch.no_grad():
        fewer = pipe(**all_classes_inputs(steps=computed)).images
    floor = psnr(reference, fewer, (reference.max() - reference.min()).item())
    assert quality > floor + 3.0, f"{name}: {quality:.1f} dB vs {floor:.1f} dB with {computed} steps"

