"""Inferring the block lists of unregistered transformers (dit_cache_backend.inference).

The toy transformers are written to a module file so that their forward source can be read, the way
inference reads a real model's; one variant is built with ``exec`` to have no source at all.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List

import pytest
import tiny_models as tm
import torch

from dit_cache_backend import (
    DBCacheConfig,
    ForwardPattern,
    UnsupportedModelError,
    contexts_summary,
    disable_cache,
    enable_cache,
)
from dit_cache_backend.inference import candidate_lists, infer_adapter, infer_lists
from dit_cache_backend.registry import FAMILIES

TOY = """
import torch


class ToyBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Linear(8, 8)
        self.text = torch.nn.Linear(8, 8)

    def forward({params}){returns}:
        {body}


class ToyTransformer(torch.nn.Module):
    def __init__(self, depth=4):
        super().__init__()
        self.proj_in = torch.nn.Linear(8, 8)
        self.layers = torch.nn.ModuleList(ToyBlock() for _ in range(depth))

    def forward(self, hidden_states, encoder_hidden_states, temb):
        hidden_states = self.proj_in(hidden_states)
        for {target} in {iterable}:
            {loop}
        {after}
        return hidden_states
"""

# Block bodies: the hidden stream moves with the weights and temb, the text stream more slowly.
HIDDEN_OUT = "torch.tanh(self.mix(hidden_states) * temb + hidden_states)"
X_OUT = "torch.tanh(self.mix(x) * temb + x)"
TEXT_OUT = "encoder_hidden_states + 0.1 * self.text(encoder_hidden_states)"
AUX_OUT = "hidden_states.mean(dim=1, keepdim=True)"

# (block parameters, block body, loop statement, expected pattern, hidden argument)
PATTERN_CASES: Dict[str, tuple] = {
    "pattern_0": (
        "self, hidden_states, encoder_hidden_states, temb",
        f"return {HIDDEN_OUT}, {TEXT_OUT}",
        "hidden_states, encoder_hidden_states = block(hidden_states, encoder_hidden_states, temb)",
        ForwardPattern.Pattern_0,
        "hidden_states",
    ),
    "pattern_1": (
        "self, hidden_states, encoder_hidden_states, temb",
        f"return {TEXT_OUT}, {HIDDEN_OUT}",
        (
            "encoder_hidden_states, hidden_states = block(hidden_states=hidden_states, "
            "encoder_hidden_states=encoder_hidden_states, temb=temb)"
        ),
        ForwardPattern.Pattern_1,
        "hidden_states",
    ),
    "pattern_2": (
        "self, hidden_states, encoder_hidden_states, temb",
        f"return {HIDDEN_OUT} + encoder_hidden_states.mean(dim=1, keepdim=True)",
        (
            "hidden_states = block(hidden_states, "
            "encoder_hidden_states=encoder_hidden_states, temb=temb)"
        ),
        ForwardPattern.Pattern_2,
        "hidden_states",
    ),
    "pattern_3_with_x": (
        "self, x, temb",
        f"return {X_OUT}",
        "hidden_states = block(hidden_states, temb)",
        ForwardPattern.Pattern_3,
        "x",
    ),
    "pattern_4": (
        "self, hidden_states, temb",
        f"return {HIDDEN_OUT}, {AUX_OUT}",
        "hidden_states, aux = block(hidden_states, temb=temb)",
        ForwardPattern.Pattern_4,
        "hidden_states",
    ),
    "pattern_5": (
        "self, hidden_states, temb",
        f"return {AUX_OUT}, {HIDDEN_OUT}",
        "aux, hidden_states = block(hidden_states, temb=temb)",
        ForwardPattern.Pattern_5,
        "hidden_states",
    ),
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors gain nothing from a second thread (see test_models.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_module(
    tmp_path: Path,
    *,
    params: str = "self, hidden_states, temb",
    body: str = f"return {HIDDEN_OUT}",
    returns: str = "",
    target: str = "block",
    iterable: str = "self.layers",
    loop: str = "hidden_states = block(hidden_states, temb)",
    after: str = "",
) -> ModuleType:
    """Write a toy transformer module with the given block and loop, and import it."""
    source = TOY.format(
        params=params,
        returns=returns,
        body=body,
        target=target,
        iterable=iterable,
        loop=loop,
        after=after,
    )
    path = tmp_path / f"toy_{abs(hash(source))}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toy(tmp_path: Path, **kwargs: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return toy_module(tmp_path, **kwargs).ToyTransformer().eval()


def toy_inputs(step: int) -> Dict[str, torch.Tensor]:
    return {
        "hidden_states": tm.latents((1, 6, 8), step),
        "encoder_hidden_states": tm.randn((1, 3, 8), 1),
        "temb": torch.tensor(1.0 - 0.02 * step),
    }


def pattern_case(tmp_path: Path, case: str) -> torch.nn.Module:
    params, body, loop, _, _ = PATTERN_CASES[case]
    return toy(tmp_path, params=params, body=body, loop=loop)


@pytest.mark.parametrize("case", sorted(PATTERN_CASES))
def test_pattern_and_hidden_argument_come_from_signature_and_loop(
    tmp_path: Path, case: str
) -> None:
    *_, pattern, hidden_argument = PATTERN_CASES[case]
    (inferred,) = infer_lists(pattern_case(tmp_path, case))
    assert (inferred.attr, inferred.pattern, inferred.hidden_argument) == (
        "layers",
        pattern,
        hidden_argument,
    )


@pytest.mark.parametrize("case", sorted(PATTERN_CASES))
def test_inferred_adapter_caches_computed_steps_exactly(tmp_path: Path, case: str) -> None:
    # A wrong pattern (streams swapped, encoder not threaded) would change the computed steps.
    model, reference = pattern_case(tmp_path, case), pattern_case(tmp_path, case)
    config = DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=0,
        max_warmup_steps=2,
        residual_diff_threshold=1.0,
        max_continuous_cached_steps=2,
    )
    enable_cache(model, cache_config=config)
    with torch.no_grad():
        outputs = [model(**toy_inputs(step)) for step in range(8)]
        expected = [reference(**toy_inputs(step)) for step in range(8)]
    (stats,) = contexts_summary(model)
    disable_cache(model)
    assert stats.cached_steps == [2, 3, 5, 6]
    for step in set(range(8)) - set(stats.cached_steps):
        assert torch.equal(outputs[step], expected[step]), f"step {step}"


def test_enable_cache_infers_an_unregistered_transformer(tmp_path: Path) -> None:
    model = pattern_case(tmp_path, "pattern_1")
    enable_cache(model, cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0))
    with torch.no_grad():
        model(**toy_inputs(0))
    names = [stats.name for stats in contexts_summary(model)]
    disable_cache(model)
    assert names == ["transformer.layers"]


def test_grad_checkpointing_twin_loop_is_not_a_second_run(tmp_path: Path) -> None:
    checkpointed = "self._gradient_checkpointing_func(block, hidden_states, temb)"
    loop = (
        "if torch.is_grad_enabled() and self.training:\n"
        f"                hidden_states = {checkpointed}\n"
        "            else:\n"
        "                hidden_states = block(hidden_states, temb)"
    )
    (inferred,) = infer_lists(toy(tmp_path, loop=loop))
    assert inferred.pattern is ForwardPattern.Pattern_3


def test_a_module_without_block_lists_is_not_inferred() -> None:
    assert infer_adapter(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None


def test_lists_of_mixed_block_classes_are_not_candidates() -> None:
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    model.refiner = torch.nn.ModuleList([torch.nn.Linear(2, 2)])  # not named like a block list
    assert [c.attr for c in candidate_lists(model)] == ["layers"]


# -- refusals: the error names the lists found and the explicit way out ---------------------------


def assert_actionable(error: pytest.ExceptionInfo, reason: str) -> None:
    message = str(error.value)
    assert reason in message
    assert "layers (4 x ToyBlock(hidden_states, temb))" in message
    assert "BlockAdapter(transformer=transformer, blocks=[transformer.layers]" in message
    assert "@BlockAdapterRegister.register('ToyTransformer')" in message


def test_loop_using_the_block_index_is_refused(tmp_path: Path) -> None:
    model = toy(
        tmp_path,
        target="index, block",
        iterable="enumerate(self.layers)",
        loop="hidden_states = block(hidden_states, temb * (index + 1))",
    )
    with pytest.raises(UnsupportedModelError) as error:
        infer_adapter(model)
    assert_actionable(error, "the loop uses the block index 'index'")


def test_loop_changing_the_stream_between_blocks_is_refused(tmp_path: Path) -> None:
    loop = (
        "hidden_states = block(hidden_states, temb)\n"
        "            hidden_states = hidden_states + 1.0"
    )
    with pytest.raises(UnsupportedModelError) as error:
        infer_adapter(toy(tmp_path, loop=loop))
    assert_actionable(error, "the loop changes 'hidden_states' between blocks")


def test_forward_reading_a_block_outside_the_loop_is_refused(tmp_path: Path) -> None:
    # DiT reads `self.transformer_blocks[0].norm1.emb` after its loop.
    model = toy(tmp_path, after="hidden_states = hidden_states * self.layers[0].mix.bias")
    with pytest.raises(UnsupportedModelError) as error:
        infer_adapter(model)
    assert_actionable(error, "forward reads 'self.layers' outside its block loop")


def _without_source(tmp_path: Path, returns: str) -> torch.nn.Module:
    """The toy class re-created by exec, so inspect cannot find its forward source."""
    source = TOY.format(
        params="self, hidden_states, temb",
        returns=returns,
        body=f"return {HIDDEN_OUT}",
        target="block",
        iterable="self.layers",
        loop="hidden_states = block(hidden_states, temb)",
        after="",
    )
    namespace: Dict[str, object] = {}
    exec(compile(textwrap.dedent(source), "<generated>", "exec"), namespace)  # noqa: S102
    return namespace["ToyTransformer"]()


def test_without_source_a_single_tensor_annotation_gives_pattern_3(tmp_path: Path) -> None:
    (inferred,) = infer_lists(_without_source(tmp_path, " -> torch.Tensor"))
    assert inferred.pattern is ForwardPattern.Pattern_3


def test_without_source_a_pair_annotation_is_ambiguous(tmp_path: Path) -> None:
    model = _without_source(tmp_path, " -> tuple[torch.Tensor, torch.Tensor]")
    with pytest.raises(UnsupportedModelError) as error:
        infer_adapter(model)
    assert_actionable(error, "so the output order is unknown")


# -- the registry, cross-checked ------------------------------------------------------------------


def _registry_patterns(model: torch.nn.Module) -> Dict[str, ForwardPattern]:
    for family in FAMILIES:
        if type(model).__name__ in family.classes:
            return dict(family.lists)
    raise AssertionError(type(model).__name__)


REGISTERED: List[str] = sorted(
    {name for family in FAMILIES for name in family.classes}
    - {
        "FluxTransformer2DModel",  # one concatenated list; its two loops are checked separately
    }
)


@pytest.mark.parametrize("class_name", REGISTERED)
def test_inference_agrees_with_the_registry_where_it_accepts_a_list(class_name: str) -> None:
    model = tm.TINY_TRANSFORMERS[class_name].build()
    registered = _registry_patterns(model)
    try:
        inferred = infer_lists(model)
    except UnsupportedModelError:
        pytest.skip("inference refuses this forward (controlnet residuals, block index, …)")
    common = [i for i in inferred if i.attr in registered]
    assert all(i.pattern is registered[i.attr] for i in common), inferred
