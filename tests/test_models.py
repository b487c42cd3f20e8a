"""Every registered model family on a tiny random diffusers model, wrapped the way users call it.

For each class of the registry: a cached run over a few denoising steps caches some steps and
computes others; every computed step is bit-identical to the uncached model; ``disable_cache``
gives back the original outputs; the module tree (``state_dict`` keys) never changes. Then the
offline pipelines: FLUX.1, Wan 2.1 with CFG, Wan 2.2 with two experts, Qwen-Image with true CFG.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any, Dict, List, Set

import diffusers
import pytest
import tiny_models as tm
import torch

from dit_cache_backend import (
    BlockAdapterRegister,
    ConfigError,
    DBCacheConfig,
    UnsupportedModelError,
    contexts_summary,
    disable_cache,
    enable_cache,
    summary,
)
from dit_cache_backend.registry import FAMILIES
from dit_cache_backend.backend import CacheDiTBackend
from dit_cache_backend.policy import COND, UNCOND
from dit_cache_backend.session import session_of

STEPS = 8
# Random weights give first-block residual diffs anywhere from 0.01 to above 1 between steps
# (peers.md §5.3). A threshold of 1.0 counts every post-warmup step as similar (cache-dit's rule
# for thresholds >= 1) and max_continuous_cached_steps=2 forces a computed step after every two
# cached ones, so each model shows cached steps *and* computed steps that follow cached ones (the
# case where stale buffers would show up), whatever its random weights.
CONFIG = dict(
    Fn_compute_blocks=1,
    Bn_compute_blocks=0,
    max_warmup_steps=2,
    residual_diff_threshold=1.0,
    max_continuous_cached_steps=2,
)

REGISTERED = sorted({name for family in FAMILIES for name in family.classes})
SEPARATE_CFG = {name for family in FAMILIES if family.separate_cfg for name in family.classes}


@pytest.fixture(scope="module", autouse=True)
def _offline_one_thread() -> Iterator[None]:
    # Module scope, so that it also covers the module-scoped runs below. Tiny tensors gain
    # nothing from a second thread, and on a busy 2-core box the thread synchronisation costs
    # several times the work itself.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


def _output(model: torch.nn.Module, inputs: Dict[str, Any]) -> torch.Tensor:
    if "return_dict" in inspect.signature(type(model).forward).parameters:
        result = model(**inputs, return_dict=False)[0]
    else:  # aMUSEd's UVit2DModel returns the tensor
        result = model(**inputs)
    return result[0] if isinstance(result, list) else result  # Z-Image returns one per image


def _uncond(inputs: Dict[str, Any]) -> Dict[str, Any]:
    """The negative-prompt call of a CFG pair: same latents, another text condition."""
    return {**inputs, "encoder_hidden_states": -inputs["encoder_hidden_states"]}


def _calls(class_name: str) -> List[Dict[str, Any]]:
    """The transformer calls of a denoising run: one per step, or cond + uncond with CFG."""
    spec = tm.TINY_TRANSFORMERS[class_name]
    calls = []
    for step in range(STEPS):
        calls.append(spec.inputs(step))
        if class_name in SEPARATE_CFG:
            calls.append(_uncond(spec.inputs(step)))
    return calls


@dataclasses.dataclass
class CachedRun:
    reference: List[torch.Tensor]
    cached: List[torch.Tensor]
    after_disable: List[torch.Tensor]
    cached_calls: Set[int]
    separate_cfg: bool
    cached_steps: List[int]
    cfg_cached_steps: List[int]
    keys: List[List[str]]  # state_dict keys: before, while enabled, after disable


@pytest.fixture(scope="module", params=sorted(REGISTERED))
def run(request: pytest.FixtureRequest) -> CachedRun:
    class_name = request.param
    spec = tm.TINY_TRANSFORMERS[class_name]
    calls = _calls(class_name)
    reference_model, model = spec.build(), spec.build()
    keys = [list(model.state_dict())]
    with torch.no_grad():
        reference = [_output(reference_model, inputs) for inputs in calls]
        enable_cache(model, cache_config=DBCacheConfig(**CONFIG))
        cached = [_output(model, inputs) for inputs in calls]
        keys.append(list(model.state_dict()))
        contexts = contexts_summary(model)
        disable_cache(model)
        after_disable = [_output(model, inputs) for inputs in calls]
    keys.append(list(model.state_dict()))
    cached_calls = {
        d.transformer_call for context in contexts for d in context.decisions if d.cached
    }
    return CachedRun(
        reference=reference,
        cached=cached,
        after_disable=after_disable,
        cached_calls=cached_calls,
        separate_cfg=class_name in SEPARATE_CFG,
        cached_steps=contexts[0].cached_steps,
        cfg_cached_steps=contexts[0].cfg_cached_steps,
        keys=keys,
    )


def test_every_registered_class_has_a_tiny_model() -> None:
    assert set(REGISTERED) <= set(tm.TINY_TRANSFORMERS)


def test_some_steps_are_cached_and_some_computed(run: CachedRun) -> None:
    assert run.cached_steps
    assert set(range(STEPS)) - set(run.cached_steps)


def test_the_cfg_branch_caches_exactly_on_separate_cfg_models(run: CachedRun) -> None:
    # Registered separate-CFG families treat every second call as the negative-prompt branch.
    assert bool(run.cfg_cached_steps) == run.separate_cfg


def test_computed_calls_are_bit_identical_to_the_uncached_model(run: CachedRun) -> None:
    computed = [i for i in range(len(run.cached)) if i not in run.cached_calls]
    # Some computed calls come right after cached ones, where stale buffers would show up.
    assert any(i - 1 in run.cached_calls for i in computed)
    for i in computed:
        assert torch.equal(run.cached[i], run.reference[i]), f"call {i}"


def test_disable_cache_restores_the_original_outputs(run: CachedRun) -> None:
    for i, (after, reference) in enumerate(zip(run.after_disable, run.reference, strict=True)):
        assert torch.equal(after, reference), f"call {i}"


def test_state_dict_keys_never_change(run: CachedRun) -> None:
    before, enabled, after = run.keys
    assert enabled == before and after == before


def test_no_prefix_is_shadowed_by_an_earlier_one() -> None:
    # Matching is `startswith` in registration order: "Flux" first would swallow "Flux2".
    prefixes = [family.prefix for family in FAMILIES]
    for i, earlier in enumerate(prefixes):
        assert not [later for later in prefixes[i + 1 :] if later.startswith(earlier)], earlier


def test_chroma_blocks_get_their_own_modulation_slice() -> None:
    # Chroma's loop slices each block's `temb` by block index; the registry's patch functor rebuilds
    # it per block, so caching the lists as units still gives every block its own modulation.
    model = tm.TINY_TRANSFORMERS["ChromaTransformer2DModel"].build()
    enable_cache(model, cache_config=DBCacheConfig(**CONFIG))
    try:
        names = [entry.name for entry in contexts_summary(model)]
    finally:
        disable_cache(model)
    assert names == ["transformer.transformer_blocks", "transformer.single_transformer_blocks"]
    assert model.distilled_guidance_layer._forward_hooks == {}, "disable removes the capture hook"


def test_sd3_tiny_model_ends_with_a_context_pre_only_block() -> None:
    # The per-class tests above cover SD3 only if its last block drops the encoder stream.
    blocks = tm.TINY_TRANSFORMERS["SD3Transformer2DModel"].build().transformer_blocks
    assert blocks[-1].context_pre_only and not blocks[0].context_pre_only


def test_flux_caches_all_blocks_in_one_context() -> None:
    model = tm.TINY_TRANSFORMERS["FluxTransformer2DModel"].build()
    enable_cache(model, cache_config=DBCacheConfig(**CONFIG))
    contexts = contexts_summary(model)
    disable_cache(model)
    assert [c.name for c in contexts] == ["transformer.transformer_blocks"]


def test_controlnet_pipelines_are_refused() -> None:
    class FluxControlNetPipeline:  # the shape enable_cache sees: callable, transformer, controlnet
        def __init__(self) -> None:
            self.transformer = tm.TINY_TRANSFORMERS["FluxTransformer2DModel"].build()
            self.controlnet = torch.nn.Linear(1, 1)

        def __call__(self) -> None:
            raise AssertionError("not called")

    pipe = FluxControlNetPipeline()
    with pytest.raises(UnsupportedModelError, match="ControlNet"):
        enable_cache(pipe, cache_config=DBCacheConfig(**CONFIG))


def _tiny_wan_vace() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.WanVACETransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        ffn_dim=32,
        num_layers=2,
        vace_layers=[0],
        vace_in_channels=4,
    )


def test_wan_vace_is_refused_with_the_reason_by_both_front_doors() -> None:
    # VACE loops add a hint after specific blocks, by block index (see registry.WAN_VACE_REFUSAL).
    vace = _tiny_wan_vace()
    assert not BlockAdapterRegister.is_supported(vace)
    with pytest.raises(UnsupportedModelError, match="indexed by block"):
        enable_cache(vace, cache_config=DBCacheConfig(**CONFIG))

    class Wan22VACEPipeline:  # vLLM-Omni's name: it matches "Wan", its transformer "WanVACE"
        transformer = vace

        def __call__(self) -> None:
            raise AssertionError("not called")

    with pytest.raises(UnsupportedModelError, match="indexed by block"):
        CacheDiTBackend({}).enable(Wan22VACEPipeline())
    assert "forward" not in vars(vace)


class _Served:
    """What a serving framework hands CacheDiTBackend: a pipeline object holding the model."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    def __call__(self) -> None:
        raise AssertionError("not called")


def _cached_lists(enable: Any, model: torch.nn.Module) -> Any:
    try:
        enable(model)
    except UnsupportedModelError as error:
        return f"refused: {error}"
    session = session_of(model)
    lists = [(s.name, s.pattern, len(s.blocks)) for s in session.specs], session.separate_cfg
    disable_cache(model)
    return lists


def _front_door_models() -> List[Any]:
    return [tm.TINY_TRANSFORMERS[name].build for name in REGISTERED] + [_tiny_wan_vace]


@pytest.mark.parametrize("build", _front_door_models(), ids=REGISTERED + ["WanVACE"])
def test_both_front_doors_cache_the_same_block_lists_or_refuse_the_same_models(build: Any) -> None:
    by_api = _cached_lists(lambda m: enable_cache(m, cache_config=DBCacheConfig(**CONFIG)), build())
    by_backend = _cached_lists(lambda m: CacheDiTBackend({}).enable(_Served(m)), build())
    assert by_api == by_backend


# -- offline pipelines -------------------------------------------------------------------------


class TransformerOutputs:
    """Records every output of a transformer (a forward hook survives enable/disable_cache)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.outputs: List[torch.Tensor] = []
        transformer.register_forward_hook(self._record)

    def _record(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.outputs.append((output[0] if isinstance(output, tuple) else output.sample).clone())


def _pipeline_run(pipe: Any, kwargs: Dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        result = pipe(**kwargs, return_dict=False)[0]
    return result


def _cached_pipeline_contexts(pipe: Any, kwargs: Dict[str, Any]) -> List[Any]:
    """Run ``pipe`` once with caching on; the stats of each cache context (block list)."""
    pipe.set_progress_bar_config(disable=True)
    enable_cache(pipe, cache_config=DBCacheConfig(**CONFIG))
    try:
        _pipeline_run(pipe, kwargs)
        return contexts_summary(pipe)
    finally:
        disable_cache(pipe)


def test_flux_pipeline_caches_and_computes_warmup_steps_exactly() -> None:
    pipe = tm.tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    recorder = TransformerOutputs(pipe.transformer)
    baseline = _pipeline_run(pipe, tm.flux_call_kwargs())
    uncached_outputs = list(recorder.outputs)
    recorder.outputs.clear()
    enable_cache(pipe, cache_config=DBCacheConfig(**CONFIG))
    _pipeline_run(pipe, tm.flux_call_kwargs())
    stats = summary(pipe, logging=False)[0]
    disable_cache(pipe)
    after = _pipeline_run(pipe, tm.flux_call_kwargs())
    assert stats.cached_steps
    first_cached = stats.cached_steps[0]
    # Up to the first cached step the latents are the same, so the outputs must be too.
    for step in range(first_cached):
        assert torch.equal(recorder.outputs[step], uncached_outputs[step]), f"step {step}"
    assert torch.equal(after, baseline)


def test_wan_pipeline_caches_both_cfg_branches() -> None:
    pipe = tm.tiny_wan_pipeline()
    stats = _cached_pipeline_contexts(pipe, tm.wan_call_kwargs())[0]
    assert stats.cached_steps and stats.cfg_cached_steps
    assert {d.branch for d in stats.decisions} == {COND, UNCOND}


@pytest.fixture(scope="module")
def wan22_contexts() -> List[Any]:
    pipe = tm.tiny_wan_pipeline(two_experts=True)
    return _cached_pipeline_contexts(pipe, tm.wan_call_kwargs())


def test_wan22_reports_stats_per_expert(wan22_contexts: List[Any]) -> None:
    high, low = wan22_contexts
    assert (high.name, low.name) == ("transformer.blocks", "transformer_2.blocks")
    # Each expert sees its share of the cond + uncond calls (4 + 4 steps at boundary 0.875).
    assert len(high.decisions) == len(low.decisions) == tm.wan_call_kwargs()["num_inference_steps"]
    assert high.cached_steps and high.cfg_cached_steps


def test_wan22_low_noise_expert_counts_steps_from_its_first_call(wan22_contexts: List[Any]) -> None:
    low = wan22_contexts[1]
    low_steps = [d.step for d in low.decisions if d.branch == COND]
    assert low_steps == list(range(len(low_steps)))
    assert [d.reason for d in low.decisions[:2]] == ["warmup", "warmup"]


def test_qwenimage_pipeline_with_true_cfg_caches_both_branches() -> None:
    pipe = tm.tiny_qwenimage_pipeline()
    stats = _cached_pipeline_contexts(pipe, tm.qwenimage_call_kwargs())[0]
    assert stats.cached_steps and stats.cfg_cached_steps


def test_hunyuandit_refuses_back_blocks_whose_skip_a_cached_step_did_not_compute() -> None:
    # Block L > n//2 takes block n-1-L's output as its skip; with Bn > Fn a back block's source is
    # a middle block, which a cached step does not run.
    spec = tm.TINY_TRANSFORMERS["HunyuanDiT2DModel"]
    model = spec.build()
    enable_cache(model, cache_config=DBCacheConfig(**{**CONFIG, "Bn_compute_blocks": 2}))
    try:
        with torch.no_grad(), pytest.raises(ConfigError, match="Bn_compute_blocks"):
            for step in range(STEPS):
                _output(model, spec.inputs(step))
    finally:
        disable_cache(model)
    assert all(not block._forward_hooks for block in model.blocks), "disable removes the hooks"


def test_consisid_with_its_face_adapter_is_refused_with_the_reason() -> None:
    model = tm.TINY_TRANSFORMERS["ConsisIDTransformer3DModel"].build()
    model.is_train_face = True  # the released checkpoints' setting; the tiny model has no adapter
    with pytest.raises(UnsupportedModelError, match="face adapter"):
        enable_cache(model, cache_config=DBCacheConfig(**CONFIG))


def test_hidream_is_refused_with_the_reason() -> None:
    class HiDreamImagePipeline:
        transformer = torch.nn.Linear(1, 1)

        def __call__(self) -> None:
            raise AssertionError("not called")

    with pytest.raises(UnsupportedModelError, match="rebuild the text stream"):
        enable_cache(HiDreamImagePipeline(), cache_config=DBCacheConfig(**CONFIG))


def test_every_cache_dit_prefix_is_known() -> None:
    import cache_dit

    theirs = set(cache_dit.supported_pipelines()[1])
    known = {family.prefix for family in FAMILIES if family.refused is None}
    refused = {family.prefix for family in FAMILIES if family.refused is not None}
    # BriaFibo matches our "Bria" row by prefix and is then checked by inference.
    assert theirs - known - {"BriaFibo"} == {"HiDream"} and "HiDream" in refused
