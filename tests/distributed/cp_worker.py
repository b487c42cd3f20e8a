"""One rank of the context-parallel tests (tests/test_context_parallel.py launches it with torchrun).

``python -m torch.distributed.run --standalone --nproc_per_node=2 cp_worker.py CASE OUT_DIR``;
every rank writes ``OUT_DIR/rank<N>.json`` before the process group is destroyed, so the test reads
results even if a rank aborts at exit. The single-process references are computed before
torch.distributed starts. Cases:

* ``ulysses``: the seeds' YAML verbatim (SGLang's parallel_config.yaml: Ulysses ``auto``,
  ``native`` attention, ``extra_parallel_modules``) through ``load_configs`` + ``enable_cache``;
* ``ring``: the same cache section with ``ring_size: auto`` on ``_native_flash`` attention, whose
  CP forward op diffusers implements only with the CUDA kernel: a test-only shim swaps in torch's
  CPU flash kernel, which also returns the log-sum-exp ring attention needs;
* ``no_reduce``: ``ulysses`` with the cache's cross-rank reduction switched off (negative control);
* ``uneven``: the reduction itself on shards of different sizes.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import dit_cache_backend as dcb
from dit_cache_backend.tiny_model import tiny_flux_inputs, tiny_flux_pipeline

torch.set_num_threads(1)
SEEDS_YAML = Path(__file__).parents[1] / "data" / "configs" / "sglang" / "legacy_parallel_config.yaml"
STEPS = 28
CLASS_ID = 3


def run(pipe) -> torch.Tensor:
    with torch.no_grad():
        return pipe(**tiny_flux_inputs(CLASS_ID, num_inference_steps=STEPS)).images


def cached_run(pipe, configs) -> dict:
    dcb.enable_cache(pipe, **configs)
    out = run(pipe)
    stats = dcb.summary(pipe, logging=False)[0]
    result = {
        "out": out,
        "decisions": [[d.step, d.branch, d.cached] for d in stats.decisions],
        "diffs": {str(k): v for k, v in stats.residual_diffs.items()},
        "cached_steps": list(stats.cached_steps),
    }
    dcb.disable_cache(pipe)
    return result


def with_threshold(configs: dict, threshold: float) -> dict:
    cache = configs["cache_config"].copy()
    cache.residual_diff_threshold = threshold
    return {**configs, "cache_config": cache}


def parallel_configs(case: str) -> dict:
    if case == "ring":
        import yaml

        raw = yaml.safe_load(SEEDS_YAML.read_text())
        raw["parallelism_config"] = {"ring_size": "auto", "attention_backend": "_native_flash"}
        return dcb.load_configs(raw)
    return dcb.load_configs(SEEDS_YAML)


def cpu_ring_shim() -> None:
    """Test-only: diffusers' ``_native_flash`` CP forward op calls the CUDA flash kernel."""
    import diffusers.models.attention_dispatch as dispatch

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                   scale=None, enable_gqa=False, return_lse=False, _save_ctx=True,
                   _parallel_config=None, **_):
        q, k, v = (x.transpose(1, 2).contiguous() for x in (query, key, value))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )[:2]
        out = out.transpose(1, 2).contiguous()
        return (out, lse.transpose(1, 2).contiguous()) if return_lse else out

    dispatch._native_flash_attention_forward_op = forward_op


def pipeline_case(case: str) -> dict:
    if case == "ring":
        cpu_ring_shim()
    if case == "no_reduce":
        from dit_cache_backend import context

        context._is_distributed = lambda process_group: False
    configs = parallel_configs(case)
    cache_only = {"cache_config": configs["cache_config"], "calibrator_config": configs["calibrator_config"]}
    pipe = tiny_flux_pipeline()
    single_plain = run(pipe)
    single = cached_run(pipe, cache_only)

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    pipe = tiny_flux_pipeline()
    cached = cached_run(pipe, configs)  # enables the cache, then context parallelism
    cp = pipe.transformer._parallel_config.context_parallel_config
    cp_plain = run(pipe)  # disable_cache left parallelism on
    always = cached_run(pipe, with_threshold(configs, 0.0))  # parallelism found already applied
    world = dist.get_world_size()
    return {
        "ring_degree": cp.ring_degree,
        "ulysses_degree": cp.ulysses_degree,
        "world": world,
        "decisions": cached["decisions"],
        "single_decisions": single["decisions"],
        "diffs": cached["diffs"],
        "single_diffs": single["diffs"],
        "cached_steps": cached["cached_steps"],
        "plain_vs_single": (cp_plain - single_plain).abs().max().item(),
        "cached_vs_single": (cached["out"] - single["out"]).abs().max().item(),
        "threshold0_equal_uncached": torch.equal(always["out"], cp_plain),
    }


def uneven_case() -> dict:
    """Rank r holds 3 + 2r elements of one tensor: the reduced ratio must be the global one."""
    from dit_cache_backend.context import relative_l1

    generator = torch.Generator().manual_seed(0)
    previous, current = torch.randn(2, 8, generator=generator)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    start, stop = (0, 3) if rank == 0 else (3, 8)
    reduced = relative_l1(previous[start:stop], current[start:stop], dist.group.WORLD)
    single = ((previous - current).abs().mean() / previous.abs().mean()).item()
    # What reducing the shards' means (instead of sums) would give: a weighted, different ratio.
    means = torch.stack([(previous - current)[start:stop].abs().mean(), previous[start:stop].abs().mean()])
    dist.all_reduce(means)
    return {"reduced": reduced, "single": single, "mean_of_shards": (means[0] / means[1]).item()}


def main() -> None:
    case, out_dir = sys.argv[1], Path(sys.argv[2])
    result = uneven_case() if case == "uneven" else pipeline_case(case)
    rank = dist.get_rank()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
