"""register() against the real vLLM-Omni modules, without starting an engine (fast)."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import dit_cache_backend.adapters.vllm_omni as plugin
import pytest
from vllm_omni.diffusion.cache import selector
from vllm_omni.diffusion.cache.base import CacheBackend
from vllm_omni.diffusion.cache.cachedit import (
    CacheDiTBackend as VllmOmniCacheDiTBackend,
)
from vllm_omni.diffusion.cache.cachedit import runtime
from vllm_omni.diffusion.cache.teacache import TeaCacheBackend
from vllm_omni.diffusion.data import DiffusionCacheConfig
from vllm_omni.diffusion.worker import diffusion_model_runner
from vllm_omni.plugins import load_omni_plugins_by_group

from dit_cache_backend.errors import ConfigError, UnknownKeyError


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(plugin.SWITCH_ENV, raising=False)
    plugin.register()
    yield


def original_selector() -> Any:
    return selector.get_cache_backend.__wrapped__


def test_entry_point_is_discovered_by_vllm_omni() -> None:
    plugins = load_omni_plugins_by_group("vllm_omni.general_plugins")
    assert plugins["dit_cache_backend"] is plugin.register


def test_register_is_idempotent() -> None:
    wrapper = selector.get_cache_backend
    plugin.register()
    assert selector.get_cache_backend is wrapper
    assert not getattr(original_selector(), plugin._WRAPPED_MARK, False)  # wrapped exactly once


def test_runner_sees_the_wrapped_selector() -> None:
    assert diffusion_model_runner.get_cache_backend is selector.get_cache_backend


def test_both_names_select_our_backend_which_is_a_vllm_omni_cache_dit_backend() -> None:
    for name in ("cache_dit", "dit_cache"):
        backend = selector.get_cache_backend(name, {})
        assert type(backend) is plugin.DitCacheBackend
        # The runner's request-scoped adoption and the base-class contract rely on these.
        assert isinstance(backend, VllmOmniCacheDiTBackend) and isinstance(backend, CacheBackend)
        assert not backend.is_enabled()


def test_other_names_reach_vllm_omni() -> None:
    assert selector.get_cache_backend("none", {}) is None
    assert selector.get_cache_backend(None, {}) is None
    assert type(selector.get_cache_backend("tea_cache", {})) is TeaCacheBackend
    with pytest.raises(ValueError, match="Unsupported cache backend"):
        selector.get_cache_backend("no_such_cache", {})


def test_switch_keeps_vllm_omni_cache_dit_for_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugin.SWITCH_ENV, "builtin")
    assert type(selector.get_cache_backend("cache_dit", {})) is VllmOmniCacheDiTBackend
    assert type(selector.get_cache_backend("dit_cache", {})) is plugin.DitCacheBackend
    assert type(runtime.CacheDiTBackend(DiffusionCacheConfig())) is VllmOmniCacheDiTBackend


def test_request_scoped_runtime_builds_our_backend() -> None:
    assert type(runtime.CacheDiTBackend(DiffusionCacheConfig())) is plugin.DitCacheBackend


def test_every_cache_dit_field_and_extension_key_is_translated() -> None:
    config = DiffusionCacheConfig.from_dict(
        {
            "Fn_compute_blocks": 2,
            "Bn_compute_blocks": 1,
            "max_warmup_steps": 3,
            "max_cached_steps": 7,
            "residual_diff_threshold": 0.3,
            "max_continuous_cached_steps": 2,
            "enable_taylorseer": True,
            "taylorseer_order": 2,
            "scm_steps_mask_policy": "fast",
            "scm_steps_policy": "static",
            "force_refresh_step_hint": 5,
            "force_refresh_step_policy": "repeat",
            # Not a DiffusionCacheConfig field: arrives through _extra_params as our extension.
            "warmup_interval": 2,
            # Another backend's field: ignored by ours.
            "rel_l1_thresh": 0.9,
        }
    )
    assert config._extra_params == {"warmup_interval": 2}
    translated = selector.get_cache_backend("cache_dit", config).engine.config
    ours = translated.cache_config
    assert (ours.Fn_compute_blocks, ours.Bn_compute_blocks) == (2, 1)
    assert (ours.max_warmup_steps, ours.max_cached_steps, ours.max_continuous_cached_steps) == (3, 7, 2)
    assert ours.residual_diff_threshold == 0.3
    assert (ours.force_refresh_step_hint, ours.force_refresh_step_policy) == (5, "repeat")
    assert ours.warmup_interval == 2
    assert translated.calibrator_config is not None and translated.calibrator_config.taylorseer_order == 2
    assert (translated.scm_steps_mask_policy, translated.scm_steps_policy) == ("fast", "static")


def test_misspelt_extension_key_fails_with_a_suggestion() -> None:
    with pytest.raises(UnknownKeyError, match="did you mean 'max_warmup_steps'"):
        selector.get_cache_backend("cache_dit", {"max_warmup_step": 2})


def test_bad_value_fails_with_our_error() -> None:
    with pytest.raises(ConfigError, match="scm_steps_mask_policy"):
        selector.get_cache_backend("dit_cache", {"scm_steps_mask_policy": "turbo"})


def test_failed_registration_warns_and_leaves_vllm_omni_in_place(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = original_selector()
    monkeypatch.setattr(selector, "get_cache_backend", original)
    monkeypatch.setattr(diffusion_model_runner, "get_cache_backend", original)

    def broken() -> type:
        raise ImportError("simulated: dit_cache_backend cannot load")

    monkeypatch.setattr(plugin, "backend_class", broken)
    with caplog.at_level(logging.WARNING, logger=plugin.__name__):
        plugin.register()  # must not raise
    assert selector.get_cache_backend is original
    assert diffusion_model_runner.get_cache_backend is original
    warnings = [r for r in caplog.records if r.name == plugin.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "NOT active" in warnings[0].getMessage() and "simulated" in warnings[0].getMessage()


def test_missing_selector_degrades_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(plugin, "SELECTOR_MODULE", "vllm_omni.diffusion.cache.no_such_selector")
    with caplog.at_level(logging.WARNING, logger=plugin.__name__):
        plugin.register()
    (record,) = [r for r in caplog.records if r.name == plugin.__name__]
    assert "cannot import vllm_omni.diffusion.cache.no_such_selector" in record.getMessage()


def test_json_string_config_is_parsed() -> None:
    backend = selector.get_cache_backend("cache_dit", '{"max_warmup_steps": 3}')
    assert backend.engine.config.cache_config.max_warmup_steps == 3


def test_malformed_json_config_fails_with_our_error() -> None:
    with pytest.raises(ConfigError, match="a JSON object"):
        selector.get_cache_backend("cache_dit", "{max_warmup_steps: 3")
