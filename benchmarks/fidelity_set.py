"""Fidelity at matched compute on the tiny benchmark set: every method, best PSNR/SSIM at <= N/k steps.

For each tiny trained model (``dit_cache_backend.tiny_zoo``: flux, qwen-image) and step count,
all 8 classes run in one batched pipeline call (seed 0); the uncached output is the reference.
Each method sweeps its knobs; a run's compute is its computed transformer steps (mean over CFG
branches). The report gives, per method, the best PSNR (dB, float arithmetic on the output
latents, peak-to-peak range of the reference) and SSIM among runs with compute <= N/2, N/3, N/4.

Methods: fewer steps (the floor); ours and cache-dit 1.5.3 with DBCache F1B0 and each calibrator
(none, TaylorSeer order 1 and 2, FoCa, DMD) over thresholds, warmups and continuous-cache limits;
diffusers' FirstBlockCache (thresholds), TaylorSeerCache lite and full (intervals x warmups) and
MagCache (ratios calibrated by its own ``calibrate=True`` run, then thresholds).

    python benchmarks/fidelity_set.py --family flux qwen-image --steps 28 50 --out fidelity.json
    python benchmarks/fidelity_set.py --report fidelity.json     # Markdown tables only
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

import dit_cache_backend as dcb
from dit_cache_backend import tiny_zoo as zoo
from dit_cache_backend.metrics import psnr, ssim

FRACTIONS = (2, 3, 4)
CALIBRATORS: Dict[str, Optional[Dict[str, Any]]] = {
    "reuse": None,
    "TS1": {"enable_taylorseer": True, "taylorseer_order": 1},
    "TS2": {"enable_taylorseer": True, "taylorseer_order": 2},
    "FoCa": {"enable_foca": True},
    "DMD": {"enable_dmd": True},
}
THRESHOLDS = (0.08, 0.16, 0.32, 1.0)
WARMUPS = (4,)
CONTINUOUS = (-1, 3)


class Runner:
    """One family at one step count: the reference, and a run of any installed cache."""

    def __init__(self, family: str, steps: int) -> None:
        self.family, self.steps = family, steps
        self.pipe = zoo.tiny_pipeline(family)
        self.calls_per_step = 2 if getattr(zoo.FAMILIES[family], "separate_cfg", False) else 1
        self.reference = self.generate(steps)
        self.range = float(self.reference.max() - self.reference.min())

    def inputs(self, steps: int) -> Dict[str, Any]:
        kwargs = zoo.tiny_inputs(self.family, 0, zoo.NUM_CLASSES, seed=0, num_inference_steps=steps)
        embeds = zoo.class_embeddings(self.family)
        kwargs["prompt_embeds"] = embeds
        if "negative_prompt_embeds" in kwargs:
            kwargs["negative_prompt_embeds"] = torch.zeros_like(embeds)
        if self.family == "flux":
            from dit_cache_backend.tiny_model import tiny_flux_class_embeddings

            kwargs["pooled_prompt_embeds"] = tiny_flux_class_embeddings()[1]
        return kwargs

    def generate(self, steps: int) -> torch.Tensor:
        return zoo.generate(self.pipe, self.family, **self.inputs(steps))

    def score(self, output: torch.Tensor, computed: float, **info: Any) -> Dict[str, Any]:
        images, reference = as_images(output), as_images(self.reference)
        return {
            "computed": round(computed, 2),
            "psnr": psnr(self.reference, output, self.range),
            "ssim": ssim(reference, images, self.range),
            **info,
        }

    def last_block_calls(self, run: Callable[[], torch.Tensor]) -> Tuple[torch.Tensor, float]:
        """Output and computed steps, counting calls of the model's last transformer block."""
        transformer = self.pipe.transformer
        lists = [m for name, m in transformer.named_children() if isinstance(m, torch.nn.ModuleList)]
        # A layer inside the block: diffusers' hooks skip a cached block inside its forward, so the
        # block's own forward hooks still fire; its layers do not run.
        layer = next(m for m in lists[-1][-1].children() if any(True for _ in m.parameters()))
        calls = [0]
        handle = layer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            output = run()
        finally:
            handle.remove()
        return output, calls[0] / self.calls_per_step


def as_images(latents: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) views for SSIM: packed tokens as a square grid, video frames as images."""
    if latents.dim() == 3:
        batch, tokens, channels = latents.shape
        side = int(round(tokens**0.5))
        return latents.reshape(batch, side, side, channels)
    batch, channels, frames, height, width = latents.shape
    return latents.permute(0, 2, 3, 4, 1).reshape(batch * frames, height, width, channels)


def dbcache_configs(calibrators: List[str]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    for name in calibrators:
        calibrator = CALIBRATORS[name]
        for warmup in WARMUPS:
            for continuous in CONTINUOUS:
                for threshold in THRESHOLDS:
                    cache = {
                        "Fn_compute_blocks": 1,
                        "Bn_compute_blocks": 0,
                        "max_warmup_steps": warmup,
                        "max_continuous_cached_steps": continuous,
                        "residual_diff_threshold": threshold,
                        **(calibrator or {}),
                    }
                    yield name, cache


# Our decision signals and compute budgets (--signals), on the same DBCache grid.
SIGNALS: Dict[str, Dict[str, Any]] = {
    "l1": {},
    "lowpass": {"decision_signal": "lowpass_l1"},
    "magnitude": {"decision_signal": "magnitude"},
}
BUDGETS = (0.5, 0.3334, 0.25)


def signal_configs(calibrators: List[str], steps: int, ratios: List[float]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """Each signal (and MagCache-calibrated magnitude ratios) alone, and under each budget."""
    signals = {**SIGNALS, "magnitude-cal": {"decision_signal": "magnitude", "signal_mag_ratios": ratios}}
    for calibrator, cache in dbcache_configs(calibrators):
        for name, extra in signals.items():
            if extra:
                yield f"{calibrator} {name}", {**cache, **extra}
            if cache["max_continuous_cached_steps"] == -1:
                for budget in BUDGETS:
                    budgeted = {**cache, **extra, "compute_budget": budget, "num_inference_steps": steps}
                    yield f"{calibrator} {name} budget", budgeted


def run_engine(
    runner: Runner,
    module: Any,
    label: str,
    calibrators: List[str],
    configs: Optional[Iterator[Tuple[str, Dict[str, Any]]]] = None,
) -> List[Dict[str, Any]]:
    results = []
    for calibrator, cache in configs or dbcache_configs(calibrators):
        config = {"cache_config": dict(cache)}
        if runner.calls_per_step == 2:
            config["cache_config"]["enable_separate_cfg"] = True
        options = {k: v for k, v in module.load_configs(copy.deepcopy(config)).items() if v is not None}
        module.enable_cache(runner.pipe, **options)
        try:
            output = runner.generate(runner.steps)
            stats = module.summary(runner.pipe, logging=False)[0]
        finally:
            module.disable_cache(runner.pipe)
        cached = len(stats.cached_steps) + len(stats.cfg_cached_steps)
        computed = runner.steps - cached / runner.calls_per_step
        results.append(runner.score(output, computed, method=f"{label} {calibrator}", config=cache))
    return results


def run_fewer_steps(runner: Runner) -> List[Dict[str, Any]]:
    targets = sorted({runner.steps // k for k in FRACTIONS})
    return [
        runner.score(runner.generate(k), k, method="fewer steps", config={"steps": k})
        for k in targets
    ]


def run_diffusers(runner: Runner) -> List[Dict[str, Any]]:
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    transformer = runner.pipe.transformer
    steps = runner.steps

    def with_cache(config: Any) -> Tuple[torch.Tensor, float]:
        transformer.enable_cache(config)
        try:
            return runner.last_block_calls(lambda: runner.generate(steps))
        finally:
            transformer.disable_cache()

    results = []
    for threshold in (0.04, 0.08, 0.16, 0.24, 0.32, 0.5):
        output, computed = with_cache(FirstBlockCacheConfig(threshold=threshold))
        results.append(runner.score(output, computed, method="diffusers FBC", config={"threshold": threshold}))
    for lite in (True, False):
        for interval in (2, 3, 4):
            for before in (3,):
                config = TaylorSeerCacheConfig(
                    cache_interval=interval,
                    disable_cache_before_step=before,
                    max_order=1,
                    taylor_factors_dtype=torch.float32,
                    use_lite_mode=lite,
                )
                transformer.enable_cache(config)
                try:
                    output = runner.generate(steps)
                finally:
                    transformer.disable_cache()
                computed = sum(1 for s in range(steps) if s < before or (s - before - 1) % interval == 0)
                results.append(
                    runner.score(
                        output,
                        computed,
                        method=f"diffusers TaylorSeer {'lite' if lite else 'full'}",
                        config={"cache_interval": interval, "disable_cache_before_step": before},
                    )
                )
    ratios = mag_ratios(runner)
    for threshold in (0.03, 0.06, 0.12, 0.3):
        for max_skip in (3,):
            config = MagCacheConfig(
                threshold=threshold,
                max_skip_steps=max_skip,
                retention_ratio=0.2,
                num_inference_steps=steps,
                mag_ratios=ratios,
            )
            output, computed = with_cache(config)
            results.append(
                runner.score(
                    output,
                    computed,
                    method="diffusers MagCache",
                    config={"threshold": threshold, "max_skip_steps": max_skip},
                )
            )
    return results


def mag_ratios(runner: Runner) -> List[float]:
    """MagCache's own calibration run: it prints the ratios at the end of the request."""
    from diffusers import MagCacheConfig

    transformer = runner.pipe.transformer
    printed = io.StringIO()
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=runner.steps))
    try:
        with contextlib.redirect_stdout(printed):
            runner.generate(runner.steps)
    finally:
        transformer.disable_cache()
    lists = [line for line in printed.getvalue().splitlines() if line.startswith("[") and "]" == line[-1:] and "MagCache" not in line]
    return [float(x) for x in ast.literal_eval(lists[0])]


def best_at(results: List[Dict[str, Any]], steps: int) -> Dict[str, Dict[int, Optional[Dict[str, Any]]]]:
    table: Dict[str, Dict[int, Optional[Dict[str, Any]]]] = {}
    for result in results:
        row = table.setdefault(result["method"], {k: None for k in FRACTIONS})
        for k in FRACTIONS:
            if result["computed"] <= steps / k + 1e-9:
                best = row[k]
                if best is None or result["psnr"] > best["psnr"]:
                    row[k] = result
    return table


def markdown(data: Dict[str, Any]) -> str:
    lines = []
    for key, entry in data["runs"].items():
        family, steps = entry["family"], entry["steps"]
        lines.append(f"\n### {family}, {steps} steps (reference: uncached {steps} steps)\n")
        lines.append("| method | " + " | ".join(f"≤ {steps}/{k} = {steps / k:.1f}" for k in FRACTIONS) + " |")
        lines.append("|---|" + "---|" * len(FRACTIONS))
        for method, row in best_at(entry["results"], steps).items():
            cells = []
            for k in FRACTIONS:
                best = row[k]
                cells.append("—" if best is None else f"{best['psnr']:.1f} / {best['ssim']:.3f} ({best['computed']:g})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=sorted(zoo.FAMILIES), choices=sorted(zoo.FAMILIES))
    parser.add_argument("--steps", nargs="+", type=int, default=[28, 50])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peers", nargs="+", default=["ours", "cache-dit", "diffusers", "fewer-steps"])
    parser.add_argument("--calibrators", nargs="+", default=list(CALIBRATORS), choices=list(CALIBRATORS))
    parser.add_argument(
        "--cache-dit-calibrators", nargs="+", default=list(CALIBRATORS), choices=list(CALIBRATORS)
    )
    parser.add_argument(
        "--signals", action="store_true", help="also ours with each decision signal and compute budget"
    )
    parser.add_argument("--out", type=Path, default=Path("fidelity_set.json"))
    parser.add_argument("--report", type=Path, nargs="+", help="print the tables of earlier --out files")
    args = parser.parse_args()
    if args.report:
        merged: Dict[str, Any] = {"runs": {}}
        for path in args.report:
            for key, entry in json.loads(path.read_text())["runs"].items():
                if key in merged["runs"]:
                    merged["runs"][key]["results"] += entry["results"]
                else:
                    merged["runs"][key] = entry
        print(markdown(merged))
        return

    torch.set_num_threads(args.threads)
    data: Dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    for family in args.family:
        for steps in args.steps:
            start = time.perf_counter()
            runner = Runner(family, steps)
            results: List[Dict[str, Any]] = []
            if "fewer-steps" in args.peers:
                results += run_fewer_steps(runner)
            # diffusers' hooks first: cache-dit's enable_cache patches the transformer's forward
            # for good (its disable_cache leaves the patch), which breaks diffusers' caches after it.
            if "diffusers" in args.peers:
                results += run_diffusers(runner)
            if "ours" in args.peers:
                results += run_engine(runner, dcb, "ours", args.calibrators)
            if args.signals:
                configs = signal_configs(args.calibrators, steps, mag_ratios(runner))
                results += run_engine(runner, dcb, "ours", args.calibrators, configs)
            if "cache-dit" in args.peers:
                import cache_dit

                results += run_engine(runner, cache_dit, "cache-dit", args.cache_dit_calibrators)
            for result in results:
                if math.isinf(result["psnr"]):
                    result["psnr"] = 999.0
            data["runs"][f"{family}@{steps}"] = {
                "family": family,
                "steps": steps,
                "seconds": round(time.perf_counter() - start, 1),
                "threads": args.threads,
                "results": results,
            }
            args.out.write_text(json.dumps(data, indent=1))
            print(f"{family} @ {steps}: {len(results)} runs in {time.perf_counter() - start:.0f}s", flush=True)
    print(markdown(data))


if __name__ == "__main__":
    main()
