"""What a run reports: the JSON result, its Markdown table, and the plots.

``build_report`` turns ``dit-cache bench``'s timed entries into the result (schema
``dit-cache-bench/1``); ``markdown_table`` and ``write_plot`` (fidelity against wall-clock
speedup) render it. ``frontier`` / ``frontier_markdown`` / ``write_pareto`` render a matched-compute
sweep (``benchmarks/fidelity_set.py``): per method, the best PSNR / SSIM at <= N/k computed steps,
and the Pareto plot of PSNR against computed steps for every method.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .measure import metrics
from .workloads import Workload

SCHEMA = "dit-cache-bench/1"
FRACTIONS = (2, 3, 4)


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


def build_report(
    workload: Workload,
    entries: List[Any],
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
        row.update(metrics(workload, baseline.output, entry.output))
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
            f"{r['computed_steps']:g}/{r['total_steps']}",
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
    "magcache": (140, 86, 75),
    "seacache": (227, 119, 194),
    "attention": (188, 189, 34),
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


# -- matched-compute sweeps ---------------------------------------------------------------------


def frontier(
    results: Sequence[Dict[str, Any]], steps: int, fractions: Sequence[int] = FRACTIONS
) -> Dict[str, Dict[int, Optional[Dict[str, Any]]]]:
    """Per method, its best-PSNR run with computed steps <= steps / k, for each k (None: none)."""
    table: Dict[str, Dict[int, Optional[Dict[str, Any]]]] = {}
    for result in results:
        row = table.setdefault(result["method"], {k: None for k in fractions})
        for k in fractions:
            if result["computed"] <= steps / k + 1e-9:
                best = row[k]
                if best is None or result["psnr"] > best["psnr"]:
                    row[k] = result
    return table


def frontier_markdown(runs: Dict[str, Dict[str, Any]], fractions: Sequence[int] = FRACTIONS) -> str:
    """One table per (model, steps): best PSNR dB / SSIM (computed steps) at <= N/k."""
    lines = []
    for entry in runs.values():
        # "family": files written before the sweeps moved into the bench (same layout otherwise).
        model, steps = entry.get("model", entry.get("family")), entry["steps"]
        lines.append(f"\n### {model}, {steps} steps (reference: uncached {steps} steps)\n")
        lines.append(
            "| method | " + " | ".join(f"≤ {steps}/{k} = {steps / k:.1f}" for k in fractions) + " |"
        )
        lines.append("|---|" + "---|" * len(fractions))
        for method, row in frontier(entry["results"], steps, fractions).items():
            cells = [
                "—"
                if best is None
                else f"{best['psnr']:.1f} / {best['ssim']:.3f} ({best['computed']:g})"
                for best in (row[k] for k in fractions)
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The (computed, PSNR) points no other point beats with fewer or equal computed steps."""
    front: List[Tuple[float, float]] = []
    for computed, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or value > front[-1][1]:
            front.append((computed, value))
    return front


def _method_colours(methods: Sequence[str], plt: Any) -> Dict[str, Any]:
    """Ours in reds, cache-dit in blues, every other method its own colour."""
    families = {"ours": plt.get_cmap("Reds"), "cache-dit": plt.get_cmap("Blues")}
    others = plt.get_cmap("tab10")
    colours: Dict[str, Any] = {}
    for prefix, cmap in families.items():
        members = [m for m in methods if m.startswith(prefix + " ")]
        for index, method in enumerate(members):
            colours[method] = cmap(0.45 + 0.55 * index / max(1, len(members) - 1))
    rest = [m for m in methods if m not in colours]
    palette = [others(i) for i in (2, 4, 5, 6, 8, 9, 1, 7)]
    for index, method in enumerate(rest):
        colours[method] = palette[index % len(palette)]
    return colours


def write_pareto(runs: Dict[str, Dict[str, Any]], path: Path, ceiling: float = 90.0) -> None:
    """PSNR against computed steps, every method's Pareto front, one panel per (model, steps).

    Identical outputs (PSNR inf) are drawn at ``ceiling``; dotted verticals mark N/2, N/3, N/4.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(runs.values())
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(7.5 * columns, 5 * rows), squeeze=False)
    methods = sorted({r["method"] for entry in panels for r in entry["results"]})
    colours = _method_colours(methods, plt)
    for axis, entry in zip(axes.flat, panels):
        steps = entry["steps"]
        for method in methods:
            values = [
                (r["computed"], min(r["psnr"], ceiling))
                for r in entry["results"]
                if r["method"] == method and r["computed"] < steps and math.isfinite(r["computed"])
            ]
            front = pareto_front(values)
            if not front:
                continue
            style = {"color": "black", "linestyle": "--"} if method == "fewer steps" else {}
            if method.startswith("ours"):
                style["linewidth"] = 2.5
            elif method.startswith("cache-dit"):
                style["linestyle"] = ":"
            axis.step(
                [c for c, _ in front],
                [v for _, v in front],
                where="post",
                label=method,
                marker="o",
                markersize=3,
                color=style.pop("color", colours[method]),
                **style,
            )
        for k in FRACTIONS:
            axis.axvline(steps / k, color="grey", linestyle=":", linewidth=0.8)
        # The matched-compute region: up to half the steps, where the tables compare.
        axis.set_xlim(0, steps / 2 + 1)
        axis.set_title(f"{entry.get('model', entry.get('family'))}, {steps} steps")
        axis.set_xlabel("computed transformer steps")
        axis.set_ylabel("PSNR dB vs uncached")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    figure.tight_layout(rect=(0, 0.08 + 0.02 * math.ceil(len(methods) / 5), 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
