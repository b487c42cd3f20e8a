"""The packaged tiny trained Flux model: asset, offline FluxPipeline, determinism, realistic dynamics."""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import pytest
import torch
from diffusers import FluxPipeline

from dit_cache_backend import tiny_model as tm


@pytest.fixture(autouse=True)
def _offline_two_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Everything must work without the Hub; 2 threads is what the CI box has.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe() -> FluxPipeline:
    return tm.tiny_flux_pipeline()


def test_asset_is_small_and_has_training_record() -> None:
    assert tm.ASSET_PATH.is_file()
    assert tm.ASSET_PATH.stat().st_size < 1_000_000
    meta = tm.asset_metadata()
    assert int(meta["iterations"]) > 0
    assert float(meta["final_loss_ema"]) < 0.05


def test_transformer_config_and_weights() -> None:
    model = tm.tiny_flux_transformer()
    assert sum(p.numel() for p in model.parameters()) == 153_604
    assert model.config.in_channels == 4
    assert model.config.guidance_embeds is False
    assert len(model.transformer_blocks) == 2 and len(model.single_transformer_blocks) == 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # pretrained=False is the (seeded) starting point, so it must differ from the trained weights.
    random_model = tm.tiny_flux_transformer(pretrained=False)
    assert not torch.equal(model.proj_out.weight, random_model.proj_out.weight)
    again = tm.tiny_flux_transformer(pretrained=False)
    assert torch.equal(random_model.proj_out.weight, again.proj_out.weight)


def test_class_embeddings_and_prototypes_shapes() -> None:
    prompt_embeds, pooled = tm.tiny_flux_class_embeddings()
    assert prompt_embeds.shape == (tm.NUM_CLASSES, tm.TEXT_SEQ_LEN, 32)
    assert pooled.shape == (tm.NUM_CLASSES, 32)
    assert tm.tiny_flux_class_prototypes().shape == (tm.NUM_CLASSES, tm.NUM_TOKENS, tm.TOKEN_CHANNELS)


def test_inputs_validation() -> None:
    kwargs = tm.tiny_flux_inputs(3, batch_size=2, num_inference_steps=5)
    assert kwargs["prompt_embeds"].shape == (2, tm.TEXT_SEQ_LEN, 32)
    assert kwargs["pooled_prompt_embeds"].shape == (2, 32)
    assert kwargs["num_inference_steps"] == 5
    with pytest.raises(ValueError):
        tm.tiny_flux_inputs(tm.NUM_CLASSES)
    with pytest.raises(ValueError):
        tm.tiny_flux_inputs(0, batch_size=0)


def test_pipeline_runs_offline(pipe: FluxPipeline) -> None:
    latents = pipe(**tm.tiny_flux_inputs(1, batch_size=2, num_inference_steps=4)).images
    assert latents.shape == (2, tm.NUM_TOKENS, tm.TOKEN_CHANNELS)
    assert torch.isfinite(latents).all()
    images = pipe(**tm.tiny_flux_inputs(1, num_inference_steps=4, output_type="np")).images
    assert images.shape == (1, tm.IMAGE_SIZE, tm.IMAGE_SIZE, 3)
    assert (images >= 0).all() and (images <= 1).all()


def test_same_seed_is_bit_identical(pipe: FluxPipeline) -> None:
    first = pipe(**tm.tiny_flux_inputs(2, seed=7, num_inference_steps=6)).images
    second = pipe(**tm.tiny_flux_inputs(2, seed=7, num_inference_steps=6)).images
    other = pipe(**tm.tiny_flux_inputs(2, seed=8, num_inference_steps=6)).images
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_samples_match_their_class(pipe: FluxPipeline) -> None:
    prototypes = tm.tiny_flux_class_prototypes()
    for cls in (0, 5):
        latents = pipe(**tm.tiny_flux_inputs(cls, batch_size=2, seed=11)).images
        rms = (latents[:, None] - prototypes[None]).pow(2).mean(dim=(2, 3)).sqrt()  # (B, K)
        assert (rms.argmin(dim=1) == cls).all()
        # Measured ~0.035 (training data had 0.05 noise around the prototype).
        assert (rms[:, cls] < 0.1).all()


@pytest.mark.parametrize("cls", [0, 3, 6])
def test_trained_first_block_diff_profile_is_realistic(pipe: FluxPipeline, cls: int) -> None:
    diffs = tm.first_block_residual_diffs(pipe, **tm.tiny_flux_inputs(cls, seed=cls))
    assert len(diffs) == 27
    later = diffs[1:]
    # Measured: step 1 ~0.26-0.30, steps >= 2 in 0.016-0.097 with median ~0.033.
    assert diffs[0] > 0.18
    assert diffs[0] > 4 * statistics.median(later)
    assert 0.015 < statistics.median(later) < 0.06
    assert sum(0.01 <= d <= 0.1 for d in later) >= 0.9 * len(later)
    assert max(later) < 0.15


def test_random_weights_have_flat_profile() -> None:
    # Why the model is trained: random weights show no first-step jump and large diffs everywhere.
    diffs = tm.first_block_residual_diffs(tm.tiny_flux_pipeline(pretrained=False), **tm.tiny_flux_inputs(0))
    assert statistics.median(diffs[1:]) > 0.12
    assert diffs[0] < 2 * statistics.median(diffs[1:])
