"""A bad cache_config fails with our error; the opt-out switch gives ``cache_dit`` back to vLLM-Omni."""

from __future__ import annotations

from typing import Any, List

import pytest
from vomni_helpers import generate, make_omni, rpc


def error_chain(exc: BaseException) -> str:
    """Every message in the exception chain: vLLM-Omni may re-raise the worker's error wrapped."""
    messages = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        messages.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(messages)


def test_misspelt_key_fails_with_our_clear_error(tiny_flux: str, close_after: List[Any]) -> None:
    with pytest.raises(Exception) as raised:
        close_after.append(
            make_omni(tiny_flux, cache_backend="cache_dit", cache_config={"residual_diff_treshold": 0.1})
        )
    assert "unknown key 'residual_diff_treshold' in cache_config; did you mean 'residual_diff_threshold'?" in (
        error_chain(raised.value)
    )


def test_opt_out_switch_restores_vllm_omni_backend(
    tiny_flux: str, close_after: List[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIT_CACHE_BACKEND_VLLM_OMNI", "builtin")
    omni = make_omni(tiny_flux, cache_backend="cache_dit", cache_config={"max_warmup_steps": 2})
    close_after.append(omni)
    assert rpc(omni, "dit_cache_backend_class") == "vllm_omni.diffusion.cache.cachedit.backend.CacheDiTBackend"
    assert generate(omni, 4).size == (32, 32)
