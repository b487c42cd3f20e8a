"""``dit-cache``: demo, steps masks and config checks from the command line."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

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


def _timed(run: Callable[[], torch.Tensor], repeats: int) -> tuple:
    times, output = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        output = run()
        times.append(time.perf_counter() - start)
    return output, statistics.median(times)


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


def _demo(args: argparse.Namespace) -> int:
    from . import disable_cache, enable_cache, load_configs, summary
    from .metrics import max_abs_error, psnr
    from .tiny_model import NUM_CLASSES, tiny_flux_inputs, tiny_flux_pipeline

    torch.set_num_threads(args.threads)
    classes = list(range(min(args.classes, NUM_CLASSES)))
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=False, leave=False, desc="denoising")

    def generate() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [pipe(**tiny_flux_inputs(c, num_inference_steps=args.steps)).images for c in classes]
            )

    generate()  # warm-up: first calls pay for allocations
    baseline, baseline_time = _timed(generate, args.repeats)
    data_range = (baseline.max() - baseline.min()).item()
    rows: Dict[str, torch.Tensor] = {"uncached": baseline}
    table: List[tuple] = [("uncached", f"{args.steps}/{args.steps}", "1.00x", "inf", "0")]
    for preset in args.preset:
        enable_cache(pipe, **load_configs(_resolve_config(preset)))
        try:
            cached, cached_time = _timed(generate, args.repeats)
            stats = summary(pipe, logging=False)[0]
        finally:
            disable_cache(pipe)
        computed = args.steps - len(stats.cached_steps)  # of the last class's request
        rows[preset] = cached
        table.append(
            (
                preset,
                f"{computed}/{args.steps}",
                f"{baseline_time / cached_time:.2f}x",
                f"{psnr(baseline, cached, data_range):.1f}",
                f"{max_abs_error(baseline, cached):.3g}",
            )
        )
    header = ("config", "computed steps", "speedup", "PSNR dB", "max |err|")
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    out = Path(args.out)
    _write_side_by_side(out, rows)
    print(f"side-by-side image: {out.resolve()}")
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
    from .stats import strify

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
    demo.add_argument("--repeats", type=int, default=3, help="timed runs per config (median)")
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
