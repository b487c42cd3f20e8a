"""``dit-cache bench``: speed, memory and fidelity of cache configs against the uncached baseline.

For one workload (the trained tiny model, a random-weight "medium" FLUX-like transformer for CPU
speed, a FLUX.1-dev-sized transformer on CUDA, or a local diffusers pipeline directory) and one or
more cache configs, every entry runs with the same seeds and inputs:

* the uncached baseline;
* each config with this engine (``ours``);
* peers, when installed: cache-dit 1.5.3 with the same config, diffusers' FirstBlockCache and
  TaylorSeerCache (lite) tuned to the config's computed steps, and the same model run with fewer
  steps at that compute (the honest floor).

Protocol: one probe run per entry (untimed: records the computed steps, the output used for the
fidelity metrics and the memory the cache holds), ``--warmup`` untimed rounds, then ``--repeats``
timed rounds. Every round runs every entry once, in a rotated order, so load on a shared machine
hits all entries alike; enabling/disabling a cache happens outside the timed region. The speedup is
``median(baseline) / median(entry)``; the ideal speedup is ``total / computed`` steps and the
efficiency their ratio. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .errors import DitCacheError

logger = logging.getLogger(__name__)

SCHEMA = "dit-cache-bench/1"
DEFAULT_CONFIGS = ["threshold-0", "scm-fast", "scm-fast-ts1", "balanced"]
DEFAULT_PEERS = ["cache-dit", "fbc", "taylorseer", "fewer-steps"]
PEER_NAMES = tuple(DEFAULT_PEERS)
CACHE_DIT_VERSION = "1.5.3"

# A FLUX-like transformer sized so one step takes tens of ms on 2 CPU threads (docs/benchmarks.md).
# FLUX.1's 1 : 2 ratio of double to single blocks and its 64-dim heads, scaled down in width.
MEDIUM_CONFIG: Dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 6,
    "num_single_layers": 12,
    "attention_head_dim": 64,
    "num_attention_heads": 2,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 64,
    "axes_dims_rope": [16, 24, 24],
    "guidance_embeds": False,
}
MEDIUM_TOKENS = (256, 32)  # image tokens (16 x 16 grid), text tokens

# FLUX.1-dev's transformer config (random weights): 19 double + 38 single blocks, 24 x 128 heads.
FLUX_DEV_CONFIG: Dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
}
FLUX_DEV_TOKENS = (4096, 512)  # 1024 x 1024 image: 64 x 64 packed tokens; T5 length 512

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


# -- configs ------------------------------------------------------------------------------------


def _threshold_config(threshold: float) -> Dict[str, Any]:
    # The CLI defaults of cache-dit (F1B0 W4 MC3), plain reuse: the threshold is the only knob.
    return {
        "cache_config": {
            "Fn_compute_blocks": 1,
            "Bn_compute_blocks": 0,
            "max_warmup_steps": 4,
            "warmup_interval": 1,
            "max_cached_steps": -1,
            "max_continuous_cached_steps": 3,
            "residual_diff_threshold": threshold,
        }
    }


def _scm_config(policy: str, steps: int, order: int) -> Dict[str, Any]:
    # A static SCM mask fixes the schedule; F1B0, no warm-up (the mask keeps the first steps).
    section: Dict[str, Any] = {
        "Fn_compute_blocks": 1,
        "Bn_compute_blocks": 0,
        "max_warmup_steps": 0,
        "residual_diff_threshold": 0.12,
        "num_inference_steps": steps,
        "steps_computation_mask": policy,
        "steps_computation_policy": "static",
    }
    if order:
        section.update(enable_taylorseer=True, taylorseer_order=order)
    return {"cache_config": section}


BUILTIN_HELP = (
    "built-in configs: threshold-<R> (F1B0 W4 MC3, plain reuse, e.g. threshold-0), "
    "scm-<slow|medium|fast|ultra>[-ts<order>] (static SCM mask, F1B0 W0, optional TaylorSeer); "
    "or a preset name (quality, balanced, fast, ultra, few-step) or a YAML/JSON file"
)


def resolve_config(spec: str, steps: int) -> Dict[str, Any]:
    """A config spec → a dict in cache-dit's YAML schema (loadable by both engines)."""
    match = re.fullmatch(r"threshold-([0-9.]+)", spec)
    if match:
        return _threshold_config(float(match.group(1)))
    match = re.fullmatch(r"scm-(slow|medium|fast|ultra)(?:-ts([12]))?", spec)
    if match:
        return _scm_config(match.group(1), steps, int(match.group(2) or 0))
    path = Path(spec)
    if not (path.suffix in (".yaml", ".yml", ".json") or path.exists()):
        from .presets import preset_path

        path = preset_path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    section = data.get("cache_config")
    if isinstance(section, dict) and isinstance(section.get("steps_computation_mask"), str):
        # A mask policy is expanded for the run's step count (cache-dit does the same).
        section.setdefault("num_inference_steps", steps)
    return data


def _cache_options(module: Any, config: Dict[str, Any]) -> Dict[str, Any]:
    import copy

    options = module.load_configs(copy.deepcopy(config))
    return {k: v for k, v in options.items() if v is not None}


# -- workloads ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    """What is benchmarked: ``generate(steps)`` produces one output from fixed inputs."""

    name: str
    description: str
    total_steps: int
    transformer: torch.nn.Module
    cache_target: Any  # what enable_cache receives (pipeline or transformer)
    generate: Callable[[int], torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    to_images: Callable[[torch.Tensor], torch.Tensor]  # output → (N, H, W, C) for SSIM
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)


def _flow_sigmas(steps: int, shift: float = 3.0) -> List[float]:
    """FLUX-style shifted flow-matching sigmas from 1 towards 0, then 0."""
    base = [1.0 - i / steps for i in range(steps)]
    return [shift * s / (1 + (shift - 1) * s) for s in base] + [0.0]


def _loop_workload(
    name: str,
    description: str,
    config: Dict[str, Any],
    tokens: Tuple[int, int],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
) -> Workload:
    """A transformer-only Euler loop over fixed random inputs (random weights, seed 0)."""
    from diffusers import FluxTransformer2DModel

    image_tokens, text_tokens = tokens
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
        try:
            with torch.device(device):
                transformer = FluxTransformer2DModel(**config)
        finally:
            torch.set_default_dtype(previous)
    transformer = transformer.eval()  # built directly on ``device`` in ``dtype``
    generator = torch.Generator("cpu").manual_seed(args.seed)
    batch, side = args.batch, int(round(image_tokens**0.5))
    noise = torch.randn(batch, image_tokens, config["in_channels"], generator=generator)
    text = torch.randn(batch, text_tokens, config["joint_attention_dim"], generator=generator)
    pooled = torch.randn(batch, config["pooled_projection_dim"], generator=generator)
    img_ids = torch.zeros(image_tokens, 3)
    img_ids[:, 1] = torch.arange(image_tokens) // side
    img_ids[:, 2] = torch.arange(image_tokens) % side
    fixed = {
        "encoder_hidden_states": text.to(device, dtype),
        "pooled_projections": pooled.to(device, dtype),
        "img_ids": img_ids.to(device, dtype),
        "txt_ids": torch.zeros(text_tokens, 3, device=device, dtype=dtype),
        "return_dict": False,
    }
    if config.get("guidance_embeds"):
        fixed["guidance"] = torch.full((batch,), 3.5, device=device, dtype=torch.float32)
    noise = noise.to(device, dtype)

    def generate(steps: int) -> torch.Tensor:
        sigmas = _flow_sigmas(steps)
        x = noise.clone()
        with torch.no_grad():
            for i in range(steps):
                timestep = torch.full((batch,), sigmas[i], device=device, dtype=dtype)
                # As FluxPipeline does: diffusers' caches need the context, ours reads the branch.
                with transformer.cache_context("cond"):
                    v = transformer(hidden_states=x, timestep=timestep, **fixed)[0]
                x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x

    def to_images(out: torch.Tensor) -> torch.Tensor:
        return out.float().reshape(out.shape[0], side, side, out.shape[-1])

    params = sum(p.numel() for p in transformer.parameters())
    info = {
        "transformer_config": config,
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
        "batch": batch,
        "parameters": params,
        "weights": "random (seed 0)",
    }
    return Workload(
        name,
        description,
        args.steps,
        transformer,
        transformer,
        generate,
        device,
        dtype,
        to_images,
        info,
    )


def _tiny_workload(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Workload:
    from .cli import _latents_to_images
    from .tiny_model import (
        NUM_CLASSES,
        tiny_flux_class_embeddings,
        tiny_flux_inputs,
        tiny_flux_pipeline,
    )

    pipe = tiny_flux_pipeline()
    if device.type != "cpu" or dtype != torch.float32:  # it is built as fp32 on the CPU
        pipe = pipe.to(device=device, dtype=dtype)
    batch = min(args.batch, NUM_CLASSES)
    prompt_embeds, pooled = tiny_flux_class_embeddings()

    def generate(steps: int) -> torch.Tensor:
        inputs = tiny_flux_inputs(0, batch_size=batch, seed=args.seed, num_inference_steps=steps)
        inputs["prompt_embeds"] = prompt_embeds[:batch].to(device, dtype)
        inputs["pooled_prompt_embeds"] = pooled[:batch].to(device, dtype)
        with torch.no_grad():
            return pipe(**inputs).images

    def to_images(out: torch.Tensor) -> torch.Tensor:
        return _latents_to_images(out.float().cpu())[..., None]

    info = {
        "pipeline": "FluxPipeline (tiny trained, docs/tiny_model.md)",
        "batch": batch,
        "classes": list(range(batch)),
        "output": "packed latents (B, 64, 4)",
        "parameters": sum(p.numel() for p in pipe.transformer.parameters()),
        "weights": "trained",
    }
    return Workload(
        "tiny",
        "trained tiny Flux, all classes in one batched pipeline call",
        args.steps,
        pipe.transformer,
        pipe,
        generate,
        device,
        dtype,
        to_images,
        info,
    )


def _local_workload(
    path: Path, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> Workload:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise DitCacheError(f"{path}: the pipeline has no `transformer` component")
    extra: Dict[str, Any] = {}
    if args.height:
        extra["height"] = args.height
    if args.width:
        extra["width"] = args.width

    def generate(steps: int) -> torch.Tensor:
        with torch.no_grad():
            out = pipe(
                prompt=args.prompt,
                num_inference_steps=steps,
                output_type="np",
                generator=torch.Generator("cpu").manual_seed(args.seed),
                **extra,
            ).images
        return torch.as_tensor(out)

    info = {
        "pipeline": type(pipe).__name__,
        "path": str(path),
        "prompt": args.prompt,
        "output": "decoded images in [0, 1]",
        "weights": "from the directory",
    }
    return Workload(
        str(path),
        f"{type(pipe).__name__} from {path}",
        args.steps,
        transformer,
        pipe,
        generate,
        device,
        dtype,
        lambda out: out.float(),
        info,
    )


def _check_flux_dev_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise DitCacheError(
            "--model flux-dev needs CUDA (a FLUX.1-dev-sized transformer, 12B parameters, bf16); "
            f"got --device {device}. Use --device cuda on a GPU machine, --dry-run to check the "
            "arguments, or --model medium for CPU speed measurements"
        )
    if not torch.cuda.is_available():
        raise DitCacheError(
            "--model flux-dev needs CUDA, but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); use --dry-run to check the arguments, or --model medium"
        )


def _defaults(args: argparse.Namespace) -> Tuple[torch.device, torch.dtype]:
    gpu = args.model == "flux-dev"
    device = torch.device(args.device or ("cuda" if gpu else "cpu"))
    dtype_name = args.dtype or ("bfloat16" if gpu else "float32")
    if dtype_name not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype_name!r}; choose from {', '.join(DTYPES)}")
    return device, DTYPES[dtype_name]


def build_workload(args: argparse.Namespace) -> Workload:
    device, dtype = _defaults(args)
    if args.model == "tiny":
        return _tiny_workload(args, device, dtype)
    if args.model == "medium":
        return _loop_workload(
            "medium",
            "random-weight FLUX-like transformer, Euler loop",
            MEDIUM_CONFIG,
            MEDIUM_TOKENS,
            args,
            device,
            dtype,
        )
    if args.model == "flux-dev":
        _check_flux_dev_device(device)
        return _loop_workload(
            "flux-dev",
            "FLUX.1-dev-sized transformer, random weights, Euler loop",
            FLUX_DEV_CONFIG,
            FLUX_DEV_TOKENS,
            args,
            device,
            dtype,
        )
    path = Path(args.model)
    if path.is_dir():
        return _local_workload(path, args, device, dtype)
    raise ValueError(
        f"--model must be tiny, medium, flux-dev or a local pipeline directory; got {args.model!r}"
    )


# -- measurement helpers ------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _storages_bytes(tensors: List[torch.Tensor]) -> int:
    seen: Dict[Tuple[str, int], int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def context_tensors(obj: Any) -> List[torch.Tensor]:
    """Every tensor the cache contexts of ``obj`` (pipeline or transformer) hold right now."""
    from .session import session_of

    session = session_of(obj)
    if session is None:
        return []
    found = [t for context in session.contexts.values() for t in context.tensors()]
    return [t for t in found if isinstance(t, torch.Tensor)]


class _CallCounter:
    """Counts forward calls of a leaf module inside the last cached block (i.e. computed steps)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        lists = [m for n, m in transformer.named_children() if isinstance(m, torch.nn.ModuleList)]
        if not lists or len(lists[-1]) == 0:
            raise DitCacheError("cannot find the transformer's block lists to count computed steps")
        last_block = lists[-1][len(lists[-1]) - 1]
        leaves = [
            m
            for m in last_block.modules()
            if not list(m.children()) and list(m.parameters(recurse=False))
        ]
        self.count = 0
        self._handle = leaves[0].register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def remove(self) -> None:
        self._handle.remove()


# -- entries ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Entry:
    """One benchmarked variant: install (untimed), generate (timed), uninstall (untimed)."""

    name: str
    engine: str  # baseline | ours | cache-dit | fbc | taylorseer | fewer-steps
    config: Optional[str] = None
    steps: Optional[int] = None  # None: the workload's total
    install: Callable[[], None] = lambda: None
    uninstall: Callable[[], Optional[int]] = lambda: None  # returns computed steps if it knows
    matched_to: Optional[str] = None
    setting: Optional[str] = None
    tag: Optional[str] = None
    workload: Optional[Workload] = None  # its own model instance (cache-dit patches the model)
    times: List[float] = dataclasses.field(default_factory=list)
    computed: Optional[int] = None
    output: Optional[torch.Tensor] = None
    cache_peak_bytes: Optional[int] = None
    cuda_peak_bytes: Optional[int] = None


def _ours_entry(workload: Workload, spec: str, config: Dict[str, Any]) -> Entry:
    from . import disable_cache, enable_cache, summary

    options = _cache_options(importlib.import_module("dit_cache_backend"), config)
    target = workload.cache_target

    def uninstall() -> Optional[int]:
        stats = summary(target, logging=False)
        disable_cache(target)
        return workload.total_steps - len(stats[0].cached_steps) if stats else None

    cache_config = options.get("cache_config")
    calibrator = options.get("calibrator_config")
    tag = (
        cache_config.strify() + "_" + (calibrator.strify() if calibrator else "T0O0")
        if cache_config is not None
        else spec
    )
    return Entry(
        spec,
        "ours",
        spec,
        install=lambda: enable_cache(target, **options),
        uninstall=uninstall,
        tag=tag,
    )


def _cache_dit_module() -> Tuple[Optional[Any], str]:
    try:
        module = importlib.import_module("cache_dit")
    except Exception as error:  # noqa: BLE001 - any import failure means "not available"
        return None, f"cache-dit not importable ({type(error).__name__}: {error})"
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("cache_dit")
        except Exception:  # noqa: BLE001
            version = "unknown"
    if version != CACHE_DIT_VERSION:
        return (
            None,
            f"cache-dit {version} installed, the benchmark compares with {CACHE_DIT_VERSION}",
        )
    try:  # cache-dit logs every enable/disable (INFO and WARNING) on its own stdout handler
        handler = getattr(importlib.import_module("cache_dit.logger"), "_default_handler", None)
        if isinstance(handler, logging.Handler):
            handler.setLevel(logging.ERROR)
    except ImportError:
        pass
    return module, ""


def _cache_dit_entry(module: Any, workload: Workload, spec: str, config: Dict[str, Any]) -> Entry:
    options = _cache_options(module, config)
    target = workload.cache_target

    def uninstall() -> Optional[int]:
        stats = module.summary(target)
        module.disable_cache(target)
        return workload.total_steps - len(stats[0].cached_steps) if stats else None

    return Entry(
        f"cache-dit {spec}",
        "cache-dit",
        spec,
        install=lambda: module.enable_cache(target, **options),
        uninstall=uninstall,
        workload=workload,
    )


def _diffusers_entry(
    workload: Workload, engine: str, make_config: Callable[[], Any], name: str, setting: str
) -> Entry:
    transformer = workload.transformer

    def install() -> None:
        transformer.enable_cache(make_config())

    def uninstall() -> Optional[int]:
        transformer.disable_cache()
        return None

    return Entry(name, engine, install=install, uninstall=uninstall, setting=setting)


def taylorseer_computed_steps(total: int, interval: int, before: int) -> int:
    """Full computes of diffusers' TaylorSeerCache over ``total`` steps.

    Mirrors its ``_measure_should_compute`` (diffusers 0.42.1).
    """
    return sum(1 for step in range(total) if step < before or (step - before - 1) % interval == 0)


def taylorseer_match(total: int, target: int) -> Tuple[int, int, int]:
    """(interval, disable_cache_before_step, computed) closest to ``target`` computed steps.

    Ties prefer diffusers' default warm-up of 3 steps, then the smaller interval.
    """
    best = None
    for before in range(0, total + 1):
        for interval in range(1, total + 1):
            computed = taylorseer_computed_steps(total, interval, before)
            key = (abs(computed - target), abs(before - 3), interval)
            if best is None or key < best[0]:
                best = (key, interval, before, computed)
    assert best is not None
    return best[1], best[2], best[3]


def _count_computed(
    workload: Workload, install: Callable[[], None], uninstall: Callable[[], Any]
) -> int:
    counter = _CallCounter(workload.transformer)
    install()
    try:
        workload.generate(workload.total_steps)
    finally:
        uninstall()
        counter.remove()
    return counter.count


def fbc_match(workload: Workload, target: int, iterations: int = 10) -> Tuple[float, int]:
    """A FirstBlockCache threshold whose computed steps come closest to ``target`` (bisection).

    Computed steps fall as the threshold rises; the search is on a log scale in [1e-4, 2], and
    the closest threshold seen wins (ties: the lower threshold, i.e. more compute).
    """
    from diffusers import FirstBlockCacheConfig

    transformer = workload.transformer
    seen: Dict[float, int] = {}

    def computed_at(threshold: float) -> int:
        if threshold not in seen:
            seen[threshold] = _count_computed(
                workload,
                lambda: transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold)),
                transformer.disable_cache,
            )
        return seen[threshold]

    low, high = math.log(1e-4), math.log(2.0)
    for _ in range(iterations):
        mid = (low + high) / 2
        computed = computed_at(math.exp(mid))
        if computed == target:
            break
        if computed > target:
            low = mid
        else:
            high = mid
    threshold = min(seen, key=lambda t: (abs(seen[t] - target), t))
    return threshold, seen[threshold]


# -- the run ------------------------------------------------------------------------------------


def _probe(workload: Workload, entry: Entry, cuda_base: int) -> None:
    """Untimed run: output, computed steps and the memory the cache holds at its peak."""
    workload = entry.workload or workload
    transformer = workload.transformer
    peak = {"bytes": 0}
    counter = _CallCounter(transformer)
    target = workload.cache_target

    def sample(*_: Any) -> None:
        peak["bytes"] = max(peak["bytes"], _storages_bytes(context_tensors(target)))

    handle = transformer.register_forward_hook(sample) if entry.engine == "ours" else None
    before = 0
    if workload.device.type == "cuda":
        _sync(workload.device)
        torch.cuda.reset_peak_memory_stats(workload.device)
        # Relative to what is allocated now (weights of both model instances, inputs), so the
        # figure is the run's growth; the baseline's growth (cuda_base) is subtracted.
        before = torch.cuda.memory_allocated(workload.device)
    entry.install()
    try:
        entry.output = workload.generate(entry.steps or workload.total_steps)
        _sync(workload.device)
        if workload.device.type == "cuda":
            cuda_peak = torch.cuda.max_memory_allocated(workload.device)
            entry.cuda_peak_bytes = cuda_peak - before - cuda_base
    finally:
        reported = entry.uninstall()
        counter.remove()
        if handle is not None:
            handle.remove()
    if entry.engine == "ours":
        entry.cache_peak_bytes = peak["bytes"]
    if entry.engine in ("baseline", "fewer-steps"):
        entry.computed = entry.steps or workload.total_steps
    elif reported is not None:
        entry.computed = reported
    else:
        entry.computed = counter.count


def _timed(workload: Workload, entry: Entry) -> float:
    workload = entry.workload or workload
    entry.install()
    try:
        _sync(workload.device)
        start = time.perf_counter()
        workload.generate(entry.steps or workload.total_steps)
        _sync(workload.device)
        return time.perf_counter() - start
    finally:
        reported = entry.uninstall()
        if reported is not None and entry.computed is not None and reported != entry.computed:
            logger.warning(
                "%s: computed %d steps in a timed run, %d in the probe",
                entry.name,
                reported,
                entry.computed,
            )


def _metrics(workload: Workload, reference: torch.Tensor, output: torch.Tensor) -> Dict[str, Any]:
    from .metrics import max_abs_error, psnr, ssim

    ref, out = reference.float().cpu(), output.float().cpu()
    data_range = (ref.max() - ref.min()).item() or 1.0
    if workload.info.get("output", "").startswith("decoded images"):
        data_range = 1.0
    finite = bool(torch.isfinite(out).all())
    value = psnr(ref, out, data_range) if finite else float("nan")
    return {
        "psnr_db": value,
        "ssim": ssim(workload.to_images(ref), workload.to_images(out), data_range)
        if finite
        else None,
        "max_abs_error": max_abs_error(ref, out) if finite else None,
        "data_range": data_range,
        "finite_output": finite,
    }


def plan_entries(workload: Workload, specs: List[str]) -> List[Entry]:
    """Baseline and ``ours`` entries; peers are added after the probe (they match its compute)."""
    entries = [Entry("uncached", "baseline")]
    for spec in specs:
        config = resolve_config(spec, workload.total_steps)
        entries.append(_ours_entry(workload, spec, config))
        entries[-1].setting = json.dumps(
            config["cache_config"] if "cache_config" in config else config, sort_keys=True
        )
    return entries


def add_peers(
    workload: Workload,
    specs: List[str],
    ours: List[Entry],
    peers: List[str],
    notes: List[Dict[str, str]],
    progress: Any,
    rebuild: Callable[[], Workload],
) -> List[Entry]:
    """cache-dit with each config; FBC / TaylorSeer / fewer steps matched to each config's compute.

    cache-dit runs on a second, identical instance of the model: its enable_cache patches the
    transformer's forward for good (disable_cache leaves the patch), which would change what the
    other entries run.
    """
    added: List[Entry] = []
    total = workload.total_steps
    if "cache-dit" in peers:
        module, why = _cache_dit_module()
        if module is None:
            notes.append({"peer": "cache-dit", "reason": why})
        else:
            twin = rebuild()
            for spec, entry in zip(specs, ours):
                try:
                    added.append(_cache_dit_entry(module, twin, spec, resolve_config(spec, total)))
                    added[-1].matched_to = spec
                except Exception as error:  # noqa: BLE001 - a config cache-dit rejects is reported
                    notes.append(
                        {"peer": f"cache-dit {spec}", "reason": f"{type(error).__name__}: {error}"}
                    )
    targets = sorted({e.computed for e in ours if e.computed is not None and e.computed < total})
    has_mixin = callable(getattr(workload.transformer, "enable_cache", None))
    for peer in ("fbc", "taylorseer"):
        if peer not in peers:
            continue
        if not has_mixin:
            notes.append(
                {
                    "peer": peer,
                    "reason": f"{type(workload.transformer).__name__} has no "
                    "diffusers CacheMixin.enable_cache",
                }
            )
            continue
        try:
            from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig  # noqa: F401
        except ImportError as error:
            notes.append({"peer": peer, "reason": f"diffusers has no {peer} config ({error})"})
            continue
        for target in targets:
            matched = ", ".join(e.name for e in ours if e.computed == target)
            if peer == "fbc":
                progress.set_postfix_str(f"matching FBC to {target}/{total}")
                threshold, _ = fbc_match(workload, target)
                added.append(
                    _diffusers_entry(
                        workload,
                        "fbc",
                        lambda t=threshold: FirstBlockCacheConfig(threshold=t),
                        f"diffusers FBC @{target}",
                        f"threshold={threshold:.4g}",
                    )
                )
            else:
                interval, before, _ = taylorseer_match(total, target)
                added.append(
                    _diffusers_entry(
                        workload,
                        "taylorseer",
                        lambda i=interval, b=before: TaylorSeerCacheConfig(
                            cache_interval=i,
                            disable_cache_before_step=b,
                            max_order=1,
                            taylor_factors_dtype=workload.dtype,
                            use_lite_mode=True,
                        ),
                        f"diffusers TaylorSeer @{target}",
                        f"lite, cache_interval={interval}, disable_cache_before_step={before}, "
                        "max_order=1",
                    )
                )
            added[-1].matched_to = matched
    if "fewer-steps" in peers:
        for target in targets:
            added.append(
                Entry(
                    f"{target} steps (no cache)",
                    "fewer-steps",
                    steps=target,
                    matched_to=", ".join(e.name for e in ours if e.computed == target),
                    setting=f"num_inference_steps={target}",
                )
            )
    return added


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    peers = _peers(args)
    notes: List[Dict[str, str]] = []
    workload = build_workload(args)
    specs = list(args.config)
    entries = plan_entries(workload, specs)
    cuda_base = 0
    show = not args.quiet
    with tqdm(total=len(entries), desc="bench: probe", unit="run", disable=not show) as progress:
        workload.generate(workload.total_steps)  # warm-up of the allocator and kernels
        for entry in entries:
            _probe(workload, entry, cuda_base)
            if entry.engine == "baseline" and entry.cuda_peak_bytes is not None:
                cuda_base = entry.cuda_peak_bytes
                entry.cuda_peak_bytes = 0
            progress.update()
        peer_entries = add_peers(
            workload,
            specs,
            entries[1:],
            peers,
            notes,
            progress,
            lambda: _warm(build_workload(args)),
        )
        progress.total += len(peer_entries)
        for entry in peer_entries:
            _probe(workload, entry, cuda_base)
            progress.update()
    entries += peer_entries
    rounds = args.warmup + args.repeats
    with tqdm(
        total=rounds * len(entries), desc="bench: timing", unit="run", disable=not show
    ) as progress:
        for round_index in range(rounds):
            shift = round_index % len(entries)
            for entry in entries[shift:] + entries[:shift]:
                elapsed = _timed(workload, entry)
                if round_index >= args.warmup:
                    entry.times.append(elapsed)
                progress.update()
    return _report(workload, entries, notes, args, peers)


def _warm(workload: Workload) -> Workload:
    workload.generate(workload.total_steps)
    return workload


def _peers(args: argparse.Namespace) -> List[str]:
    if args.no_peers:
        return []
    peers = list(args.peers)
    unknown = [p for p in peers if p not in PEER_NAMES]
    if unknown:
        raise ValueError(f"unknown --peers {unknown}; choose from {', '.join(PEER_NAMES)}")
    return peers


def _machine() -> Dict[str, Any]:
    import os

    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _report(
    workload: Workload,
    entries: List[Entry],
    notes: List[Dict[str, str]],
    args: argparse.Namespace,
    peers: List[str],
) -> Dict[str, Any]:
    baseline = entries[0]
    base_median = statistics.median(baseline.times)
    total = workload.total_steps
    rows = []
    for entry in entries:
        median = statistics.median(entry.times)
        computed = entry.computed if entry.computed is not None else total
        speedup = base_median / median
        # Robustness checks on a loaded machine: best-of speedup, and the median of per-round
        # ratios (each round times the baseline next to the entry).
        paired = statistics.median(b / t for b, t in zip(baseline.times, entry.times))
        ideal = total / computed if computed else None
        row = {
            "name": entry.name,
            "engine": entry.engine,
            "config": entry.config,
            "tag": entry.tag,
            "setting": entry.setting,
            "matched_to": entry.matched_to,
            "computed_steps": computed,
            "total_steps": total,
            "times_s": entry.times,
            "median_s": median,
            "speedup": speedup,
            "min_s": min(entry.times),
            "speedup_best": min(baseline.times) / min(entry.times),
            "speedup_paired": paired,
            "ideal_speedup": ideal,
            "efficiency": speedup / ideal if ideal else None,
            "cache_peak_bytes": entry.cache_peak_bytes,
            "cuda_peak_extra_bytes": entry.cuda_peak_bytes,
        }
        row.update(_metrics(workload, baseline.output, entry.output))
        rows.append(row)
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workload": {
            "model": workload.name,
            "description": workload.description,
            "device": str(workload.device),
            "dtype": str(workload.dtype).replace("torch.", ""),
            "total_steps": total,
            **workload.info,
        },
        "settings": {
            "configs": list(args.config),
            "peers": peers,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "seed": args.seed,
        },
        "machine": _machine(),
        "rows": rows,
        "skipped": notes,
    }


# -- output -------------------------------------------------------------------------------------


def _fmt_bytes(value: Optional[int]) -> str:
    if value is None:
        return "n/a"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value / 2**20:.1f} MiB"


def _fmt(value: Optional[float], pattern: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return pattern.format(value)


def markdown_table(result: Dict[str, Any]) -> str:
    cuda = any(r["cuda_peak_extra_bytes"] is not None for r in result["rows"])
    header = [
        "entry",
        "engine",
        "computed",
        "median s",
        "speedup",
        "paired",
        "best",
        "ideal",
        "efficiency",
        "cache mem",
        *(["CUDA peak +"] if cuda else []),
        "PSNR dB",
        "SSIM",
        "max |err|",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result["rows"]:
        cells = [
            r["name"],
            r["engine"],
            f"{r['computed_steps']}/{r['total_steps']}",
            f"{r['median_s']:.4f}",
            f"{r['speedup']:.3f}x",
            f"{r['speedup_paired']:.3f}x",
            f"{r['speedup_best']:.3f}x",
            _fmt(r["ideal_speedup"], "{:.3f}x"),
            _fmt(r["efficiency"], "{:.3f}"),
            _fmt_bytes(r["cache_peak_bytes"]),
            *([_fmt_bytes(r["cuda_peak_extra_bytes"])] if cuda else []),
            _fmt(r["psnr_db"], "{:.2f}"),
            _fmt(r["ssim"], "{:.4f}"),
            _fmt(r["max_abs_error"], "{:.3g}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    settings = [f"- {r['name']}: {r['setting']}" for r in result["rows"] if r.get("setting")]
    return "\n".join(lines + ([""] + settings if settings else []))


ENGINE_COLOURS = {
    "baseline": (0, 0, 0),
    "ours": (214, 39, 40),
    "cache-dit": (31, 119, 180),
    "fbc": (44, 160, 44),
    "taylorseer": (148, 103, 189),
    "fewer-steps": (127, 127, 127),
}


def write_plot(result: Dict[str, Any], path: Path) -> None:
    """Fidelity (PSNR, dB) against wall-clock speedup, one dot per entry, drawn with PIL."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 760, 520, 70, 190, 40, 60
    rows = [r for r in result["rows"] if r["psnr_db"] is not None and not math.isnan(r["psnr_db"])]
    finite = [r["psnr_db"] for r in rows if math.isfinite(r["psnr_db"])]
    y_low = math.floor(min(finite, default=0.0) / 10) * 10
    y_high = math.ceil(max(finite, default=10.0) / 10) * 10 + 10  # headroom: "inf" sits on top
    speeds = [r["speedup"] for r in rows] or [1.0]
    x_low = math.floor(min(min(speeds), 1.0) * 4) / 4
    x_high = math.ceil(max(speeds) * 4) / 4 + 0.25
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(speed: float, value: float) -> Tuple[float, float]:
        value = min(value, y_high)
        return (
            left + (speed - x_low) / (x_high - x_low) * plot_w,
            top + (1 - (value - y_low) / (y_high - y_low)) * plot_h,
        )

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(0, 0, 0))
    step_x = 0.25 if x_high - x_low <= 3 else 0.5
    tick = x_low
    while tick <= x_high + 1e-9:
        x, _ = xy(tick, y_low)
        draw.line([x, top + plot_h, x, top + plot_h + 4], fill=(0, 0, 0))
        draw.text((x - 12, top + plot_h + 8), f"{tick:.2f}x", fill=(0, 0, 0))
        tick += step_x
    for value in range(int(y_low), int(y_high) + 1, 10):
        _, y = xy(x_low, value)
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((left - 40, y - 6), "inf" if value == y_high else f"{value}", fill=(0, 0, 0))
    draw.text(
        (left + plot_w // 2 - 80, height - 24), "wall-clock speedup vs uncached", fill=(0, 0, 0)
    )
    draw.text(
        (8, 12),
        f"PSNR dB (float) vs uncached - {result['workload']['model']}, "
        f"{result['workload']['total_steps']} steps",
        fill=(0, 0, 0),
    )
    for index, r in enumerate(rows):
        colour = ENGINE_COLOURS.get(r["engine"], (0, 0, 0))
        x, y = xy(r["speedup"], r["psnr_db"] if math.isfinite(r["psnr_db"]) else y_high)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((x + 6, y - 6), str(index + 1), fill=colour)
    for index, r in enumerate(rows):
        colour = ENGINE_COLOURS.get(r["engine"], (0, 0, 0))
        draw.text(
            (left + plot_w + 10, top + index * 14), f"{index + 1} {r['name']}"[:30], fill=colour
        )
    image.save(path)


def write_outputs(result: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{Path(result['workload']['model']).name}"
    paths = {
        "json": out_dir / f"{stem}.json",
        "markdown": out_dir / f"{stem}.md",
        "plot": out_dir / f"{stem}.png",
    }
    # Identical outputs have PSNR = inf, written as JSON's non-standard `Infinity`
    # (Python's json reads it back as float("inf")).
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown_table(result) + "\n")
    write_plot(result, paths["plot"])
    return paths


# -- CLI ----------------------------------------------------------------------------------------


def dry_run(args: argparse.Namespace) -> int:
    """Check arguments and configs and print the plan; builds no model (works without a GPU)."""
    device, dtype = _defaults(args)
    peers = _peers(args)
    model = args.model
    if model not in ("tiny", "medium", "flux-dev") and not Path(model).is_dir():
        raise ValueError(
            f"--model must be tiny, medium, flux-dev or a local pipeline directory; got {model!r}"
        )
    sizes = {
        "medium": (MEDIUM_CONFIG, MEDIUM_TOKENS),
        "flux-dev": (FLUX_DEV_CONFIG, FLUX_DEV_TOKENS),
    }
    print(
        f"bench plan: model {model} on {device} ({str(dtype).replace('torch.', '')}), "
        f"{args.steps} steps, {args.warmup} warm-up + {args.repeats} timed rounds, "
        f"threads {args.threads}"
    )
    if model in sizes:
        config, tokens = sizes[model]
        print(
            f"  transformer: {config['num_layers']} double + {config['num_single_layers']} single "
            f"blocks, hidden {config['num_attention_heads'] * config['attention_head_dim']} "
            f"({config['num_attention_heads']} x {config['attention_head_dim']}), "
            f"{tokens[0]} image + {tokens[1]} text tokens, batch {args.batch}"
        )
    import dit_cache_backend as dcb

    for spec in args.config:
        options = _cache_options(dcb, resolve_config(spec, args.steps))
        cache_config = options.get("cache_config")
        calibrator = options.get("calibrator_config")
        tag = (
            cache_config.strify() + "_" + (calibrator.strify() if calibrator else "T0O0")
            if cache_config is not None
            else "(no cache config)"
        )
        print(f"  config {spec}: {tag}")
    print(f"  peers: {', '.join(peers) if peers else 'none'}")
    return 0


def add_bench_parser(sub: Any) -> None:
    """Register ``dit-cache bench`` on the CLI's subparsers."""
    bench = sub.add_parser(
        "bench",
        help="speed, memory and fidelity of cache configs vs uncached and peers",
        description=__doc__.split("\n\n")[0].replace("``", "") + " " + BUILTIN_HELP,
    )
    bench.add_argument(
        "--model",
        default="tiny",
        help="tiny (default, trained), medium (CPU speed), flux-dev (CUDA) or a "
        "local diffusers pipeline directory",
    )
    bench.add_argument("--config", nargs="+", default=DEFAULT_CONFIGS, help=BUILTIN_HELP)
    bench.add_argument("--steps", type=int, default=28)
    bench.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    bench.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: leave)")
    bench.add_argument("--device", default=None, help="cpu (default) or cuda (flux-dev default)")
    bench.add_argument(
        "--dtype", default=None, help="float32 (default) / bfloat16 (flux-dev default) / float16"
    )
    bench.add_argument(
        "--batch", type=int, default=None, help="samples per call (tiny: 8 classes; others: 1)"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--peers", nargs="+", default=DEFAULT_PEERS, help=f"subset of {', '.join(PEER_NAMES)}"
    )
    bench.add_argument("--no-peers", action="store_true", help="only uncached and ours")
    bench.add_argument("--prompt", default="a photo of a cat", help="local pipelines only")
    bench.add_argument("--height", type=int, default=None, help="local pipelines only")
    bench.add_argument("--width", type=int, default=None, help="local pipelines only")
    bench.add_argument("--out-dir", default="bench_out")
    bench.add_argument(
        "--dry-run",
        action="store_true",
        help="check the arguments and print the plan without building a model",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(handler=bench_main)


def bench_main(args: argparse.Namespace) -> int:
    if args.batch is None:
        args.batch = 8 if args.model == "tiny" else 1
    if args.repeats < 1 or args.warmup < 0 or args.steps < 1 or args.batch < 1:
        raise ValueError("--repeats, --steps and --batch must be >= 1 and --warmup >= 0")
    if args.dry_run:
        return dry_run(args)
    result = run_benchmark(args)
    paths = write_outputs(result, Path(args.out_dir))
    print(markdown_table(result))
    for note in result["skipped"]:
        print(f"skipped {note['peer']}: {note['reason']}")
    print(f"json: {paths['json']}\nmarkdown: {paths['markdown']}\nplot: {paths['plot']}")
    return 0
