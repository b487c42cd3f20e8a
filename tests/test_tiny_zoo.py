"""The fidelity benchmark set: the trained tiny Qwen-Image and Wan models in their real pipelines."""

from __future__ import annotations

import statistics

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend import tiny_zoo as zoo
from dit_cache_backend.metrics import psnr
from test_tiny_model import _offline_two_threads  # noqa: F401  (autouse: offline, 2 threads)

TRAINED = ["qwen-image", "wan"]
STEPS = 16  # short runs keep the suite fast; the profile tests use 28
# Step 1's first-block change over the later median (docs/tiny_model.md). Wan's flow shift 3 spends
# its first steps at sigma ~ 0.99, so its jump out of noise is smaller (and its last steps rise).
FIRST_STEP_JUMP = {"qwen-image": 3.0, "wan": 1.8}
ARCHITECTURES = {"qwen-image": ("QwenImageTransformer2DModel", 6), "wan": ("WanTransformer3DModel", 6)}


def _all_classes(family: str, seed: int) -> dict:
    """Call kwargs for one batched request: one sample of every class."""
    kwargs = zoo.tiny_inputs(family, 0, zoo.NUM_CLASSES, seed=seed)
    kwargs["prompt_embeds"] = zoo.class_embeddings(family)
    if "negative_prompt_embeds" in kwargs:
        kwargs["negative_prompt_embeds"] = torch.zeros_like(kwargs["prompt_embeds"])
    return kwargs


@pytest.fixture(scope="module", params=TRAINED)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def pipe(family: str):
    return zoo.tiny_pipeline(family)


def test_asset_is_under_two_megabytes_with_its_training_record(family: str) -> None:
    assert zoo.FAMILIES[family].asset.stat().st_size < 2_000_000
    meta = zoo.asset_metadata(family)
    assert meta["family"] == family
    assert int(meta["iterations"]) >= 1000
    assert float(meta["final_loss_ema"]) < 0.3


def test_transformers_are_the_real_diffusers_classes_with_trained_weights(family: str) -> None:
    import diffusers

    class_name, num_blocks = ARCHITECTURES[family]
    trained, initial = zoo.tiny_transformer(family), zoo.tiny_transformer(family, pretrained=False)
    assert type(trained) is getattr(diffusers, class_name)
    assert len(getattr(trained, zoo.FAMILIES[family].blocks)) == num_blocks
    assert not torch.equal(trained.proj_out.weight, initial.proj_out.weight)


def test_pipeline_output_has_the_prototype_layout_and_is_deterministic(family: str, pipe) -> None:
    first = zoo.generate(pipe, family, **zoo.tiny_inputs(family, 2, seed=3, num_inference_steps=STEPS))
    again = zoo.generate(pipe, family, **zoo.tiny_inputs(family, 2, seed=3, num_inference_steps=STEPS))
    assert first.shape[1:] == zoo.class_prototypes(family).shape[1:]
    assert torch.isfinite(first).all() and torch.equal(first, again)


def test_samples_are_nearest_to_their_own_class(family: str, pipe) -> None:
    prototypes = zoo.class_prototypes(family)
    samples = zoo.generate(pipe, family, **_all_classes(family, seed=1))
    distances = (samples[:, None] - prototypes[None]).pow(2).flatten(2).mean(2)  # (sample, class)
    assert distances.argmin(1).tolist() == list(range(zoo.NUM_CLASSES))


@pytest.fixture(scope="module")
def wan_pipe():
    return zoo.tiny_pipeline("wan")


def test_wan_samples_move_like_their_class_across_frames(wan_pipe) -> None:
    prototypes = zoo.class_prototypes("wan")  # (class, channel, frame, height, width)
    samples = zoo.generate(wan_pipe, "wan", **_all_classes("wan", seed=2))
    for frame in range(1, prototypes.shape[2]):
        same_frame = (samples[:, :, frame] - prototypes[:, :, frame]).pow(2).mean()
        first_frame = (samples[:, :, frame] - prototypes[:, :, 0]).pow(2).mean()
        assert same_frame < 0.25 * first_frame, (frame, same_frame, first_frame)


def test_wan_runs_two_transformer_calls_per_step_for_guidance(wan_pipe) -> None:
    calls = []
    handle = wan_pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        zoo.generate(wan_pipe, "wan", **zoo.tiny_inputs("wan", 0, num_inference_steps=STEPS))
    finally:
        handle.remove()
    assert zoo.FAMILIES["wan"].separate_cfg and len(calls) == 2 * STEPS


def test_first_block_changes_most_at_the_first_steps_and_little_later(family: str, pipe) -> None:
    for class_id in (0, 3):
        diffs = zoo.first_block_residual_diffs(pipe, family, **zoo.tiny_inputs(family, class_id))
        later = statistics.median(diffs[2:])
        assert diffs[0] > FIRST_STEP_JUMP[family] * later, diffs
        assert 0.005 < later < 0.08, diffs


def test_random_weights_have_no_such_profile(family: str) -> None:
    random_pipe = zoo.tiny_pipeline(family, pretrained=False)
    diffs = zoo.first_block_residual_diffs(random_pipe, family, **zoo.tiny_inputs(family, 0))
    assert diffs[0] < FIRST_STEP_JUMP[family] * statistics.median(diffs[2:])


def test_dbcache_on_the_pipeline_caches_and_stays_faithful(family: str, pipe) -> None:
    inputs = lambda: zoo.tiny_inputs(family, 1, num_inference_steps=28)  # noqa: E731
    reference = zoo.generate(pipe, family, **inputs())
    dcb.enable_cache(
        pipe,
        cache_config=dcb.DBCacheConfig(
            Fn_compute_blocks=1,
            max_warmup_steps=4,
            residual_diff_threshold=0.12,
            enable_separate_cfg=zoo.FAMILIES[family].separate_cfg,
        ),
        calibrator_config=dcb.TaylorSeerCalibratorConfig(),
    )
    try:
        output = zoo.generate(pipe, family, **inputs())
        stats = dcb.summary(pipe, logging=False)[0]
    finally:
        dcb.disable_cache(pipe)
    assert len(stats.cached_steps) >= 4
    assert psnr(reference, output, float(reference.max() - reference.min())) > 30.0


def test_unknown_family_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'flux', 'qwen-image', 'wan'"):
        zoo.tiny_pipeline("sd3")


def test_seacache_sees_wan_video_latents_per_sample() -> None:
    from dit_cache_backend.bench.peers import _packed_frames

    video = torch.arange(2 * 4 * 4 * 8 * 8, dtype=torch.float32).reshape(2, 4, 4, 8, 8)
    samples = _packed_frames(None, (), {"hidden_states": video})
    assert [s.shape for s in samples] == [torch.Size([4, 4, 8, 8])] * 2
    assert torch.equal(samples[1], video[1])
