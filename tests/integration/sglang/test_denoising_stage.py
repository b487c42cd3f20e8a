"""SGLang's real ``DenoisingStage._maybe_enable_cache_dit`` with our hooks, in-process (no worker).

SGLang's plugin loader applies our hooks, then SGLang's own env parsing and mount/refresh/unmount
logic runs on a stage holding two tiny diffusers ``WanTransformer3DModel`` experts (Wan 2.2), with
``SGLANG_CACHE_DIT_SECONDARY_*`` set for the low-noise expert. Only ``get_world_size`` is patched
(no process group is initialised here), as SGLang's own unit tests do.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, Iterator, Optional
from unittest.mock import patch

import pytest
import torch

from dit_cache_backend.session import session_of
from dit_cache_backend.stats import summary

ENV = {
    "SGLANG_CACHE_DIT_ENABLED": "true",
    "SGLANG_CACHE_DIT_WARMUP": "2",
    "SGLANG_CACHE_DIT_RDT": "0.3",
    "SGLANG_CACHE_DIT_SECONDARY_WARMUP": "1",
    "SGLANG_CACHE_DIT_SECONDARY_RDT": "0.9",
}


@pytest.fixture(scope="module")
def denoising(sglang_hooks: None) -> Any:
    from sglang.multimodal_gen.runtime.pipelines_core.stages import denoising as module

    return module


def _expert() -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=16,
        num_layers=3,
        rope_max_seq_len=32,
    )


@pytest.fixture()
def stage(denoising: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    stage = denoising.DenoisingStage.__new__(denoising.DenoisingStage)
    stage.server_args = SimpleNamespace(
        enable_breakable_cuda_graph=False, enable_torch_compile=False, enable_cfg_parallel=False
    )
    stage.transformer, stage.transformer_2 = _expert(), _expert()
    stage._cache_dit_enabled = False
    stage._cache_dit_request_overrides = {}
    stage._cache_dit_active_key = None
    with patch.object(denoising, "get_world_size", return_value=1):
        yield stage


def _batch(enable: Optional[bool] = None, params: Optional[Dict] = None) -> SimpleNamespace:
    return SimpleNamespace(
        is_warmup=False,
        do_classifier_free_guidance=True,
        sampling_params=SimpleNamespace(enable_cache_dit=enable, cache_dit_params=params),
    )


def _config(module: torch.nn.Module) -> Any:
    return summary(module, logging=False)[0].cache_options["cache_config"]


def test_each_expert_gets_its_own_context_and_config(stage: Any) -> None:
    stage._maybe_enable_cache_dit((6, 4), _batch())
    high, low = _config(stage.transformer), _config(stage.transformer_2)
    assert session_of(stage.transformer) is not session_of(stage.transformer_2)
    assert (high.max_warmup_steps, high.residual_diff_threshold, high.num_inference_steps) == (2, 0.3, 6)
    assert (low.max_warmup_steps, low.residual_diff_threshold, low.num_inference_steps) == (1, 0.9, 4)


def test_sglang_cfg_flag_sets_separate_cfg_on_both_experts(stage: Any) -> None:
    stage._maybe_enable_cache_dit((6, 4), _batch())
    assert _config(stage.transformer).enable_separate_cfg is True
    assert _config(stage.transformer_2).enable_separate_cfg is True


def test_refresh_resizes_each_expert_with_its_share_of_steps(stage: Any) -> None:
    stage._maybe_enable_cache_dit((6, 4), _batch())
    stage._maybe_enable_cache_dit((9, 3), _batch())
    assert _config(stage.transformer).num_inference_steps == 9
    assert _config(stage.transformer_2).num_inference_steps == 3


def test_request_secondary_knobs_reach_the_second_expert(stage: Any) -> None:
    stage._maybe_enable_cache_dit((6, 4), _batch(params={"secondary": {"max_warmup_steps": 3}}))
    assert _config(stage.transformer).max_warmup_steps == 2
    assert _config(stage.transformer_2).max_warmup_steps == 3


def test_opt_out_request_unmounts_both_experts(stage: Any) -> None:
    stage._maybe_enable_cache_dit((6, 4), _batch())
    stage._maybe_enable_cache_dit((6, 4), _batch(enable=False))
    assert session_of(stage.transformer) is None and session_of(stage.transformer_2) is None
    assert isinstance(stage.transformer.blocks, torch.nn.ModuleList) and len(stage.transformer.blocks) == 3


def test_bad_secondary_value_names_the_secondary_env_variable(
    stage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGLANG_CACHE_DIT_SECONDARY_FN", "7")
    with pytest.raises(ValueError, match="SGLANG_CACHE_DIT_SECONDARY_FN") as error:
        stage._maybe_enable_cache_dit((6, 4), _batch())
    assert "Fn_compute_blocks" in str(error.value)
    assert session_of(stage.transformer) is None  # nothing half-mounted


def test_bad_env_value_fails_with_our_error(stage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_CACHE_DIT_SCM_PRESET", "turbo")
    with pytest.raises(ValueError, match="invalid value for 'mask_policy': got 'turbo'") as error:
        stage._maybe_enable_cache_dit((6, 4), _batch())
    assert "set by SGLANG_CACHE_DIT_SCM_PRESET or cache_dit_params['scm_preset']" in str(error.value)
    assert session_of(stage.transformer) is None


def _calibrator(module: torch.nn.Module) -> Any:
    return summary(module, logging=False)[0].cache_options["calibrator_config"]


def test_dmd_env_gives_both_experts_sglangs_dmd_calibrator(
    stage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dit_cache_backend import DMDCalibratorConfig

    monkeypatch.setenv("SGLANG_CACHE_DIT_DMD", "true")
    monkeypatch.setenv("SGLANG_CACHE_DIT_DMD_HISTORY", "5")
    monkeypatch.setenv("SGLANG_CACHE_DIT_SECONDARY_DMD_RANK", "2")
    stage._maybe_enable_cache_dit((6, 4), _batch())
    # SGLang's rule: the secondary expert inherits the primary's DMD settings unless its own are set.
    assert _calibrator(stage.transformer) == DMDCalibratorConfig(dmd_history=5)
    assert _calibrator(stage.transformer_2) == DMDCalibratorConfig(dmd_history=5, dmd_rank=2)


def test_dmd_request_knobs_reach_the_calibrator(stage: Any) -> None:
    params = {"enable_dmd": True, "dmd_svd_precision": "low", "dmd_ridge": 1e-6}
    stage._maybe_enable_cache_dit((6, 4), _batch(params=params))
    calibrator = _calibrator(stage.transformer)
    assert (calibrator.calibrator_type, calibrator.dmd_svd_precision, calibrator.dmd_ridge) == (
        "dmd", "low", 1e-6
    )


def test_dmd_and_taylorseer_together_fail_with_sglangs_message(
    stage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGLANG_CACHE_DIT_DMD", "true")
    monkeypatch.setenv("SGLANG_CACHE_DIT_TAYLORSEER", "true")
    with pytest.raises(ValueError, match="mutually exclusive"):
        stage._maybe_enable_cache_dit((6, 4), _batch())
    assert session_of(stage.transformer) is None


def test_bad_dmd_env_value_names_the_env_variable(stage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_CACHE_DIT_DMD", "true")
    monkeypatch.setenv("SGLANG_CACHE_DIT_DMD_SVD_PRECISION", "ultra")
    with pytest.raises(ValueError, match="'dmd_svd_precision'") as error:
        stage._maybe_enable_cache_dit((6, 4), _batch())
    assert "SGLANG_CACHE_DIT_DMD_SVD_PRECISION or cache_dit_params['dmd_svd_precision']" in str(error.value)
    assert session_of(stage.transformer) is None
