"""Property-based tests over configs and step schedules (hypothesis).

Any config either runs or raises the documented ConfigError, and whatever runs keeps the invariants:
threshold 0 is bit-exact, computed steps are bit-exact, no run of cached steps is longer than
``max_continuous_cached_steps``, nothing is cached in warmup or on a mask-1 step, and a context holds
no more tensors than documented.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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


# -- the serving state machine (issue 11) -------------------------------------------------------


def request_inputs(step: int, branch: int, tokens: int):
    """Drifting inputs of one transformer call; the CFG branch (1) gets its own temb."""
    hidden = torch.linspace(-1, 1, tokens * 8).reshape(1, tokens, 8) * (1 + 0.01 * step)
    return hidden, torch.ones(1, 2, 8), torch.tensor(1.0 + 0.02 * step + 0.5 * branch)


def serve_request(toy, steps: int, tokens: int, cfg: bool):
    with torch.no_grad():
        return [
            toy(*request_inputs(step, branch, tokens))
            for step in range(steps)
            for branch in ((0, 1) if cfg else (0,))
        ]


class Failing(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise RuntimeError("injected block failure")


refresh_fields = st.fixed_dictionaries(
    {},
    optional={
        "residual_diff_threshold": st.sampled_from([0.0, 0.05, 0.3, 1.0]),
        "max_warmup_steps": st.integers(0, 3),
        "max_continuous_cached_steps": st.integers(-1, 2),
        "Fn_compute_blocks": st.integers(1, 3),
        "Bn_compute_blocks": st.integers(0, 2),
    },
)


class ServingMachine(RuleBasedStateMachine):
    """Enable, refresh, requests of any length/shape/CFG, injected failures, disable: every
    request's output equals the same request run alone on a fresh model with the same settings."""

    def __init__(self) -> None:
        super().__init__()
        self.toy = Toy()
        self.fields = None  # the settings the model is cached with, None when uncached

    def adapter(self, toy):
        return dcb.BlockAdapter(
            transformer=toy, blocks=toy.transformer_blocks,
            forward_pattern=dcb.ForwardPattern.Pattern_0, check_forward_pattern=False,
        )

    @precondition(lambda self: self.fields is None)
    @rule(fields=refresh_fields)
    def enable(self, fields):
        fields = {"Fn_compute_blocks": 1, "residual_diff_threshold": 0.3, "max_warmup_steps": 1, **fields}
        dcb.enable_cache(self.adapter(self.toy), cache_config=dcb.DBCacheConfig(**fields))
        self.fields = fields

    @precondition(lambda self: self.fields is not None)
    @rule(fields=refresh_fields)
    def refresh(self, fields):
        dcb.refresh_context(self.toy, **fields)
        self.fields = {**self.fields, **fields}

    @precondition(lambda self: self.fields is not None)
    @rule(bad=st.sampled_from([{"Fn_compute_blocks": None}, {"Fn_compute_blocks": BLOCKS + 1},
                               {"num_inference_steps": 0}, {"enable_taylorseer": "yes"}]))
    def rejected_refresh(self, bad):
        try:
            dcb.refresh_context(self.toy, **bad)
        except dcb.ConfigError:
            return
        raise AssertionError(f"refresh {bad} was accepted")

    @rule(steps=st.integers(1, 5), tokens=st.sampled_from([4, 6]), cfg=st.booleans())
    def request(self, steps, tokens, cfg):
        if self.fields is not None:
            dcb.refresh_context(self.toy, num_inference_steps=steps * (2 if cfg else 1),
                                enable_separate_cfg=cfg)
        outputs = serve_request(self.toy, steps, tokens, cfg)
        fresh = Toy()
        if self.fields is not None:
            fields = {**self.fields, "num_inference_steps": steps * (2 if cfg else 1),
                      "enable_separate_cfg": cfg}
            dcb.enable_cache(self.adapter(fresh), cache_config=dcb.DBCacheConfig(**fields))
        expected = serve_request(fresh, steps, tokens, cfg)
        assert all(torch.equal(a, b) for a, b in zip(outputs, expected))

    @precondition(lambda self: self.fields is not None)
    @rule(steps_before=st.integers(0, 3))
    def failing_request(self, steps_before):
        blocks = self.toy.transformer_blocks
        original = blocks[0]
        serve_request(self.toy, steps_before, 4, False)
        blocks[0] = Failing()
        try:
            serve_request(self.toy, 1, 4, False)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the injected failure did not surface")
        finally:
            blocks[0] = original

    @precondition(lambda self: self.fields is not None)
    @rule()
    def disable(self):
        dcb.disable_cache(self.toy)
        self.fields = None

    @invariant()
    def the_module_tree_is_the_models_own(self):
        assert type(self.toy.transformer_blocks) is torch.nn.ModuleList
        assert all(isinstance(b, Block) for b in self.toy.transformer_blocks)


ServingMachine.TestCase.settings = settings(
    max_examples=12, stateful_step_count=8, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_serving_state_machine = ServingMachine.TestCase
