"""Helpers shared by the vLLM-Omni integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any, Dict, List

WORKER_EXTENSION = "dit_cache_backend.adapters.vllm_omni.DitCacheWorkerExtension"
SIZE = 32
PROMPT = "a cat"


def make_omni(model: str, **kwargs: Any) -> Any:
    from vllm_omni import Omni

    return Omni(model=model, enforce_eager=True, dtype="float32", worker_extension_cls=WORKER_EXTENSION, **kwargs)


def generate(omni: Any, steps: int, seed: int = 0) -> Any:
    """One 32x32 image as a PIL image."""
    from vllm_omni.inputs.data import OmniDiffusionSamplingParams

    params = OmniDiffusionSamplingParams(
        num_inference_steps=steps, height=SIZE, width=SIZE, guidance_scale=0.0, seed=seed
    )
    outputs = omni.generate(PROMPT, params)
    images = outputs[0].images
    assert len(images) == 1
    return images[0]


def rpc(omni: Any, method: str) -> Any:
    """Call a DitCacheWorkerExtension method on the diffusion stage's (single) worker."""
    per_stage = omni.engine.collective_rpc(method=method, stage_ids=[0])
    (per_worker,) = per_stage  # one stage: the diffusion stage
    (result,) = per_worker  # one worker (the CPU platform has one device)
    return result


def requests_seen(omni: Any) -> List[Dict[str, Any]]:
    return rpc(omni, "dit_cache_requests")
