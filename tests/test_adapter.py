"""BlockAdapter shapes: how block lists are given, and what each becomes."""

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.resolve import resolve_adapter


class Block(torch.nn.Module):
    def forward(self, hidden_states, encoder_hidden_states):
        return encoder_hidden_states, hidden_states + 1


class TwoLists(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(Block() for _ in range(3))
        self.single_transformer_blocks = torch.nn.ModuleList(Block() for _ in range(2))


def test_a_plain_list_of_module_lists_is_several_block_lists():
    model = TwoLists()
    specs = resolve_adapter(dcb.BlockAdapter(
        transformer=model,
        blocks=[model.transformer_blocks, model.single_transformer_blocks],
        forward_pattern=dcb.ForwardPattern.Pattern_1,
    ))
    assert [(s.attr, len(s.blocks)) for s in specs] == [
        ("transformer_blocks", 3), ("single_transformer_blocks", 2)
    ]
    assert [s.name for s in specs] == ["transformer.transformer_blocks", "transformer.single_transformer_blocks"]


def test_one_pattern_per_list_must_match_the_number_of_lists():
    model = TwoLists()
    with pytest.raises(dcb.ConfigError, match="forward_pattern"):
        resolve_adapter(dcb.BlockAdapter(
            transformer=model,
            blocks=[model.transformer_blocks, model.single_transformer_blocks],
            forward_pattern=[dcb.ForwardPattern.Pattern_1] * 3,
        ))


def test_a_concatenated_list_needs_the_attribute_that_receives_it():
    model = TwoLists()
    joined = torch.nn.ModuleList([*model.transformer_blocks, *model.single_transformer_blocks])
    with pytest.raises(dcb.ConfigError, match="blocks_name"):
        resolve_adapter(dcb.BlockAdapter(transformer=model, blocks=joined,
                                         forward_pattern=dcb.ForwardPattern.Pattern_1))


class TakesX(torch.nn.Module):
    def forward(self, x):
        return x


def test_a_pattern_the_blocks_cannot_take_is_rejected_with_the_signature():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([TakesX(), TakesX()])
    with pytest.raises(dcb.ConfigError, match="check_forward_pattern=False") as info:
        resolve_adapter(dcb.BlockAdapter(transformer=model, blocks=model.layers,
                                         forward_pattern="Pattern_0", check_forward_pattern=True))
    assert "TakesX.forward" in str(info.value)


def test_auto_picks_the_longest_block_list():
    model = TwoLists()
    specs = resolve_adapter(dcb.BlockAdapter(transformer=model, auto=True,
                                             forward_pattern=dcb.ForwardPattern.Pattern_1))
    assert [s.attr for s in specs] == ["transformer_blocks"]
