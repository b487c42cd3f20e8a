"""``--backend diffusers --cache-dit-config FILE``: SGLang's diffusers backend on our engine."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from dit_cache_backend.errors import NotSupportedYetError, UnknownKeyError
from dit_cache_backend.session import session_of
from sglang_harness import Run, generate_requests

# The shape of SGLang's own CI config (test/server/configs/cache_dit_scm_config.yaml): DBCache +
# TaylorSeer + an SCM preset, which needs num_inference_steps in the file.
CONFIG = """\
cache_config:
  max_warmup_steps: 2
  warmup_interval: 1
  max_cached_steps: -1
  max_continuous_cached_steps: 2
  Fn_compute_blocks: 1
  Bn_compute_blocks: 0
  residual_diff_threshold: 0.5
  enable_taylorseer: true
  taylorseer_order: 1
  num_inference_steps: 8
  steps_computation_mask: "medium"
  steps_computation_policy: "dynamic"
"""
UNSUPPORTED = """\
cache_config:
  max_warmup_steps: 2
parallelism_config:
  ulysses_size: 2
"""
MISSPELT = """\
cache_config:
  max_warmup_step: 2
"""


def _write(directory: Path, text: str) -> str:
    path = directory / "cache.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def run(tiny_flux: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("diffusers")
    request = [{"num_inference_steps": 8}]
    return generate_requests(tiny_flux, "diffusers", request, {}, workdir, _write(workdir, CONFIG))


def test_cache_dit_config_caches_the_diffusers_pipeline_with_our_engine(run: Run) -> None:
    assert run.request_ok(0), run.output[-3000:]
    (record,) = run.records
    assert (record["engine"], record["backend"], record["module"]) == (
        "dit_cache_backend",
        "diffusers",
        "FluxPipeline",
    )
    assert record["cached_steps"], record


def test_config_file_settings_reach_our_engine(run: Run) -> None:
    (record,) = run.records
    # SCM "medium" at 8 steps is 11110101 (cache-dit's table); TaylorSeer is the calibrator.
    assert record["config"] == "DBCache_F1B0_W2I1M0MC2_R0.5_SCM11110101_dynamic_N8_CFG0"
    assert record["calibrator"] == "TaylorSeerCalibratorConfig"


def _apply_patched(tiny_flux: str, config_path: str) -> None:
    """SGLang's (patched) ``DiffusersPipeline._apply_cache_dit`` on a real diffusers FluxPipeline,
    in-process: a worker start costs ~60 s, and a load error only makes that worker exit."""
    from diffusers import FluxPipeline
    from sglang.multimodal_gen.runtime.pipelines.diffusers_pipeline import DiffusersPipeline

    pipe = FluxPipeline.from_pretrained(tiny_flux, local_files_only=True)
    owner = DiffusersPipeline.__new__(DiffusersPipeline)
    try:
        owner._apply_cache_dit(pipe, SimpleNamespace(cache_dit_config=config_path))
    finally:
        assert session_of(pipe) is None  # refused before the pipeline was touched


def test_parallelism_section_is_refused_as_not_supported_yet(
    sglang_hooks: None, tiny_flux: str, tmp_path: Path
) -> None:
    with pytest.raises(NotSupportedYetError, match="not supported yet by dit_cache_backend"):
        _apply_patched(tiny_flux, _write(tmp_path, UNSUPPORTED))


def test_misspelt_key_is_refused_with_a_suggestion(
    sglang_hooks: None, tiny_flux: str, tmp_path: Path
) -> None:
    with pytest.raises(UnknownKeyError, match="did you mean 'max_warmup_steps'"):
        _apply_patched(tiny_flux, _write(tmp_path, MISSPELT))
