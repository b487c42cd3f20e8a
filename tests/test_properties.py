"""Property-based tests over configs and step schedules (hypothesis).

Any config either runs or raises the documented ConfigError, and whatever runs keeps the invariants:
threshold 0 is bit-exact, computed steps are bit-exact, no run of cached steps is longer than
``max_continuous_cached_steps``, nothing is cached in warmup or on a mask-1 step, and a context holds
no more tensors than documented.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dit_cache_backend as dcb

BLOCKS = 6


class Block(torch.nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(index)
        self.weight = torch.nn.Parameter(torch.randn(8, 8, generator=generator) * 0.2)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        hidden = hidden_states + torch.tanh(hidden_states @ self.weight) * temb
        encoder = encoder_hidden_states + 0.1 * temb
        return hidden, encoder


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(Block(i) for i in range(BLOCKS))

    def forward(self, hidden_states, encoder_hidden_states, temb):
        for block in self.transformer_blocks:
            hidden_states, encoder_hidden_states = block(hidden_states, encoder_hidden_states, temb)
        return hidden_states


def inputs(temb: float):
    hidden = torch.linspace(-1, 1, 32).reshape(1, 4, 8)
    return hidden, torch.ones(1, 2, 8), torch.tensor(temb)


configs = st.fixed_dictionaries(
    {
        "Fn_compute_blocks": st.integers(-1, BLOCKS + 1),
        "Bn_compute_blocks": st.integers(-1, BLOCKS),
        "max_warmup_steps": st.integers(0, 5),
        "warmup_interval": st.integers(1, 3),
        "max_cached_steps": st.integers(-1, 6),
        "max_continuous_cached_steps": st.integers(-1, 4),
        "residual_diff_threshold": st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3, 1.0]),
    }
)
schedules = st.lists(st.floats(0.5, 1.5), min_size=2, max_size=16)
masks = st.one_of(st.none(), st.lists(st.sampled_from([0, 1]), min_size=16, max_size=16))


def run_cached(config_fields, schedule, mask, calibrated):
    toy = Toy()
    fields = dict(config_fields)
    if mask is not None:
        fields.update(steps_computation_mask=[1] + mask[1:])
    try:
        config = dcb.DBCacheConfig(**fields)
        adapter = dcb.BlockAdapter(
            transformer=toy, blocks=toy.transformer_blocks,
            forward_pattern=dcb.ForwardPattern.Pattern_0, check_forward_pattern=False,
        )
        calibrator = dcb.TaylorSeerCalibratorConfig(taylorseer_order=2) if calibrated else None
        dcb.enable_cache(adapter, cache_config=config, calibrator_config=calibrator)
    except dcb.ConfigError as error:
        return None, error, toy
    with torch.no_grad():
        outputs = [toy(*inputs(t)) for t in schedule]
    return outputs, dcb.summary(toy, logging=False)[0], toy


def valid(fields):
    front, back = fields["Fn_compute_blocks"], fields["Bn_compute_blocks"]
    return front >= 1 and back >= 0 and front + back <= BLOCKS


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(configs, schedules, masks, st.booleans())
def test_any_config_either_runs_with_the_invariants_or_raises_a_config_error(fields, schedule, mask, calibrated):
    outputs, result, toy = run_cached(fields, schedule, mask, calibrated)
    if not valid(fields):
        assert isinstance(result, dcb.ConfigError)
        assert result.key in ("Fn_compute_blocks", "Bn_compute_blocks")
        assert "forward" not in vars(toy), "a failed enable leaves the model untouched"
        return
    stats = result
    decisions = stats.decisions
    assert [d.step for d in decisions] == list(range(len(schedule)))
    full_mask = None if mask is None else [1] + mask[1:]
    warmup_end = fields["max_warmup_steps"]
    if full_mask is not None:
        # With a mask, warmup never extends past its leading run of 1s (spec §4.1).
        leading_ones = next((i for i, bit in enumerate(full_mask) if bit == 0), len(full_mask))
        warmup_end = min(warmup_end, leading_ones)
    warmup = set(range(0, warmup_end, fields["warmup_interval"]))
    cached = [d.step for d in decisions if d.cached]
    for step in cached:
        assert step not in warmup
        assert full_mask is None or full_mask[step] == 0
    limit = fields["max_continuous_cached_steps"]
    if limit >= 0:
        run = longest = 0
        for d in decisions:
            run = run + 1 if d.cached else 0
            longest = max(longest, run)
        assert longest <= limit
    if fields["max_cached_steps"] >= 0:
        assert len(cached) <= fields["max_cached_steps"]
    if fields["residual_diff_threshold"] == 0.0 and mask is None:
        assert cached == []
    reference = Toy()
    with torch.no_grad():
        for d, output, t in zip(decisions, outputs, schedule):
            if not d.cached:
                assert torch.equal(output, reference(*inputs(t))), f"computed step {d.step} is exact"
    # Documented bound: per branch one Fn residual plus, per stream (hidden, encoder), one residual
    # or order+1 TaylorSeer terms.
    per_stream = 3 if calibrated else 1
    assert stats.cached_tensors <= 1 + 2 * per_stream


@settings(max_examples=20, deadline=None, derandomize=True)
@given(schedules)
def test_threshold_zero_is_bit_exact_for_any_schedule(schedule):
    outputs, stats, _ = run_cached(
        {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "max_warmup_steps": 0,
         "warmup_interval": 1, "max_cached_steps": -1, "max_continuous_cached_steps": -1,
         "residual_diff_threshold": 0.0},
        schedule, None, False,
    )
    reference = Toy()
    with torch.no_grad():
        assert all(torch.equal(o, reference(*inputs(t))) for o, t in zip(outputs, schedule))
    assert stats.cached_steps == []


def test_releasing_a_request_frees_the_cached_tensors():
    outputs, stats, toy = run_cached(
        {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1, "max_warmup_steps": 1,
         "warmup_interval": 1, "max_cached_steps": -1, "max_continuous_cached_steps": -1,
         "residual_diff_threshold": 0.3},
        [1.0, 1.01, 1.02], None, True,
    )
    assert stats.cached_tensors > 0
    dcb.refresh_context(toy)
    assert dcb.summary(toy, logging=False)[0].cached_tensors == 0
    dcb.disable_cache(toy)
    assert dcb.contexts_summary(toy) == []
