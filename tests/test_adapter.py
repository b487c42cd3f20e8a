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


class OneList(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block() for _ in range(3))


def _context_configs(model):
    return [s.cache_options["cache_config"] for s in dcb.summary(model, logging=False)[:-1]]


def test_an_empty_block_list_is_a_config_error_naming_blocks():
    with pytest.raises(dcb.ConfigError, match="BlockAdapter.blocks") as error:
        dcb.BlockAdapter(blocks=[])
    assert "non-empty" in str(error.value)


def test_more_params_modifiers_than_block_lists_use_the_first_ones(caplog):
    model = OneList()
    adapter = dcb.BlockAdapter(
        transformer=model,
        blocks=model.blocks,
        forward_pattern=dcb.ForwardPattern.Pattern_1,
        params_modifiers=[
            dcb.ParamsModifier(residual_diff_threshold=0.3),
            dcb.ParamsModifier(residual_diff_threshold=0.7),
        ],
    )
    dcb.enable_cache(adapter, cache_config=dcb.DBCacheConfig(Fn_compute_blocks=1, residual_diff_threshold=0.1))
    try:
        assert [c.residual_diff_threshold for c in _context_configs(model)] == [0.3]
    finally:
        dcb.disable_cache(model)
    assert "2 params_modifiers for 1 block list(s); using the first 1" in caplog.text


def _one_list_adapter(pipe, **kwargs):
    return dcb.BlockAdapter(
        transformer=pipe, blocks=pipe.blocks, forward_pattern=dcb.ForwardPattern.Pattern_1, **kwargs
    )


def test_register_with_supported_registers_a_factory_by_class_name_prefix():
    dcb.BlockAdapterRegister.register("OneLi", supported=True)(_one_list_adapter)
    try:
        model = OneList()
        assert dcb.BlockAdapterRegister.is_supported(model)
        assert "OneLi" in dcb.supported_pipelines()[1]
        dcb.enable_cache(model, cache_config=dcb.DBCacheConfig(Fn_compute_blocks=1))
        assert [s.name for s in dcb.summary(model, logging=False)[:-1]] == ["transformer.blocks"]
        dcb.disable_cache(model)
    finally:
        dcb.BlockAdapterRegister._entries.pop()


def test_register_with_supported_false_leaves_the_factory_unregistered():
    factory = dcb.BlockAdapterRegister.register("OneLi", supported=False)(_one_list_adapter)
    assert factory is _one_list_adapter
    assert not dcb.BlockAdapterRegister.is_supported(OneList())


def test_get_adapter_takes_cache_dits_keyword_names():
    from dit_cache_backend.tiny_model import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    adapter = dcb.get_adapter(pipe=pipe)
    assert adapter.transformer is pipe.transformer and adapter.pipe is pipe
    # cache-dit's BlockAdapterRegister.get_adapter(pipe_or_module, **kwargs) sets adapter fields.
    named = dcb.BlockAdapterRegister.get_adapter(pipe_or_module=pipe, unique_blocks_name=["all"])
    assert named.unique_blocks_name == ["all"]


def test_get_adapter_of_an_unknown_model_is_none():
    assert dcb.get_adapter(pipe=torch.nn.Linear(2, 2)) is None
