"""``dit-cache calibrate`` on the trained tiny Flux: the written YAML loads, and running it meets
the target it was written for."""

import argparse

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.bench import build_workload
from dit_cache_backend.cli import main
from dit_cache_backend.config import load_configs
from dit_cache_backend.metrics import psnr

STEPS = 10
COMMON = ["calibrate", "--model", "tiny", "--steps", str(STEPS), "--warmup", "2", "--batch", "2"]


@pytest.fixture(scope="module")
def workload():
    torch.set_num_threads(1)
    args = argparse.Namespace(
        model="tiny",
        device=None,
        dtype=None,
        batch=2,
        seed=0,
        steps=STEPS,
        prompt="",
        height=None,
        width=None,
    )
    return build_workload(args)


def run_yaml(workload, path):
    """(computed steps, PSNR against uncached) of the config file on the tiny workload."""
    reference = workload.generate(STEPS)
    options = load_configs(str(path))
    dcb.enable_cache(workload.cache_target, **{k: v for k, v in options.items() if v is not None})
    try:
        output = workload.generate(STEPS)
        stats = dcb.summary(workload.cache_target, logging=False)[0]
    finally:
        dcb.disable_cache(workload.cache_target)
    value_range = float(reference.max() - reference.min())
    return STEPS - len(stats.cached_steps), psnr(reference, output, value_range)


def test_a_budget_target_writes_a_loadable_config_that_computes_within_it(tmp_path, workload):
    path = tmp_path / "budget.yaml"
    assert main([*COMMON, "--target-budget", "0.5", "--out", str(path)]) == 0
    cache = load_configs(str(path))["cache_config"]
    assert cache.compute_budget == 0.5 and cache.num_inference_steps == STEPS
    computed, _ = run_yaml(workload, path)
    assert computed <= 5


def test_a_psnr_target_writes_a_config_that_reaches_it_with_fewer_steps(tmp_path, workload):
    path = tmp_path / "psnr.yaml"
    assert main([*COMMON, "--target-psnr", "30", "--out", str(path)]) == 0
    computed, value = run_yaml(workload, path)
    assert value >= 30
    assert computed < STEPS


def test_the_magnitude_signal_is_written_with_its_calibrated_ratios(tmp_path):
    path = tmp_path / "magnitude.yaml"
    assert (
        main([*COMMON, "--signal", "magnitude", "--target-budget", "0.6", "--out", str(path)]) == 0
    )
    cache = load_configs(str(path))["cache_config"]
    assert cache.decision_signal == "magnitude"
    assert len(cache.signal_mag_ratios) == STEPS and cache.signal_mag_ratios[0] == 1.0


def test_calibrate_needs_exactly_one_target(tmp_path, capsys):
    assert main([*COMMON, "--out", str(tmp_path / "x.yaml")]) == 2
    assert "exactly one of --target-budget and --target-psnr" in capsys.readouterr().err
