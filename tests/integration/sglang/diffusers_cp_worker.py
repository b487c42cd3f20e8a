"""One rank: SGLang's (patched) ``DiffusersPipeline._apply_cache_dit`` with the seeds' YAML under
torchrun, on a real diffusers FluxPipeline loaded from the tiny Flux dir.

``python -m torch.distributed.run --standalone --nproc_per_node=2 diffusers_cp_worker.py MODEL YAML OUT``
is the two calls SGLang's diffusers backend makes (``load_configs`` + ``enable_cache`` through the
hook SGLang applies), in a world of two ranks; each rank writes ``OUT/rank<N>.json``. The
single-process reference is computed before torch.distributed starts.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

torch.set_num_threads(1)


def generate(pipe) -> torch.Tensor:
    with torch.no_grad():
        return pipe("a cat", height=64, width=64, num_inference_steps=16, guidance_scale=3.5,
                    generator=torch.Generator().manual_seed(0), output_type="latent").images


def main(model: str, config: str, out: Path) -> None:
    from diffusers import FluxPipeline
    from sglang.multimodal_gen.runtime.pipelines.diffusers_pipeline import DiffusersPipeline
    from sglang.multimodal_gen.runtime.platforms.plugins import apply_plugin_hooks, load_plugins

    import dit_cache_backend as dcb

    load_plugins()
    apply_plugin_hooks()
    cache_only = {k: v for k, v in dcb.load_configs(config).items() if k in ("cache_config", "calibrator_config")}
    pipe = FluxPipeline.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    dcb.enable_cache(pipe, **cache_only)
    single = generate(pipe)
    single_diffs = dict(dcb.summary(pipe, logging=False)[0].residual_diffs)

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    pipe = FluxPipeline.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    owner = DiffusersPipeline.__new__(DiffusersPipeline)
    owner._apply_cache_dit(pipe, SimpleNamespace(cache_dit_config=config))
    output = generate(pipe)
    stats = dcb.summary(pipe, logging=False)[0]
    cp = pipe.transformer._parallel_config.context_parallel_config
    result = {
        "hook_active": hasattr(DiffusersPipeline._apply_cache_dit, "__wrapped__"),
        "enabled_flag": owner._cache_dit_enabled,
        "ulysses_degree": cp.ulysses_degree,
        "diffs": {str(k): v for k, v in stats.residual_diffs.items()},
        "single_diffs": {str(k): v for k, v in single_diffs.items()},
        "cached_steps": list(stats.cached_steps),
        "vs_single": (output - single).abs().max().item(),
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
