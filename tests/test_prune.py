"""DBPrune beyond cache-dit's reach: Pattern 3 block lists (cache-dit 1.5.3 raises TypeError)."""

import torch

import dit_cache_backend as dcb


class Block(torch.nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, hidden_states, temb):
        return hidden_states + temb * (self.index + 1)


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(Block(i) for i in range(8))

    def forward(self, hidden_states, temb):
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, temb)
        return hidden_states


def run(schedule):
    toy = Toy()
    adapter = dcb.BlockAdapter(transformer=toy, blocks=toy.transformer_blocks,
                               forward_pattern=dcb.ForwardPattern.Pattern_3,
                               check_forward_pattern=False)
    config = dcb.DBPruneConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=2,
                               residual_diff_threshold=0.02)
    dcb.enable_cache(adapter, cache_config=config)
    outputs = [toy(torch.ones(1, 4, 8), torch.tensor(t)) for t in schedule]
    return outputs, dcb.summary(toy, logging=False)[0]


def test_dbprune_prunes_pattern_3_blocks_with_cache_dits_accounting():
    outputs, stats = run([1.0, 1.01, 1.02, 1.2, 1.21, 1.22])
    assert stats.pruned_steps == [2, 4, 5]
    assert stats.pruned_blocks == [0, 0, 6, 0, 6, 6]
    assert stats.pruned_ratio == 18 / 48


def test_dbprune_steps_without_pruning_are_exact():
    schedule = [1.0, 1.01, 1.02, 1.2, 1.21, 1.22]
    outputs, stats = run(schedule)
    reference = Toy()
    for step, (output, t) in enumerate(zip(outputs, schedule)):
        if step not in stats.pruned_steps:
            assert torch.equal(output, reference(torch.ones(1, 4, 8), torch.tensor(t)))
