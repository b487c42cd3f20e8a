"""GPU rows for docs/benchmarks.md: a FLUX.1-dev-sized bf16 transformer, eager and with
``compile_repeated_blocks``, and with torchao int8 / float8 weight-only quantization, each with the
cache off and on. Run through ``benchmarks/gpu_check.sh`` (one H200, at most 8 minutes).

``python benchmarks/scaleout_gpu.py --out DIR [--steps 28] [--budget-s 420] [--variants ...]``
(``--model medium --device cpu`` runs the same code in miniature, to check the script itself)
writes ``DIR/scaleout_gpu.json`` and ``DIR/scaleout_gpu.md`` and prints the table. Each variant is a
fresh transformer (random weights, seed 0: every variant has the same weights) driven by the same
Euler loop as ``dit-cache bench --model flux-dev`` (1024x1024: 4096 image + 512 text tokens). The
cache config is ``scm-fast-ts1`` (static SCM mask, TaylorSeer order 1), so the computed steps do
not depend on the random weights. Times: one warm-up generate, then the median of ``--repeats``.
Variants left when the time budget runs out are reported as skipped, not run.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

import dit_cache_backend as dcb
from dit_cache_backend import bench
from dit_cache_backend.metrics import max_abs_error, psnr
from dit_cache_backend.scaleout import quantization

CACHE_SPEC = "scm-fast-ts1"


def _quantize(quant_type: str) -> Callable[[torch.nn.Module], None]:
    def prepare(transformer: torch.nn.Module) -> None:
        config = dcb.QuantizeConfig(quant_type=quant_type)
        quantization.apply(quantization.plan(config, [transformer]))

    return prepare


def _compile(transformer: torch.nn.Module) -> None:
    transformer.compile_repeated_blocks(fullgraph=True)


VARIANTS: Dict[str, Callable[[torch.nn.Module], None]] = {
    "bf16": lambda transformer: None,
    "bf16+compile_repeated_blocks": _compile,
    "int8_weight_only": _quantize("int8_weight_only"),
    "float8_weight_only": _quantize("float8_weight_only"),
}


def _timed(
    device: torch.device,
    generate: Callable[[int], torch.Tensor],
    steps: int,
    repeats: int,
    install: Callable[[], None] = lambda: None,
    uninstall: Callable[[], int] = lambda: 0,
) -> Dict[str, Any]:
    """One warm-up generate (it compiles on the first call), then ``repeats`` timed ones; the
    cache is installed before and removed after each (untimed), as ``dit-cache bench`` does."""
    times, cached = [], 0
    for _ in range(1 + repeats):
        install()
        bench._sync(device)
        start = time.perf_counter()
        output = generate(steps)
        bench._sync(device)
        times.append(time.perf_counter() - start)
        cached = uninstall()
    return {"first_s": times[0], "median_s": statistics.median(times[1:]), "times_s": times,
            "output": output, "cached": cached}


def run_variant(name: str, args: argparse.Namespace, reference: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    started = time.perf_counter()
    workload = bench.build_workload(
        argparse.Namespace(model=args.model, steps=args.steps, seed=0, batch=1,
                           device=args.device, dtype="bfloat16")
    )
    transformer = workload.transformer
    VARIANTS[name](transformer)
    prepared_s = time.perf_counter() - started
    off = _timed(workload.device, workload.generate, args.steps, args.repeats)
    options = {k: v for k, v in dcb.load_configs(bench.resolve_config(CACHE_SPEC, args.steps)).items()
               if v is not None}

    def uninstall() -> int:
        cached = len(dcb.summary(transformer, logging=False)[0].cached_steps)
        dcb.disable_cache(transformer)
        return cached

    on = _timed(workload.device, workload.generate, args.steps, args.repeats,
                lambda: dcb.enable_cache(transformer, **options), uninstall)
    baseline = reference.setdefault("bf16_off", off["output"].float().cpu())
    row = {
        "variant": name,
        "prepare_s": prepared_s,
        "cache_off_s": off["median_s"],
        "cache_on_s": on["median_s"],
        "first_call_off_s": off["first_s"],
        "speedup": off["median_s"] / on["median_s"],
        "computed_steps": args.steps - on["cached"],
        "psnr_on_vs_off_db": psnr(off["output"].float().cpu(), on["output"].float().cpu(),
                                  _range(off["output"])),
        "max_abs_on_vs_off": max_abs_error(off["output"].float().cpu(), on["output"].float().cpu()),
        "max_abs_off_vs_bf16": max_abs_error(baseline, off["output"].float().cpu()),
        "peak_gib": _peak_gib(workload.device),
    }
    del workload, transformer, off, on
    _free()
    return row


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _range(tensor: torch.Tensor) -> float:
    values = tensor.float()
    return (values.max() - values.min()).item() or 1.0


def markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = [
        f"{meta['model']} transformer (random weights), bf16, {meta['steps']} steps, "
        f"cache `{CACHE_SPEC}`; {meta['device']}, torch {meta['torch']}",
        "",
        "| variant | cache off (s) | cache on (s) | speedup | computed steps | PSNR on vs off (dB) "
        "| max abs vs bf16 | first call off (s) | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | {row['error']} |||||||")
            continue
        lines.append(
            f"| {row['variant']} | {row['cache_off_s']:.2f} | {row['cache_on_s']:.2f} | "
            f"{row['speedup']:.2f}x | {row['computed_steps']} | {row['psnr_on_vs_off_db']:.1f} | "
            f"{row['max_abs_off_vs_bf16']:.3g} | {row['first_call_off_s']:.1f} | {row['peak_gib']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--model", default="flux-dev", choices=["flux-dev", "medium"])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("scaleout_gpu.py needs a CUDA GPU (or --model medium --device cpu)")
    dcb.set_compile_configs()
    start = time.perf_counter()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    meta = {"model": args.model, "device": device_name, "torch": torch.__version__,
            "steps": args.steps, "cache": CACHE_SPEC, "repeats": args.repeats}
    rows: List[Dict[str, Any]] = []
    reference: Dict[str, torch.Tensor] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        if time.perf_counter() - start > args.budget_s:
            rows.append({"variant": name, "error": "skipped: time budget spent"})
            continue
        try:
            rows.append(run_variant(name, args, reference))
        except Exception as error:  # one variant's failure must not lose the other rows
            traceback.print_exc()
            rows.append({"variant": name, "error": f"{type(error).__name__}: {error}"[:300]})
            _free()
        print(json.dumps(rows[-1]), flush=True)
        (args.out / "scaleout_gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    meta["total_s"] = time.perf_counter() - start
    (args.out / "scaleout_gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (args.out / "scaleout_gpu.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
