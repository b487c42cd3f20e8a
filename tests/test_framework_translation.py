"""The serving frameworks' flat calibrator settings, translated (``FrameworkCacheConfig.from_flat``).

SGLang passes ``enable_dmd`` + ``dmd_*`` (``SGLANG_CACHE_DIT_DMD*``) or ``enable_taylorseer`` +
``taylorseer_order``; vLLM-Omni the TaylorSeer pair. Both frameworks then build cache-dit's config
class with only those fields, so the encoder stream takes the class default (on).
"""

from __future__ import annotations

import pytest

import dit_cache_backend as dcb
from dit_cache_backend.config.framework import FrameworkCacheConfig


def calibrator(**flat):
    return FrameworkCacheConfig.from_flat(flat).calibrator_config


def test_enable_dmd_gives_a_dmd_calibrator_with_the_given_fields():
    built = calibrator(
        enable_dmd=True, dmd_history=8, dmd_rank=3, dmd_ridge=1e-6, dmd_svd_precision="low"
    )
    assert built == dcb.DMDCalibratorConfig(
        dmd_history=8, dmd_rank=3, dmd_ridge=1e-6, dmd_svd_precision="low"
    )


def test_enable_dmd_alone_takes_dmd_defaults_with_the_encoder_stream_on():
    built = calibrator(enable_dmd=True)
    assert isinstance(built, dcb.DMDCalibratorConfig)
    assert (built.dmd_history, built.dmd_rank, built.dmd_ridge, built.dmd_svd_precision) == (
        6, 0, 1e-8, "medium"
    )
    assert built.enable_calibrator is True and built.enable_encoder_calibrator is True


def test_enable_taylorseer_calibrates_the_encoder_stream_as_the_frameworks_config_class_does():
    built = calibrator(enable_taylorseer=True, taylorseer_order=2)
    assert built == dcb.TaylorSeerCalibratorConfig(taylorseer_order=2)
    assert built.enable_encoder_calibrator is True


def test_an_explicit_encoder_flag_is_kept():
    taylorseer = calibrator(enable_taylorseer=True, enable_encoder_taylorseer=False)
    dmd = calibrator(enable_dmd=True, enable_encoder_dmd=False)
    assert taylorseer.enable_encoder_calibrator is False and dmd.enable_encoder_calibrator is False


def test_no_calibrator_flag_gives_no_calibrator():
    assert calibrator() is None
    assert calibrator(enable_dmd=False, enable_taylorseer=False) is None


def test_dmd_and_taylorseer_together_are_refused():
    with pytest.raises(dcb.ConfigError, match="enable_dmd") as error:
        calibrator(enable_dmd=True, enable_taylorseer=True)
    assert "enable_taylorseer" in str(error.value)


@pytest.mark.parametrize(
    "key, value",
    [("dmd_history", 0), ("dmd_rank", -1), ("dmd_ridge", -1.0), ("dmd_svd_precision", "ultra")],
)
def test_a_bad_dmd_field_is_a_config_error_naming_it(key, value):
    with pytest.raises(dcb.ConfigError, match=f"'{key}'"):
        calibrator(enable_dmd=True, **{key: value})
