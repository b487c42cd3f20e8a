"""Run several requests through one real SGLang ``DiffGenerator`` (one model load, one worker).

Usage: ``python generate_requests.py MODEL_DIR BACKEND REQUESTS_JSON [CACHE_DIT_CONFIG]``, where
REQUESTS_JSON is a list of per-request sampling kwargs (``num_inference_steps``,
``enable_cache_dit``, ``cache_dit_params``...). Prints ``REQUEST <i> OK`` or ``REQUEST <i> FAILED``
per request, so the tests can tell a failed request from a crash. Each ``sglang generate`` costs
~30 s of start-up, so the tests batch their requests here instead of calling the CLI per request.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional

BASE_REQUEST: Dict[str, Any] = {
    "prompt": "a cat",
    "height": 32,
    "width": 32,
    "seed": 0,
    "save_output": False,
}


def main(model_dir: str, backend: str, requests: List[Dict[str, Any]], config: Optional[str]) -> int:
    from sglang.multimodal_gen.runtime.entrypoints.diffusion_generator import DiffGenerator

    server_kwargs: Dict[str, Any] = {"model_path": model_dir, "backend": backend, "num_gpus": 1}
    if backend == "sglang":
        server_kwargs["model_id"] = "FLUX.1-dev"  # the native Flux pipeline for a local dir
    if config is not None:
        server_kwargs["cache_dit_config"] = config
    generator = DiffGenerator.from_pretrained(**server_kwargs)
    try:
        for index, request in enumerate(requests):
            result = generator.generate(sampling_params_kwargs={**BASE_REQUEST, **request})
            print(f"REQUEST {index} {'OK' if result is not None else 'FAILED'}", flush=True)
    finally:
        generator.shutdown()
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: generate_requests.py MODEL_DIR BACKEND REQUESTS_JSON [CACHE_DIT_CONFIG]")
    sys.exit(
        main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] if len(sys.argv) == 5 else None)
    )
