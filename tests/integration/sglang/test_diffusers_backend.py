"""``--backend diffusers --cache-dit-config FILE``: SGLang's diffusers backend on our engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dit_cache_backend.errors import ConfigError, UnknownKeyError
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
# The seeds' file: SGLang's documented parallel_config.yaml (Ulysses "auto", parallel_kwargs).
SEEDS_YAML = Path(__file__).parents[2] / "data" / "configs" / "sglang" / "legacy_parallel_config.yaml"
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


def test_seeds_parallel_file_outside_a_multi_rank_world_says_to_launch_with_torchrun(
    sglang_hooks: None, tiny_flux: str
) -> None:
    # The section is accepted and handed to diffusers' context parallelism, which needs a world of
    # several ranks; this process has none, so the load fails before the pipeline is touched.
    with pytest.raises(ConfigError, match="torchrun"):
        _apply_patched(tiny_flux, str(SEEDS_YAML))


def test_seeds_parallel_file_runs_context_parallel_under_torchrun(tiny_flux: str, tmp_path: Path) -> None:
    """SGLang's patched ``_apply_cache_dit`` in two torchrun ranks (gloo, 60 s timeout)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(Path(__file__).parent / "diffusers_cp_worker.py"), tiny_flux, str(SEEDS_YAML), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    files = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    assert all(f.exists() for f in files), done.stderr[-4000:]
    ranks = [json.loads(f.read_text()) for f in files]
    for rank in ranks:
        assert rank["hook_active"] and rank["enabled_flag"]
        assert rank["ulysses_degree"] == 2  # "auto" = the world of two ranks
        assert rank["vs_single"] < 1e-5
        gap = max(abs(rank["diffs"][k] - rank["single_diffs"][k]) for k in rank["single_diffs"])
        assert gap < 1e-6
    assert ranks[0]["diffs"] == ranks[1]["diffs"]
    assert ranks[0]["cached_steps"] == ranks[1]["cached_steps"]


def test_misspelt_key_is_refused_with_a_suggestion(
    sglang_hooks: None, tiny_flux: str, tmp_path: Path
) -> None:
    with pytest.raises(UnknownKeyError, match="did you mean 'max_warmup_steps'"):
        _apply_patched(tiny_flux, _write(tmp_path, MISSPELT))
