"""The scale-out sections without their optional engine: torchao is an extra, never required."""

from __future__ import annotations

import sys

import pytest
import torch

import dit_cache_backend as dcb
from dit_cache_backend.errors import ConfigError
from dit_cache_backend.session import session_of
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline

CACHE = dcb.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2)


@pytest.fixture
def without_torchao(monkeypatch):
    # A None entry makes `import torchao` raise ImportError, as on a machine without the extra.
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")] + ["torchao"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_caching_needs_no_torchao(without_torchao):
    pipe = tiny_flux_pipeline()
    dcb.enable_cache(pipe, CACHE)
    with torch.no_grad():
        pipe(**tiny_flux_inputs(0, num_inference_steps=6))
    assert len(dcb.summary(pipe, logging=False)[0].decisions) == 6  # one decision per step
    dcb.disable_cache(pipe)


def test_quantize_config_without_torchao_names_the_extra_to_install(without_torchao):
    pipe = tiny_flux_pipeline()
    with pytest.raises(ConfigError, match=r"dit_cache_backend\[quantize\]") as info:
        dcb.enable_cache(pipe, CACHE, quantize_config=dcb.QuantizeConfig(quant_type="int8_weight_only"))
    assert "torchao==0.18.0" in str(info.value)
    assert session_of(pipe) is None
