"""``set_compile_configs``: cache-dit's global torch.compile settings, for code that calls it.

SGLang's diffusers backend calls ``cache_dit.set_compile_configs()`` when the function exists and
then compiles the transformer's repeated blocks. The settings are process-wide dynamo/inductor
options; compiling itself stays with diffusers (``transformer.compile_repeated_blocks``) or
``torch.compile`` (see docs/scaling.md).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch.distributed as dist

logger = logging.getLogger(__name__)


def set_compile_configs(
    descent_tuning: bool = True,
    cuda_graphs: bool = False,
    force_disable_compile_caches: bool = False,
    fx_graph_cache: bool = True,
    fx_graph_remote_cache: bool = False,
    autotune_local_cache: bool = False,
    use_fast_math: bool = False,
    compute_comm_overlap: bool = True,
    ulysses_anything: bool = False,
    capture_scalar_outputs: Optional[bool] = None,
    capture_dynamic_output_shape_ops: Optional[bool] = None,
    cutedsl_enable_autotuning: Optional[bool] = None,
    **kwargs: Any,
) -> None:
    """cache-dit's parameters and defaults; sets dynamo's and inductor's process-wide options.

    Every request size (resolution, batch) is a new graph, hence the higher recompile limits;
    cached steps change no shapes. ``descent_tuning`` turns on inductor's coordinate-descent
    tuning without epilogue fusion, as cache-dit does; ``use_fast_math``,
    ``cutedsl_enable_autotuning`` and other keywords (GPU kernel tuning) have no effect here.
    """
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    dynamo.recompile_limit = 1024
    dynamo.accumulated_recompile_limit = 8192
    if capture_scalar_outputs is None and ulysses_anything:
        capture_scalar_outputs = True  # uneven Ulysses reads shard sizes with .item()
    if capture_scalar_outputs is not None:
        dynamo.capture_scalar_outputs = capture_scalar_outputs
    if capture_dynamic_output_shape_ops is not None:
        dynamo.capture_dynamic_output_shape_ops = capture_dynamic_output_shape_ops
    caches = not force_disable_compile_caches
    inductor.force_disable_caches = force_disable_compile_caches
    inductor.fx_graph_cache = fx_graph_cache and caches
    inductor.fx_graph_remote_cache = fx_graph_remote_cache and caches
    inductor.autotune_local_cache = autotune_local_cache and caches
    if dist.is_available() and dist.is_initialized():
        inductor.reorder_for_compute_comm_overlap = compute_comm_overlap
    inductor.coordinate_descent_tuning = descent_tuning
    if descent_tuning:
        inductor.epilogue_fusion = False
    inductor.triton.cudagraphs = cuda_graphs
    ignored = sorted(kwargs) + [
        name
        for name, value in (("use_fast_math", use_fast_math), ("cutedsl", cutedsl_enable_autotuning))
        if value
    ]
    if ignored:
        logger.debug("set_compile_configs: %s have no effect in dit_cache_backend", ignored)
