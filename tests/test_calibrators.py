"""The calibrator streams (TaylorSeer, FoCa, DMD) on signals whose forecasts are known exactly.

Streams are fed a value per computed step (``update``) and asked for cached steps
(``approximate``); the step numbers are the context's diffusion-step indices.
"""

from __future__ import annotations

import math

import pytest
import torch

from dit_cache_backend import (
    CalibratorConfig,
    ConfigError,
    DMDCalibratorConfig,
    FoCaCalibratorConfig,
    TaylorSeerCalibratorConfig,
    UnknownKeyError,
)
from dit_cache_backend.calibrators import DMDStream, FoCaStream, TaylorSeerStream


def feed(stream, values_by_step):
    for step, value in values_by_step.items():
        stream.update(torch.tensor([float(value)]), step)


def value(tensor):
    return float(tensor.reshape(-1)[0])


# -- TaylorSeer: cache-dit's clock -----------------------------------------------------------------


def test_taylorseer_forms_no_difference_before_three_steps_after_the_first_value():
    stream = TaylorSeerStream(1)
    feed(stream, {0: 0.0, 1: 1.0, 2: 2.0})
    assert value(stream.approximate(4)) == 2.0  # plain reuse


def test_taylorseer_extrapolates_once_a_computed_step_is_three_steps_after_the_first():
    stream = TaylorSeerStream(1)
    feed(stream, {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0})
    assert value(stream.approximate(6)) == pytest.approx(6.0)


def test_taylorseer_clock_starts_at_the_streams_first_value():
    stream = TaylorSeerStream(1)
    feed(stream, {5: 5.0, 6: 6.0, 7: 7.0})
    assert value(stream.approximate(9)) == 7.0
    feed(stream, {8: 8.0})
    assert value(stream.approximate(9)) == pytest.approx(9.0)


def test_taylorseer_order_two_is_exact_on_a_quadratic_once_both_differences_exist():
    stream = TaylorSeerStream(2)
    feed(stream, {k: k * k for k in range(5)})
    # Divided differences at unit spacing: the Newton forecast 16 + 7·2 + 2·2²/2 = 34 (true 36).
    assert value(stream.approximate(6)) == pytest.approx(34.0)


def test_taylorseer_restarts_its_clock_on_a_new_shape():
    stream = TaylorSeerStream(1)
    feed(stream, {k: k for k in range(4)})
    stream.update(torch.zeros(2), 4)
    stream.update(torch.ones(2), 5)
    assert torch.equal(stream.approximate(7), torch.ones(2))


# -- FoCa --------------------------------------------------------------------------------------


def test_foca_reuses_the_anchor_until_two_values_are_computed():
    stream = FoCaStream()
    feed(stream, {0: 3.0})
    assert value(stream.approximate(1)) == 3.0


def test_foca_is_exact_on_a_unit_spaced_linear_signal_within_its_horizon():
    stream = FoCaStream()
    feed(stream, {0: 0.0, 1: 2.0})
    assert [value(stream.approximate(k)) for k in (2, 3, 4)] == pytest.approx([4.0, 6.0, 8.0])


def test_foca_damps_towards_the_anchor_beyond_three_steps():
    stream = FoCaStream()
    feed(stream, {0: 0.0, 1: 1.0})
    forecasts = [value(stream.approximate(k)) for k in range(2, 7)]
    # Recursive slopes 1, 1, 1 within the horizon; at elapsed 4 and 5 the Heun value is
    # blended with the anchor by 3/elapsed.
    assert forecasts[:3] == pytest.approx([2.0, 3.0, 4.0])
    assert forecasts[3] == pytest.approx(0.75 * (1 + 1.5 * (1 + 1)) + 0.25 * 1)


# -- DMD ----------------------------------------------------------------------------------------


def test_dmd_forecasts_an_exponential_exactly_from_four_equally_spaced_values():
    stream = DMDStream()
    decay = 0.8
    for step in range(4):
        stream.update(torch.tensor([[decay**step, 2 * decay**step]]), step)
    forecast = stream.approximate(6)
    assert forecast.tolist()[0] == pytest.approx([decay**6, 2 * decay**6], rel=1e-6)  # float32 values


def test_dmd_falls_back_to_taylorseer_before_four_snapshots():
    stream = DMDStream()
    feed(stream, {0: 1.0, 1: 2.0, 2: 3.0})
    assert value(stream.approximate(3)) == 3.0  # TaylorSeer's clock: no difference yet


def test_dmd_fits_only_the_equally_spaced_tail():
    stream = DMDStream()
    decay = 0.5
    for step in (0, 1, 3, 5, 7, 9):  # the tail 1, 3, 5, 7, 9 has spacing 2
        stream.update(torch.tensor([[decay**step]]), step)
    assert value(stream.approximate(10)) == pytest.approx(decay**10, rel=1e-6)  # float32 values


def test_dmd_fits_each_batch_item_on_its_own():
    together, alone = DMDStream(), DMDStream()
    for step in range(5):
        first = torch.tensor([0.9**step, 1.0 + step])
        together.update(torch.stack([first, torch.tensor([0.5**step, -1.0])]), step)
        alone.update(first.unsqueeze(0), step)
    assert torch.allclose(together.approximate(7)[0], alone.approximate(7)[0], atol=1e-6)


def test_dmd_warmup_fallback_differs_from_cache_dit_which_differences_two_values_back():
    """cache-dit 1.5.3's fallback slope on 0, 1, 2, 3 (unit steps) is (3 − 1) / 1 = 2, not 1."""
    reference = pytest.importorskip("cache_dit.caching.cache_contexts.calibrators.dmd")
    ours, theirs = DMDStream(history=3), reference.DMDState(history=3)
    for step in range(4):
        theirs.mark_step_begin()
        ours.update(torch.tensor([float(step)]), step)
        theirs.update(torch.tensor([float(step)]))
    theirs.mark_step_begin()
    theirs.mark_step_begin()
    assert value(ours.approximate(5)) == pytest.approx(5.0)
    assert value(theirs.approximate()) == pytest.approx(7.0)


# -- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, tag",
    [
        (TaylorSeerCalibratorConfig(taylorseer_order=2), "T1O2"),
        (FoCaCalibratorConfig(), "FoCa"),
        (DMDCalibratorConfig(), "DMDH6"),
        (DMDCalibratorConfig(dmd_history=5, dmd_svd_precision="low"), "DMDH5l"),
    ],
)
def test_calibrator_tags_are_cache_dits(config, tag):
    assert config.strify() == tag


@pytest.mark.parametrize(
    "name", ["TaylorSeerCalibratorConfig", "FoCaCalibratorConfig", "DMDCalibratorConfig"]
)
def test_calibrator_configs_have_cache_dits_fields_and_defaults(name):
    cache_dit = pytest.importorskip("cache_dit")
    import dit_cache_backend

    assert getattr(dit_cache_backend, name)().as_dict() == getattr(cache_dit, name)().as_dict()


def test_unknown_calibrator_kwargs_are_refused_with_the_accepted_names():
    with pytest.raises(UnknownKeyError, match="n_derivatives"):
        CalibratorConfig(calibrator_kwargs={"max_warmup_steps": 2})


def test_base_config_runs_its_type_with_the_given_kwargs():
    calibrator = CalibratorConfig(
        enable_calibrator=True, calibrator_type="dmd", calibrator_kwargs={"history": 4}
    ).make_calibrator()
    calibrator.update("hidden", torch.zeros(1), 0)
    assert (calibrator.calibrator_type, calibrator.streams["hidden"].history) == ("dmd", 4)


def test_a_stream_value_that_the_calibrator_refuses_is_a_config_error():
    config = CalibratorConfig(calibrator_kwargs={"n_derivatives": 0})
    with pytest.raises(ConfigError, match="taylorseer_order must be >= 1"):
        config.make_calibrator()


def test_every_forecast_is_finite_on_a_constant_signal():
    for stream in (TaylorSeerStream(3), FoCaStream(), DMDStream()):
        for step in range(8):
            stream.update(torch.ones(2, 3), step)
        assert torch.isfinite(stream.approximate(12)).all()
        assert math.isclose(float(stream.approximate(12).mean()), 1.0, rel_tol=1e-6)
