"""``sglang generate`` exactly as a user types it: our engine, and the opt-out switch.

(A bad env value is tested in-process in test_denoising_stage.py, and a failing request's error
reaching the user in test_native.py: each ``sglang generate`` costs ~40-60 s of CI time.)"""

from __future__ import annotations

import pytest

from sglang_harness import Run, sglang_cli_generate

ENABLED = {"SGLANG_CACHE_DIT_ENABLED": "true", "SGLANG_CACHE_DIT_WARMUP": "2", "SGLANG_CACHE_DIT_RDT": "0.5"}


@pytest.fixture(scope="module")
def ours(tiny_flux: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return sglang_cli_generate(tiny_flux, ENABLED, tmp_path_factory.mktemp("cli-ours"))


@pytest.fixture(scope="module")
def stock(tiny_flux: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    env = {**ENABLED, "DIT_CACHE_BACKEND_SGLANG": "stock"}
    return sglang_cli_generate(tiny_flux, env, tmp_path_factory.mktemp("cli-stock"))


def test_sglang_generate_caches_with_our_engine(ours: Run) -> None:
    assert ours.returncode == 0, ours.output[-3000:]
    (record,) = ours.records
    assert (record["engine"], record["module"], record["num_inference_steps"]) == (
        "dit_cache_backend",
        "FluxTransformer2DModel",
        8,
    )
    assert record["cached_steps"], record


def test_sglang_generate_writes_the_image(ours: Run) -> None:
    assert len(list((ours.workdir / "out").glob("*.png"))) == 1, ours.output[-3000:]


def test_opt_out_switch_keeps_sglang_stock_cache_dit(stock: Run) -> None:
    assert stock.returncode == 0, stock.output[-3000:]
    assert "Match Blocks: CachedBlocks_" in stock.output  # cache-dit's own mount log
    assert "dit_cache_backend enabled" not in stock.output
    assert not stock.records  # no hooks at all, not even the stats channel
