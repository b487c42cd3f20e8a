"""``dit-cache``: demo, steps masks and config checks from the command line."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .errors import DitCacheError


def _resolve_config(name_or_path: str) -> Path:
    """A preset name ("balanced") or a YAML/JSON path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return path
    from .presets import preset_path

    return preset_path(name_or_path)


# -- demo -------------------------------------------------------------------------------------


def _latents_to_images(latents: torch.Tensor) -> torch.Tensor:
    """Packed (B, 64, 4) latents of the tiny model → (B, 16, 16) single-channel images."""
    batch, tokens, channels = latents.shape
    side = int(tokens**0.5)
    grid = latents.reshape(batch, side, side, 1, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, side * 2, side * 2)


def _write_side_by_side(path: Path, rows: Dict[str, torch.Tensor], scale: int = 8) -> None:
    from PIL import Image, ImageDraw

    names = list(rows)
    images = {name: _latents_to_images(rows[name]) for name in names}
    reference = images[names[0]]
    low, high = reference.min().item(), reference.max().item()
    batch, height, width = reference.shape
    label_width, gap = 90, 4
    canvas = Image.new(
        "L", (label_width + batch * (width * scale + gap), len(names) * (height * scale + gap)), 255
    )
    draw = ImageDraw.Draw(canvas)
    for row, name in enumerate(names):
        normalized = ((images[name] - low) / (high - low + 1e-12)).clamp(0, 1)
        top = row * (height * scale + gap)
        draw.text((4, top + height * scale // 2 - 6), name, fill=0)
        for col in range(batch):
            pixels = (normalized[col] * 255).round().to(torch.uint8).numpy()
            tile = Image.fromarray(pixels, "L").resize(
                (width * scale, height * scale), Image.NEAREST
            )
            canvas.paste(tile, (label_width + col * (width * scale + gap), top))
    canvas.save(path)


def _demo_inputs(classes: List[int], steps: int) -> Dict[str, Any]:
    """One batched pipeline call that samples every class in ``classes``."""
    from .tiny_model import tiny_flux_class_embeddings, tiny_flux_inputs

    inputs = tiny_flux_inputs(classes[0], batch_size=len(classes), num_inference_steps=steps)
    prompt_embeds, pooled = tiny_flux_class_embeddings()
    inputs["prompt_embeds"] = prompt_embeds[classes].contiguous()
    inputs["pooled_prompt_embeds"] = pooled[classes].contiguous()
    return inputs


def _demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import disable_cache, enable_cache, load_configs, summary
    from .metrics import max_abs_error, psnr
    from .tiny_model import NUM_CLASSES, tiny_flux_pipeline

    torch.set_num_threads(args.threads)
    classes = list(range(min(args.classes, NUM_CLASSES)))
    pipe = tiny_flux_pipeline()
    configs = {name: load_configs(_resolve_config(name)) for name in args.preset}

    def generate() -> torch.Tensor:
        with torch.no_grad():
            return pipe(**_demo_inputs(classes, args.steps)).images

    generate()  # warm-up: the first call pays for allocations
    names = ["uncached", *configs]
    times: Dict[str, List[float]] = {name: [] for name in names}
    outputs: Dict[str, torch.Tensor] = {}
    computed: Dict[str, int] = {"uncached": args.steps}
    # Interleaved repeats: every config sees the same machine load, so the ratios are fair.
    with tqdm(total=args.repeats * len(names), desc="dit-cache demo", unit="run") as progress:
        for _ in range(args.repeats):
            for name in names:
                if name != "uncached":
                    enable_cache(pipe, **configs[name])
                try:
                    start = time.perf_counter()
                    outputs[name] = generate()
                    times[name].append(time.perf_counter() - start)
                    if name != "uncached":
                        computed[name] = args.steps - len(summary(pipe, logging=False)[0].cached_steps)
                finally:
                    if name != "uncached":
                        disable_cache(pipe)
                progress.update()
    baseline = outputs["uncached"]
    data_range = (baseline.max() - baseline.min()).item()
    base_time = statistics.median(times["uncached"])
    header = ("config", "computed steps", "speedup", "PSNR dB", "max |err|")
    table = [header]
    for name in names:
        table.append(
            (
                name,
                f"{computed[name]}/{args.steps}",
                f"{base_time / statistics.median(times[name]):.2f}x",
                f"{psnr(baseline, outputs[name], data_range):.1f}",
                f"{max_abs_error(baseline, outputs[name]):.3g}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    out = Path(args.out)
    _write_side_by_side(out, outputs)
    print(f"side-by-side image ({len(classes)} classes; rows: {', '.join(names)}): {out.resolve()}")
    return 0


# -- mask / check-config ------------------------------------------------------------------------


def _mask(args: argparse.Namespace) -> int:
    from .scm import mask_to_string, steps_mask

    if args.compute_bins or args.cache_bins:
        mask = steps_mask(args.compute_bins, args.cache_bins, total_steps=args.steps)
    else:
        mask = steps_mask(total_steps=args.steps, mask_policy=args.policy)
    print(f"{mask_to_string(mask)}  ({sum(mask)} computed of {len(mask)})")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from .config import load_configs

    options = load_configs(_resolve_config(args.config))
    cache_config = options["cache_config"]
    calibrator = options["calibrator_config"]
    if cache_config is not None:
        tag = cache_config.strify() + "_" + (calibrator.strify() if calibrator else "T0O0")
        print(f"ok: {tag}")
        for key, value in cache_config.as_dict().items():
            print(f"  {key}: {value}")
    for section in ("calibrator_config", "parallelism_config", "quantize_config", "attention_backend"):
        if options.get(section) is not None:
            print(f"{section}: {options[section]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dit-cache", description="Training-free cache acceleration for Diffusion Transformers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the bundled tiny trained model uncached and cached")
    demo.add_argument(
        "--preset",
        nargs="+",
        default=["balanced", "fast"],
        help="presets (quality, balanced, fast, ultra, ...) or config files to compare",
    )
    demo.add_argument("--steps", type=int, default=28)
    demo.add_argument("--classes", type=int, default=4, help="how many of the 8 classes to sample")
    demo.add_argument("--repeats", type=int, default=5, help="timed runs per config (median)")
    demo.add_argument("--threads", type=int, default=2)
    demo.add_argument("--out", default="dit_cache_demo.png")
    demo.set_defaults(handler=_demo)

    mask = sub.add_parser("mask", help="print an SCM steps mask")
    mask.add_argument("--steps", type=int, required=True)
    mask.add_argument("--policy", default="medium", help="slow, medium, fast or ultra")
    mask.add_argument("--compute-bins", type=int, nargs="+")
    mask.add_argument("--cache-bins", type=int, nargs="+")
    mask.set_defaults(handler=_mask)

    check = sub.add_parser("check-config", help="validate a cache-dit style YAML/JSON config")
    check.add_argument("config", help="a file path or a preset name")
    check.set_defaults(handler=_check_config)

    from .bench import add_bench_parser

    add_bench_parser(sub)  # dit-cache bench (dit_cache_backend/bench.py)
    from .calibrate import add_calibrate_parser

    add_calibrate_parser(sub)  # dit-cache calibrate (dit_cache_backend/calibrate.py)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (DitCacheError, ValueError, FileNotFoundError) as error:
        print(f"dit-cache {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
