"""cache-dit's module paths, aliased onto this package by ``cache_dit_paths.install()``.

``install()`` takes over the name ``cache_dit`` for the whole process, and the test session has the
real cache-dit imported, so the checks run in one fresh interpreter and report back as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import json, importlib
    import dit_cache_backend as dcb
    import dit_cache_backend.cache_dit_paths as paths
    paths.install()
    import cache_dit
    from cache_dit.platforms import current_platform
    from cache_dit.caching.load_configs import load_configs, load_cache_config
    from cache_dit.caching.cache_contexts import DBCacheConfig, TaylorSeerCalibratorConfig
    from cache_dit.caching import BlockAdapter, ForwardPattern, enable_cache
    from cache_dit.logger import init_logger
    from cache_dit.offload import layerwise_offload
    import cache_dit.offload.layerwise
    from cache_dit.summary import strify

    def refusal(path):
        try:
            importlib.import_module(path)
        except ImportError as error:
            return str(error)
        return None

    print(json.dumps({
        "top_level_is_ours": cache_dit.enable_cache is dcb.enable_cache,
        "pattern_value": cache_dit.Pattern_3 is dcb.ForwardPattern.Pattern_3,
        "platform": current_platform is dcb.platforms.current_platform,
        "configs": [DBCacheConfig is dcb.DBCacheConfig,
                    TaylorSeerCalibratorConfig is dcb.TaylorSeerCalibratorConfig],
        "loaders": [load_configs is dcb.load_configs, load_cache_config is dcb.load_cache_config],
        "caching": [BlockAdapter is dcb.BlockAdapter, ForwardPattern is dcb.ForwardPattern,
                    enable_cache is dcb.enable_cache],
        "caching_load_configs_is_the_function": cache_dit.caching.load_configs is dcb.load_configs,
        "logger": init_logger is dcb.init_logger,
        "offload": [layerwise_offload is dcb.layerwise_offload,
                    cache_dit.offload.layerwise.layerwise_offload is dcb.layerwise_offload],
        "summary_function_kept": cache_dit.summary is dcb.summary and strify is dcb.strify,
        "package_untouched": [dcb.summary.__module__, dcb.offload.__name__],
        "refusals": {path: refusal(path) for path in [
            "cache_dit._utils.utils",
            "cache_dit.caching.cache_contexts.calibrators",
            "cache_dit.attention.backends.register",
            "cache_dit.distributed.core",
            "cache_dit.kernels",
        ]},
        "unknown": refusal("cache_dit.no_such_module"),
    }))
    """
)


@pytest.fixture(scope="module")
def probe():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_cache_dit_gives_this_package(probe):
    assert probe["top_level_is_ours"] and probe["pattern_value"]


def test_cache_dit_platforms_is_our_current_platform(probe):
    assert probe["platform"]


def test_cache_dit_caching_paths_are_our_configs_loaders_and_api(probe):
    assert probe["configs"] == [True, True]
    assert probe["loaders"] == [True, True]
    assert probe["caching"] == [True, True, True]


def test_a_submodule_named_like_a_function_leaves_the_function_in_place(probe):
    assert probe["caching_load_configs_is_the_function"]
    assert probe["summary_function_kept"]


def test_cache_dit_logger_and_offload_paths_are_ours(probe):
    assert probe["logger"]
    assert probe["offload"] == [True, True]


def test_installing_the_alias_changes_nothing_in_the_package(probe):
    assert probe["package_untouched"] == ["dit_cache_backend.stats", "dit_cache_backend.offload"]


@pytest.mark.parametrize(
    "path, advice",
    [
        ("cache_dit._utils.utils", "dit-cache bench"),
        ("cache_dit.caching.cache_contexts.calibrators", "TaylorSeerCalibrator"),
        ("cache_dit.attention.backends.register", "set_attention_backend"),
        ("cache_dit.distributed.core", "ContextParallelConfig"),
        ("cache_dit.kernels", "no counterpart"),
    ],
)
def test_a_path_without_counterpart_is_an_import_error_naming_the_alternative(probe, path, advice):
    message = probe["refusals"][path]
    # The message names the first missing module of the path.
    assert message.split(" is not provided by dit_cache_backend: ")[0] in path
    assert advice in message


def test_an_unknown_path_is_a_plain_module_not_found(probe):
    assert probe["unknown"] == "No module named 'cache_dit.no_such_module'"


def test_install_refuses_when_the_real_cache_dit_is_imported():
    pytest.importorskip("cache_dit")
    import dit_cache_backend.cache_dit_paths as paths

    with pytest.raises(RuntimeError, match="already imported"):
        paths.install()
