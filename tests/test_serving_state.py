"""Serving state that cannot leak or break (issue 11): one specification test per defect.

Every test compares against a fresh or uncached run of the same request, or asserts the exact
decisions, configs or module tree the engine must have afterwards.
"""

import copy
import gc
import io
import pickle
import threading
import weakref

import pytest
import torch
from diffusers import DiffusionPipeline

import dit_cache_backend as dcb
from dit_cache_backend.config import ConfigOverride
from dit_cache_backend.errors import ConfigError, DitCacheError

DIM = 8


class Block(torch.nn.Module):
    """Pattern_3 block with real weights: ``h + tanh(linear(h)) * temb``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(DIM, DIM)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(DIM, DIM, generator=generator) * 0.3)
            self.linear.bias.zero_()

    def forward(self, hidden_states, temb):
        return hidden_states + torch.tanh(self.linear(hidden_states)) * temb


class Model(torch.nn.Module):
    def __init__(self, num_blocks: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(Block(seed + i) for i in range(num_blocks))

    def forward(self, hidden_states, temb):
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, temb)
        return hidden_states


def step_inputs(step: int, tokens: int = 4):
    t = 1.0 + 0.002 * step
    return torch.ones(1, tokens, DIM) * (1 + 0.001 * step), torch.tensor(t)


class Pipe(DiffusionPipeline):
    def __init__(self, transformer) -> None:
        super().__init__()
        self.register_modules(transformer=transformer)

    def __call__(self, steps: int = 8, tokens: int = 4):
        return [self.transformer(*step_inputs(s, tokens)) for s in range(steps)]


def adapter(model):
    return dcb.BlockAdapter(
        transformer=model,
        blocks=model.transformer_blocks,
        forward_pattern=dcb.ForwardPattern.Pattern_3,
        check_forward_pattern=False,
    )


def config(**fields):
    base = dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.5)
    return dcb.DBCacheConfig(**{**base, **fields})


def run_steps(model, steps: int = 8, tokens: int = 4):
    with torch.no_grad():
        return [model(*step_inputs(s, tokens)) for s in range(steps)]


def fresh_cached_run(steps: int = 8, **fields):
    """The reference: the same request alone on a fresh, freshly enabled model."""
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=steps, **fields))
    return run_steps(model, steps)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# -- shared modules and copies -----------------------------------------------------------------


def test_concurrent_calls_on_one_cached_module_are_refused_and_leave_it_intact():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    inside, release = threading.Event(), threading.Event()

    class Slow(torch.nn.Module):
        def forward(self, hidden_states, temb):
            inside.set()
            release.wait(10)
            return hidden_states

    original = model.transformer_blocks[3]
    model.transformer_blocks[3] = Slow()
    errors = []
    worker = threading.Thread(target=lambda: run_steps(model, 1))
    worker.start()
    assert inside.wait(10)
    try:
        run_steps(model, 1)
    except DitCacheError as exc:
        errors.append(exc)
    release.set()
    worker.join()
    assert errors and "another thread" in str(errors[0])
    model.transformer_blocks[3] = original
    assert type(model.transformer_blocks) is torch.nn.ModuleList
    dcb.disable_cache(model)
    assert same(run_steps(model), run_steps(Model()))


def test_a_block_replaced_after_enabling_is_the_one_that_runs():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8, residual_diff_threshold=0.0))
    replacement = Block(seed=99)
    model.transformer_blocks[2] = replacement
    expected_model = Model()
    expected_model.transformer_blocks[2] = copy.deepcopy(replacement)
    assert same(run_steps(model), run_steps(expected_model))


def test_a_block_replaced_after_enabling_is_not_kept_in_memory_by_the_cache():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    run_steps(model)
    replaced = weakref.ref(model.transformer_blocks[2])
    model.transformer_blocks[2] = Block(seed=99)
    gc.collect()
    assert replaced() is None


def test_a_refresh_checks_the_compute_blocks_against_the_list_the_module_holds_now():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    del model.transformer_blocks[1:]
    with pytest.raises(ConfigError, match="Fn_compute_blocks"):
        dcb.refresh_context(model, num_inference_steps=8, Fn_compute_blocks=2)


def test_force_refresh_step_hint_fires_in_every_request():
    pipe = Pipe(Model())
    dcb.enable_cache(pipe, cache_config=config(force_refresh_step_hint=4, max_warmup_steps=1))
    with torch.no_grad():
        first = pipe(steps=8)
        first_decisions = [d.reason for d in dcb.summary(pipe, logging=False)[0].decisions]
        second = pipe(steps=8)
        second_decisions = [d.reason for d in dcb.summary(pipe, logging=False)[0].decisions]
    assert same(first, second)
    assert first_decisions == second_decisions
    assert first_decisions.count("warmup") == 2  # step 0, and step 4 after the forced refresh


def test_the_request_after_a_failure_starts_clean():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    original = model.transformer_blocks[0]

    class Failing(torch.nn.Module):
        def forward(self, hidden_states, temb):
            raise RuntimeError("injected")

    with torch.no_grad():
        model(*step_inputs(0))
        model(*step_inputs(1))
        model(*step_inputs(2))
        model.transformer_blocks[0] = Failing()
        with pytest.raises(RuntimeError, match="injected"):
            model(*step_inputs(3))
    model.transformer_blocks[0] = original
    assert same(run_steps(model), fresh_cached_run())


def test_steps_past_the_end_of_a_static_mask_compute():
    model = Model()
    dcb.enable_cache(
        adapter(model),
        cache_config=config(steps_computation_mask=[1, 1, 0, 0], steps_computation_policy="static"),
    )
    run_steps(model, 12)
    decisions = dcb.summary(model, logging=False)[0].decisions
    assert [d.cached for d in decisions] == [False, False, True, True] + [False] * 8
    assert {d.reason for d in decisions[4:]} == {"past_mask"}


def test_cache_type_none_leaves_the_model_uncached():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=dcb.DBCacheConfig(cache_type=dcb.CacheType.NONE))
    assert dcb.contexts_summary(model) == []
    assert same(run_steps(model), run_steps(Model()))


@pytest.mark.parametrize("steps", [28, 40, 50])
def test_a_named_mask_policy_is_expanded_for_each_requests_step_count(steps):
    model = Model()
    base = config(num_inference_steps=40, steps_computation_mask="fast")
    dcb.enable_cache(adapter(model), cache_config=base)
    dcb.refresh_context(model, num_inference_steps=steps)
    refreshed = dcb.summary(model, logging=False)[0].cache_options["cache_config"]
    assert refreshed.steps_computation_mask == dcb.steps_mask(total_steps=steps, mask_policy="fast")


# -- refreshes never half-apply ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        dict(calibrator_config={"taylorseer_order": 2}),
        dict(cache_config={"num_inference_steps": 4}),
        dict(cache_config="configs/balanced.yaml"),
        dict(cache_config=0.5),
        dict(num_inference_steps=0),
        dict(Fn_compute_blocks=None),
        dict(residual_diff_threshold=10**400),
    ],
)
def test_a_rejected_refresh_changes_nothing(bad):
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    before = dcb.summary(model, logging=False)[0].cache_options["cache_config"]
    with pytest.raises(ConfigError):
        dcb.refresh_context(model, **bad)
    after = dcb.summary(model, logging=False)[0].cache_options["cache_config"]
    assert after == before
    assert same(run_steps(model), fresh_cached_run())
    dcb.refresh_context(model, num_inference_steps=8)
    dcb.disable_cache(model)


def test_refresh_can_turn_taylorseer_off_and_on():
    model = Model()
    dcb.enable_cache(
        adapter(model), cache_config=config(num_inference_steps=8),
        calibrator_config=dcb.TaylorSeerCalibratorConfig(),
    )
    dcb.refresh_context(model, enable_taylorseer=False)
    assert dcb.summary(model, logging=False)[0].cache_options["calibrator_config"] is None
    assert same(run_steps(model), fresh_cached_run())
    dcb.refresh_context(model, enable_taylorseer=True, taylorseer_order=2)
    calibrator = dcb.summary(model, logging=False)[0].cache_options["calibrator_config"]
    assert calibrator.enable_calibrator and calibrator.taylorseer_order == 2


def test_configs_are_copied_at_enable_so_later_edits_change_nothing():
    model = Model()
    cache_config = config(num_inference_steps=8)
    calibrator = dcb.TaylorSeerCalibratorConfig(taylorseer_order=1)
    dcb.enable_cache(adapter(model), cache_config=cache_config, calibrator_config=calibrator)
    calibrator.taylorseer_order = 3
    cache_config.residual_diff_threshold = 0.0
    options = dcb.summary(model, logging=False)[0].cache_options
    assert options["calibrator_config"].taylorseer_order == 1
    assert options["cache_config"].residual_diff_threshold == 0.5


def test_a_refresh_with_one_field_validates_once_and_reads_no_file(monkeypatch):
    from dit_cache_backend.config import base, loader

    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    calls = {"validate": 0}
    original = base._ValidatedConfig.validate

    def counting(self):
        calls["validate"] += 1
        return original(self)

    def no_loader(*args, **kwargs):
        raise AssertionError("the loader ran")

    monkeypatch.setattr(base._ValidatedConfig, "validate", counting)
    for name in ("load_cache_config", "load_configs", "_read_source", "_cache_configs_from"):
        monkeypatch.setattr(loader, name, no_loader)
    monkeypatch.setattr("dit_cache_backend.api.load_cache_config", no_loader)
    dcb.refresh_context(model, num_inference_steps=12)
    assert calls["validate"] == 1
    assert dcb.summary(model, logging=False)[0].cache_options["cache_config"].num_inference_steps == 12


def test_a_config_object_is_always_complete():
    with pytest.raises(ConfigError, match="Fn_compute_blocks"):
        dcb.DBCacheConfig(Fn_compute_blocks=None)
    override = dcb.DBCacheConfig().reset(residual_diff_threshold=0.1)
    assert isinstance(override, ConfigOverride) and dict(override) == {"residual_diff_threshold": 0.1}


@pytest.mark.parametrize(
    "flat, key",
    [
        ({"enable_taylorseer": "false"}, "enable_taylorseer"),
        ({"enable_taylorseer": True, "taylorseer_order": "2"}, "taylorseer_order"),
    ],
)
def test_the_flat_framework_config_validates_like_yaml(flat, key):
    from dit_cache_backend.config.framework import FrameworkCacheConfig

    with pytest.raises(ConfigError, match=key):
        FrameworkCacheConfig.from_flat(flat)


def test_the_flat_framework_config_reads_a_null_order_as_the_default():
    from dit_cache_backend.config.framework import FrameworkCacheConfig

    built = FrameworkCacheConfig.from_flat({"enable_taylorseer": True, "taylorseer_order": None})
    assert built.calibrator_config.taylorseer_order == 1


@pytest.mark.parametrize("field", ["max_warmup_steps", "taylorseer_order"])
def test_huge_counts_cost_no_memory_or_are_refused(field):
    model = Model()
    if field == "taylorseer_order":
        with pytest.raises(ConfigError, match="taylorseer_order"):
            dcb.TaylorSeerCalibratorConfig(taylorseer_order=10**12)
        return
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8, max_warmup_steps=10**12))
    outputs = run_steps(model)
    assert not any(d.cached for d in dcb.summary(model, logging=False)[0].decisions)
    assert same(outputs, run_steps(Model()))


# -- clear errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, key",
    [
        (lambda m: dcb.refresh_context(m, cache_config={"a": 1}), "cache_config"),
        (lambda m: dcb.refresh_context(m, cache_config=3.0), "cache_config"),
        (lambda m: dcb.enable_cache(adapter(Model()), cache_config=config(residual_diff_threshold=10**400)), "residual_diff_threshold"),
    ],
)
def test_bad_arguments_are_config_errors_naming_the_argument(call, key):
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    with pytest.raises(ConfigError, match=key):
        call(model)


def test_enable_cache_accepts_a_config_file_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cache_config:\n  Fn_compute_blocks: 1\n  max_warmup_steps: 2\n  residual_diff_threshold: 0.5\n  num_inference_steps: 8\n")
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=str(path))
    assert same(run_steps(model), fresh_cached_run())


def test_enable_cache_on_a_pipeline_without_transformer_is_a_config_error():
    pipe = Pipe(Model())
    pipe.transformer = None
    with pytest.raises(ConfigError, match="transformer is None"):
        dcb.enable_cache(pipe, cache_config=config())


def test_the_shorthand_cache_type_dbprune_builds_a_prune_context():
    model = Model()
    dcb.enable_cache(adapter(model), cache_type="DBPrune", Fn_compute_blocks=1, max_warmup_steps=2, num_inference_steps=8)
    options = dcb.summary(model, logging=False)[0].cache_options
    assert isinstance(options["cache_config"], dcb.DBPruneConfig)


def test_a_yaml_file_that_sets_a_key_twice_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("cache_config:\n  Fn_compute_blocks: 1\n  Fn_compute_blocks: 2\n")
    with pytest.raises(ConfigError, match="Fn_compute_blocks"):
        dcb.load_configs(str(path))


def test_a_training_forward_with_gradients_runs_uncached():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    model.train()
    losses = []
    for step in range(4):
        output = model(*step_inputs(step))
        output.sum().backward()
        losses.append(output.detach())
    reference = Model()
    assert same(losses, [reference(*step_inputs(s)).detach() for s in range(4)])


# -- shared modules and copies (items 1, 2 and 4) ---------------------------------------------


def test_a_sibling_pipeline_over_the_same_transformer_runs_it_uncached_and_leaks_nothing():
    model = Model()
    first = Pipe(model)
    dcb.enable_cache(first, cache_config=config())
    second = Pipe(**first.components)
    with torch.no_grad():
        first(steps=8)
        from_second = second(steps=8)
        again = first(steps=8)
    fresh = Pipe(Model())
    dcb.enable_cache(fresh, cache_config=config())
    with torch.no_grad():
        expected = fresh(steps=8)
    assert same(again, expected)
    assert same(from_second, run_steps(Model(), 8))


def test_a_request_from_a_second_thread_is_refused_while_one_runs():
    pipe = Pipe(Model())
    dcb.enable_cache(pipe, cache_config=config())
    inside, release = threading.Event(), threading.Event()

    class Waiting(torch.nn.Module):
        def forward(self, hidden_states, temb):
            inside.set()
            release.wait(10)
            return hidden_states

    original = pipe.transformer.transformer_blocks[0]
    pipe.transformer.transformer_blocks[0] = Waiting()
    worker = threading.Thread(target=lambda: pipe(steps=1))
    worker.start()
    assert inside.wait(10)
    with pytest.raises(DitCacheError, match="another thread"):
        pipe(steps=1)
    release.set()
    worker.join()
    pipe.transformer.transformer_blocks[0] = original
    with torch.no_grad():
        assert same(pipe(steps=8), fresh_pipe_run())


def fresh_pipe_run():
    fresh = Pipe(Model())
    dcb.enable_cache(fresh, cache_config=config())
    with torch.no_grad():
        return fresh(steps=8)


def test_a_deep_copy_computes_uncached_with_its_own_weights():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.mul_(0.5)
    reference = Model()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.mul_(0.5)
    assert dcb.contexts_summary(twin) == []
    assert same(run_steps(twin), run_steps(reference))
    assert same(run_steps(model), fresh_cached_run())


def test_a_cached_transformer_round_trips_through_torch_save_and_pickle():
    model = Model()
    dcb.enable_cache(adapter(model), cache_config=config(num_inference_steps=8))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert same(run_steps(loaded), run_steps(Model()))
    assert same(run_steps(pickle.loads(pickle.dumps(model))), run_steps(Model()))
