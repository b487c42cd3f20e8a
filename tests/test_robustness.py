"""Serving-grade robustness: non-finite residuals, exceptions mid-step, shape changes, distributed."""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dit_cache_backend as dcb


class Block(torch.nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.fail_on_call = None
        self.calls = 0

    def forward(self, hidden_states, temb):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise RuntimeError("block failed")
        return hidden_states + temb * (self.index + 1)


class Toy(torch.nn.Module):
    def __init__(self, blocks: int = 6) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(Block(i) for i in range(blocks))

    def forward(self, hidden_states, temb):
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, temb)
        return hidden_states


def enable(toy, **fields):
    config = dict(Fn_compute_blocks=1, max_warmup_steps=1, residual_diff_threshold=0.5)
    adapter = dcb.BlockAdapter(
        transformer=toy, blocks=toy.transformer_blocks,
        forward_pattern=dcb.ForwardPattern.Pattern_3, check_forward_pattern=False,
    )
    dcb.enable_cache(adapter, cache_config=dcb.DBCacheConfig(**{**config, **fields}))
    return adapter


def serve(toy, temps, shape=(1, 4, 8)):
    return [toy(torch.ones(shape), torch.tensor(t)) for t in temps]


def stats(toy):
    return dcb.summary(toy, logging=False)[0]


def test_a_nan_residual_forces_a_compute_step_and_is_counted():
    toy = Toy()
    enable(toy)
    serve(toy, [1.0, 1.01, float("nan"), 1.02])
    record = stats(toy)
    assert [(d.cached, d.reason) for d in record.decisions[2:]] == [(False, "nonfinite_diff")] * 2
    # Step 3 is compared with step 2's (NaN) reference, so it computes too.
    assert record.nonfinite_diffs == 2


def test_an_inf_residual_forces_a_compute_step():
    toy = Toy()
    enable(toy)
    serve(toy, [1.0, 1.01, float("inf")])
    assert stats(toy).decisions[2].reason == "nonfinite_diff"


def test_a_changed_shape_inside_a_context_computes_instead_of_failing():
    toy = Toy()
    enable(toy)
    serve(toy, [1.0, 1.01])
    out = toy(torch.ones(2, 4, 8), torch.tensor(1.02))
    decision = stats(toy).decisions[-1]
    assert (decision.cached, decision.reason) == (False, "shape_changed")
    assert torch.equal(out, Toy()(torch.ones(2, 4, 8), torch.tensor(1.02)))


def test_a_changed_shape_computes_even_when_the_threshold_always_caches():
    toy = Toy()
    enable(toy, residual_diff_threshold=1.0)
    serve(toy, [1.0, 1.01])
    toy(torch.ones(1, 6, 8), torch.tensor(1.02))
    assert stats(toy).decisions[-1].reason == "shape_changed"


def test_an_exception_inside_a_block_leaves_the_model_usable():
    toy = Toy()
    enable(toy, num_inference_steps=4)
    toy.transformer_blocks[0].fail_on_call = 2
    with pytest.raises(RuntimeError, match="block failed"):
        serve(toy, [1.0, 1.01])
    assert len(toy.transformer_blocks) == 6, "the block list view is gone after the failure"
    dcb.refresh_context(toy, num_inference_steps=4)
    toy.transformer_blocks[0].fail_on_call = None
    after = serve(toy, [1.0, 1.01, 1.02, 1.03])
    fresh = Toy()
    enable(fresh, num_inference_steps=4)
    assert all(torch.equal(a, b) for a, b in zip(after, serve(fresh, [1.0, 1.01, 1.02, 1.03])))
    assert stats(toy).cached_steps == stats(fresh).cached_steps


# -- the same decision on every rank ------------------------------------------------------------

RANK_SCHEDULES = {
    # Rank 0's local residual barely moves, rank 1's moves a lot: alone they would disagree.
    0: [1.0, 1.0, 1.01, 1.02, 1.03, 1.04, 1.05, 1.06],
    1: [1.0, 1.0, 1.4, 1.9, 2.5, 3.2, 4.0, 4.9],
}


def _decisions_on_rank(rank: int, world: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        toy = Toy()
        enable(toy, residual_diff_threshold=0.2)
        serve(toy, RANK_SCHEDULES[rank])
        queue.put((rank, [d.cached for d in stats(toy).decisions]))
    finally:
        dist.destroy_process_group()


def local_decisions(schedule):
    toy = Toy()
    enable(toy, residual_diff_threshold=0.2)
    serve(toy, schedule)
    return [d.cached for d in stats(toy).decisions]


def test_every_rank_takes_the_same_decision_at_every_step(tmp_path):
    assert local_decisions(RANK_SCHEDULES[0]) != local_decisions(RANK_SCHEDULES[1])
    context = mp.get_context("spawn")
    queue = context.Queue()
    init_file = str(tmp_path / "gloo_init")
    processes = [
        context.Process(target=_decisions_on_rank, args=(rank, 2, init_file, queue)) for rank in (0, 1)
    ]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert results[0] == results[1]
    assert any(results[0]) and not all(results[0])
