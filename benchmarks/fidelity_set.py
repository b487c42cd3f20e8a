"""Fidelity at matched compute on the tiny benchmark set: every method, best PSNR/SSIM at <= N/k steps.

For each trained tiny model (``dit-cache bench``'s workloads ``tiny`` = the Flux, ``qwen-image``)
and step count, all 8 classes run in one batched pipeline call (seed 0); the uncached output is
the reference. Every method is a peer of ``dit_cache_backend.bench.peers.PEERS`` — the same sweeps
``dit-cache bench`` matches to its configs — swept over its knobs; a run's compute is its computed
transformer steps. The report gives, per method, the best PSNR (dB, float arithmetic on the output
latents, peak-to-peak range of the reference) and SSIM among runs with compute <= N/2, N/3, N/4,
and the Pareto plot (PSNR against computed steps) of every method.

    python benchmarks/fidelity_set.py --model tiny qwen-image --steps 28 50 --out fidelity.json
    python benchmarks/fidelity_set.py --report fidelity.json --plot pareto.png  # tables + plot
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from dit_cache_backend.bench import (
    GRIDS,
    PEERS,
    TRAINED,
    build_workload,
    calls_per_step,
    make_peers,
    frontier_markdown,
    metrics,
    sweep,
    write_pareto,
)
from dit_cache_backend.bench.peers import CALIBRATORS
from dit_cache_backend.bench.report import FRACTIONS

# Every peer except the attention-only ones, which run every block's MLP at every step and so
# never reach N/2 computed steps (run them with --peers pab fastercache to see their PSNR), and
# except our decision signals and budgets (--signals adds them).
DEFAULT_PEERS = [
    name for name in PEERS if name not in ("pab", "fastercache") and not name.endswith("-signals")
]


FAMILY_NAMES = {"flux": "tiny"}  # tiny_zoo family → the bench's workload name
# Peer groups: "ours" / "cache-dit" are their DBCache sweeps with --calibrators; "diffusers" is
# every diffusers cache that skips whole steps.
GROUPS = {
    "ours": lambda cals: [f"ours-{c}" for c in cals],
    "cache-dit": lambda cals: [f"cache-dit-{c}" for c in cals if f"cache-dit-{c}" in PEERS],
    "diffusers": lambda cals: ["fbc", "taylorseer-lite", "taylorseer-full", "magcache", "seacache"],
}


def expand_peers(names: List[str], calibrators: List[str], signals: bool) -> List[str]:
    """Peer names with the groups expanded, plus ours-<cal>-signals for --signals; in order, once."""
    expanded: List[str] = []
    for name in names:
        expanded += GROUPS[name](calibrators) if name in GROUPS else [name]
    if signals:
        expanded += [f"ours-{c}-signals" for c in calibrators]
    return list(dict.fromkeys(expanded))


def workload_args(model: str, steps: int, threads: int) -> argparse.Namespace:
    return argparse.Namespace(
        model=model, steps=steps, seed=0, batch=8, device="cpu", dtype="float32", threads=threads
    )


def run(
    model: str, steps: int, peers: List[str], threads: int, grid: str, warmups: Optional[List[int]]
) -> Dict[str, Any]:
    args = workload_args(model, steps, threads)
    workload = build_workload(args)
    reference = workload.generate(steps)
    per_step = calls_per_step(workload)
    # N/2 ... N/8: the fewer-steps floor at each (a line on the Pareto plot), TaylorSeer's closest
    # schedules to each.
    targets = sorted({max(1, steps // k) for k in (*FRACTIONS, 5, 6, 8)})
    twin = None
    results: List[Dict[str, Any]] = []
    notes: List[Dict[str, str]] = []
    sweep_grid = GRIDS[grid]
    if warmups:
        sweep_grid = dataclasses.replace(sweep_grid, warmups=tuple(warmups))
    table = make_peers(sweep_grid)
    for name in peers:
        peer = table[name]
        why = peer.unavailable(workload)
        if why:
            notes.append({"peer": name, "reason": why})
            continue
        if peer.own_model and twin is None:
            twin = build_workload(args)  # cache-dit patches its model's forward for good
        start = time.perf_counter()
        points, failures = sweep(twin if peer.own_model else workload, peer, targets, per_step)
        notes += [{"peer": name, "reason": failure} for failure in failures]
        for point in points:
            scores = metrics(workload, reference, point.output)
            results.append(
                {
                    "method": point.candidate.method,
                    "peer": name,
                    "engine": point.candidate.engine,
                    "computed": round(point.computed, 2),
                    "psnr": scores["psnr_db"] if math.isfinite(scores["psnr_db"]) else 999.0,
                    "ssim": scores["ssim"],
                    "setting": point.candidate.setting,
                }
            )
        print(f"  {name}: {len(points)} runs in {time.perf_counter() - start:.0f}s", flush=True)
    return {
        "model": model,
        "steps": steps,
        "threads": threads,
        "results": results,
        "skipped": notes,
    }


PRESET_FRACTIONS = {"quality": 1.5, "balanced": 3, "fast": 4, "ultra": 6}


def pick_presets(runs: Dict[str, Any], engine: str = "ours") -> str:
    """For each preset, the one config of ``engine`` that computes <= N/k steps on every run and
    has the best mean PSNR over the runs; each run's fewer-steps floor at N/k beside it."""
    by_config: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for entry_key, entry in runs.items():
        for result in entry["results"]:
            if result["peer"].startswith(f"{engine}-"):
                name = f"{result['method']}: {result['setting']}"
                by_config.setdefault(name, {})[entry_key] = result

    def floor(key: str, k: int) -> float:
        steps = runs[key]["steps"]
        return max(
            (
                r["psnr"]
                for r in runs[key]["results"]
                if r["peer"] == "fewer-steps" and r["computed"] <= steps / k + 1e-9
            ),
            default=-math.inf,
        )

    lines = [
        "| preset | compute ≤ N/k | config | per run: PSNR dB (computed steps) vs the floor at N/k |",
        "|---|---|---|---|",
    ]
    for preset, k in PRESET_FRACTIONS.items():
        fitting = {
            name: results
            for name, results in by_config.items()
            if set(results) == set(runs)
            and all(r["computed"] <= runs[key]["steps"] / k + 1e-9 for key, r in results.items())
        }
        if not fitting:
            lines.append(f"| {preset} | 1/{k} | — | no config fits on every run |")
            continue
        best = max(fitting, key=lambda name: sum(r["psnr"] for r in fitting[name].values()))
        cells = [
            f"{key} {r['psnr']:.1f} ({r['computed']:g}) vs {floor(key, k):.1f}"
            for key, r in fitting[best].items()
        ]
        lines.append(f"| {preset} | 1/{k} | {best} | " + "; ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        "--family",
        nargs="+",
        default=list(TRAINED),
        choices=[*TRAINED, *FAMILY_NAMES],
        help="the bench's trained workloads (--family flux is --model tiny)",
    )
    parser.add_argument("--steps", nargs="+", type=int, default=[28, 50])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--peers",
        nargs="+",
        default=DEFAULT_PEERS,
        choices=[*PEERS, *GROUPS],
        help=f"peers of bench/peers.py, or the groups {', '.join(GROUPS)}",
    )
    parser.add_argument(
        "--calibrators",
        nargs="+",
        default=list(CALIBRATORS),
        choices=list(CALIBRATORS),
        help="the calibrators of the ours / cache-dit groups and of --signals",
    )
    parser.add_argument(
        "--signals",
        action="store_true",
        help="also ours with each decision signal and compute budget (ours-<cal>-signals)",
    )
    parser.add_argument(
        "--grid",
        default="full",
        choices=list(GRIDS),
        help="the DBCache sweep of ours and cache-dit",
    )
    parser.add_argument(
        "--warmups",
        nargs="+",
        type=int,
        help="the DBCache grid's max_warmup_steps (default: --grid's)",
    )
    parser.add_argument("--out", type=Path, default=Path("fidelity_set.json"))
    parser.add_argument(
        "--report", type=Path, nargs="+", help="print the tables of earlier --out files"
    )
    parser.add_argument("--plot", type=Path, help="write the Pareto plot (PNG) of the runs")
    parser.add_argument(
        "--presets", action="store_true", help="with --report: the config of ours for each preset"
    )
    args = parser.parse_args()
    if args.report:
        runs: Dict[str, Any] = {}
        for path in args.report:
            for key, entry in json.loads(path.read_text())["runs"].items():
                if key in runs:
                    runs[key]["results"] += entry["results"]
                else:
                    runs[key] = entry
        print(frontier_markdown(runs))
        if args.presets:
            print("\n" + pick_presets(runs))
        if args.plot:
            write_pareto(runs, args.plot)
        return

    torch.set_num_threads(args.threads)
    args.model = [FAMILY_NAMES.get(model, model) for model in args.model]
    args.peers = expand_peers(args.peers, args.calibrators, args.signals)
    data: Dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    for model in args.model:
        for steps in args.steps:
            start = time.perf_counter()
            print(f"{model} @ {steps}:", flush=True)
            entry = run(model, steps, args.peers, args.threads, args.grid, args.warmups)
            entry["seconds"] = round(time.perf_counter() - start, 1)
            earlier = data["runs"].get(f"{model}@{steps}")
            if earlier:  # a rerun of some peers replaces their rows and keeps the others'
                kept = [r for r in earlier["results"] if r["peer"] not in args.peers]
                entry["results"] = kept + entry["results"]
                entry["skipped"] += [n for n in earlier["skipped"] if n["peer"] not in args.peers]
            data["runs"][f"{model}@{steps}"] = entry
            args.out.write_text(json.dumps(data, indent=1))
            print(
                f"{model} @ {steps}: {len(entry['results'])} runs in {entry['seconds']:.0f}s",
                flush=True,
            )
    print(frontier_markdown(data["runs"]))
    if args.plot:
        write_pareto(data["runs"], args.plot)


if __name__ == "__main__":
    main()
