"""``set_compile_configs``: cache-dit's global torch.compile settings, for code that calls it.

SGLang's diffusers backend calls ``cache_dit.set_compile_configs()`` when the function exists and
then compiles the transformer's repeated blocks. The settings are process-wide dynamo/inductor
options; compiling itself stays with diffusers (``transformer.compile_repeated_blocks``) or
``torch.compile`` (see docs/scaling.md).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def set_compile_configs(
    descent_tuning: bool = True,
    cuda_graphs: bool = False,
    force_disable_compile_caches: bool = False,
    fx_graph_cache: bool = True,
    **kwargs: Any,
) -> None:
    """Raise dynamo's recompile limits and set inductor's tuning and cache options.

    Same names and defaults as cache-dit 1.5.3. Cached steps change no tensor shapes, but every
    request size (resolution, batch) is a new graph, hence the higher limits. Other cache-dit
    keyword arguments (GPU kernel and communication tuning) are accepted and have no effect here.
    """
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    dynamo.recompile_limit = 1024
    dynamo.accumulated_recompile_limit = 8192
    inductor.fx_graph_cache = fx_graph_cache and not force_disable_compile_caches
    inductor.force_disable_caches = force_disable_compile_caches
    inductor.coordinate_descent_tuning = descent_tuning
    inductor.triton.cudagraphs = cuda_graphs
    if kwargs:
        logger.debug("set_compile_configs: %s have no effect in dit_cache_backend", sorted(kwargs))
