"""`dit-cache` commands and the shipped presets."""

import pytest

import dit_cache_backend as dcb
from dit_cache_backend.cli import main
from dit_cache_backend.presets import preset_names, preset_path

PRESETS = ["balanced", "fast", "few-step", "quality", "ultra", "wan22"]


def test_every_documented_preset_ships_with_the_package():
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_loads_into_valid_configs(name):
    configs = dcb.load_configs(preset_path(name))
    assert isinstance(configs["cache_config"], dcb.DBCacheConfig)
    configs["cache_config"].validate()


def test_presets_order_from_faithful_to_fast():
    thresholds = [
        dcb.load_configs(preset_path(name))["cache_config"].residual_diff_threshold
        for name in ("quality", "balanced", "fast", "ultra")
    ]
    assert thresholds == sorted(thresholds)


def test_the_wan22_preset_expands_its_mask_for_forty_steps():
    config = dcb.load_configs(preset_path("wan22"))["cache_config"]
    assert config.steps_computation_mask == dcb.steps_mask(total_steps=40, mask_policy="fast")
    assert config.enable_separate_cfg is True


def test_an_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="balanced"):
        preset_path("turbo")


def test_mask_prints_the_preset_mask(capsys):
    assert main(["mask", "--steps", "28", "--policy", "fast"]) == 0
    assert capsys.readouterr().out.strip() == "1111110100010000100000100001  (11 computed of 28)"


def test_mask_with_bins_prints_the_custom_mask(capsys):
    assert main(["mask", "--steps", "6", "--compute-bins", "2", "1", "--cache-bins", "2", "1"]) == 0
    assert capsys.readouterr().out.startswith("110010")


def test_mask_with_an_unsupported_step_count_fails_with_exit_code_2(capsys):
    assert main(["mask", "--steps", "5", "--policy", "fast"]) == 2
    assert "total_steps" in capsys.readouterr().err


def test_check_config_prints_the_tag_of_a_preset(capsys):
    assert main(["check-config", "balanced"]) == 0
    assert capsys.readouterr().out.startswith("ok: DBCache_F1B0_W2I1M0MC4_R0.12_T1O2")


def test_check_config_reports_an_unknown_key_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("cache_config:\n  Fn_compute_block: 1\n")
    assert main(["check-config", str(path)]) == 2
    assert "did you mean 'Fn_compute_blocks'" in capsys.readouterr().err


def test_demo_prints_a_table_and_writes_the_side_by_side_image(tmp_path, capsys):
    out = tmp_path / "demo.png"
    args = ["demo", "--steps", "10", "--classes", "2", "--repeats", "1", "--preset", "fast"]
    assert main([*args, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["config", "computed", "steps"]
    uncached, fast = lines[1].split(), lines[2].split()
    assert uncached[:2] == ["uncached", "10/10"]
    computed, total = map(int, fast[1].split("/"))
    assert fast[0] == "fast" and total == 10 and computed < 10
    assert float(fast[3]) > 20.0  # PSNR in dB against the uncached run
    assert out.stat().st_size > 0
