"""The checks a ``BlockAdapter`` runs, and cache-dit's switches that turn them off.

``check_num_outputs=True``: the blocks' annotated outputs must fit the pattern. cache-dit 1.5.3's
meaning: with the forward-pattern check on, each block's forward must be
annotated with as many ``torch.Tensor``s as the pattern returns (``Pattern_0`` two, ``Pattern_2``
one); a forward annotated with no tensor is not checked; accelerate/diffusers hooks turn the check
off; with ``auto=True`` it filters the candidate lists instead. The check runs at enable time,
before anything is installed, on both engines (cache-dit asserts, ours raises ``ConfigError``).
``skip_post_init=True`` builds an adapter without the construction-time check.
"""

from __future__ import annotations

from typing import Tuple

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.resolve import resolve_adapter

from engines import ENGINE_NAMES, load_engine


class TwoTensorBlock(torch.nn.Module):
    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return hidden_states * 0.5, encoder_hidden_states * 0.5


class OneTensorBlock(torch.nn.Module):
    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return hidden_states * 0.5


class UnannotatedBlock(torch.nn.Module):
    def forward(self, hidden_states, encoder_hidden_states):
        return hidden_states * 0.5, encoder_hidden_states * 0.5


class Model(torch.nn.Module):
    def __init__(self, block_type: type = TwoTensorBlock, count: int = 4):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(block_type() for _ in range(count))

    def forward(self, hidden_states, encoder_hidden_states):
        for block in self.transformer_blocks:
            out = block(hidden_states, encoder_hidden_states)
            if not isinstance(out, tuple):
                out = (out, encoder_hidden_states)
            hidden_states, encoder_hidden_states = out
        return hidden_states


def enable(cd, model, pattern: str, **checks) -> None:
    cd.enable_cache(
        adapter(cd, model, pattern, **checks),
        cache_config=cd.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0),
    )


def adapter(cd, model, pattern: str, **checks):
    return cd.BlockAdapter(
        transformer=model,
        blocks=model.transformer_blocks,
        blocks_name="transformer_blocks",
        forward_pattern=cd.ForwardPattern[pattern],
        **{"check_forward_pattern": True, **checks},
    )


@pytest.fixture(params=ENGINE_NAMES)
def engine(request):
    return load_engine(request.param)


def test_blocks_annotated_with_the_patterns_output_count_are_accepted(engine):
    cd, model = engine.module, Model()
    enable(cd, model, "Pattern_0", check_num_outputs=True)
    try:
        config = cd.summary(model, logging=False)[0].cache_options["cache_config"]
        assert config.Fn_compute_blocks == 1
    finally:
        cd.disable_cache(model)


def test_blocks_annotated_with_another_output_count_are_refused_at_enable(engine):
    cd, model = engine.module, Model()
    expected = AssertionError if engine.is_reference else dcb.ConfigError
    match = "No block forward pattern" if engine.is_reference else "check_num_outputs"
    with pytest.raises(expected, match=match):
        enable(cd, model, "Pattern_2", check_num_outputs=True)


def test_the_refusal_names_the_block_the_counts_and_the_switch():
    with pytest.raises(dcb.ConfigError) as error:
        resolve_adapter(adapter(dcb, Model(), "Pattern_2", check_num_outputs=True))
    message = str(error.value)
    assert error.value.key == "BlockAdapter.forward_pattern"
    assert error.value.value == "Pattern_2"
    assert "TwoTensorBlock.forward is annotated to return 2 tensor(s)" in message
    assert "Pattern_2 returns 1 ['hidden_states']" in message
    assert "check_num_outputs=False to skip this check" in message


def test_a_refused_enable_leaves_the_model_as_it_was():
    model = Model()
    blocks, forward = list(model.transformer_blocks), model.forward
    with pytest.raises(dcb.ConfigError):
        enable(dcb, model, "Pattern_2", check_num_outputs=True)
    assert list(model.transformer_blocks) == blocks
    assert model.forward == forward
    assert dcb.summary(model, logging=False) == [dcb.CacheStats()]


def test_the_output_count_is_not_checked_by_default(engine):
    cd, model = engine.module, Model()
    enable(cd, model, "Pattern_2")
    try:
        config = cd.summary(model, logging=False)[0].cache_options["cache_config"]
        assert config.Fn_compute_blocks == 1
    finally:
        cd.disable_cache(model)



def test_the_output_count_is_not_checked_when_check_num_outputs_is_false():
    specs = resolve_adapter(adapter(dcb, Model(), "Pattern_2", check_num_outputs=False))
    assert len(specs) == 1


def test_the_output_count_is_not_checked_when_the_pattern_check_is_off():
    specs = resolve_adapter(
        adapter(dcb, Model(), "Pattern_2", check_num_outputs=True, check_forward_pattern=False)
    )
    assert len(specs) == 1


def test_a_forward_annotated_with_no_tensor_is_not_checked():
    model = Model(UnannotatedBlock)
    specs = resolve_adapter(adapter(dcb, model, "Pattern_2", check_num_outputs=True))
    assert len(specs) == 1


def test_hooks_on_the_transformer_turn_the_output_check_off():
    model = Model()
    model._diffusers_hook = object()  # diffusers' hook registry: the blocks' forwards are wrapped
    specs = resolve_adapter(adapter(dcb, model, "Pattern_2", check_num_outputs=True))
    assert len(specs) == 1


class LongOneShortTwo(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(OneTensorBlock() for _ in range(4))
        self.single_transformer_blocks = torch.nn.ModuleList(TwoTensorBlock() for _ in range(2))


def test_auto_skips_lists_whose_output_count_does_not_fit_the_pattern():
    model = LongOneShortTwo()
    checked = dcb.BlockAdapter(
        transformer=model,
        auto=True,
        forward_pattern=dcb.ForwardPattern.Pattern_0,
        check_num_outputs=True,
    )
    unchecked = dcb.BlockAdapter(
        transformer=model, auto=True, forward_pattern=dcb.ForwardPattern.Pattern_0
    )
    assert [s.attr for s in resolve_adapter(checked)] == ["single_transformer_blocks"]
    assert [s.attr for s in resolve_adapter(unchecked)] == ["transformer_blocks"]


def test_skip_post_init_builds_the_adapter_and_enable_cache_still_refuses_it():
    model = Model()
    skipped = dcb.BlockAdapter(
        transformer=model,
        blocks=[],
        forward_pattern=dcb.ForwardPattern.Pattern_0,
        skip_post_init=True,
    )
    assert skipped.blocks == []
    with pytest.raises(dcb.ConfigError, match="BlockAdapter.blocks"):
        dcb.enable_cache(skipped)
    assert dcb.summary(model, logging=False) == [dcb.CacheStats()]
