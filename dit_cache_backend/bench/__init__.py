"""``dit-cache bench``: speed, memory and fidelity of cache configs against the uncached baseline.

For one workload (a trained tiny model, a random-weight "medium" FLUX-like transformer for CPU
speed, a FLUX.1-dev-sized transformer on CUDA, or a local diffusers pipeline directory) and one or
more cache configs, every entry runs with the same seeds and inputs:

* the uncached baseline;
* each config with this engine (``ours``);
* peers, when installed: cache-dit 1.5.3 with the same config, and every method of
  :data:`peers.PEERS` (cache-dit with each calibrator, diffusers' FirstBlockCache, TaylorSeerCache
  lite and full, MagCache, SeaCache, PAB, FasterCache, fewer steps), each swept over its own knob
  and represented by its most faithful run at each config's computed steps.

The speedup is ``median(baseline) / median(entry)``; the ideal speedup is ``total / computed``
steps and the efficiency their ratio. See ``docs/benchmarks.md``.

Modules, one concept each: ``specs`` (what ``--config`` names), ``workloads`` (what runs),
``measure`` (computed steps, cache memory, PSNR/SSIM), ``peers`` (the matched-compute sweeps),
``runner`` (probe, match, time), ``report`` (JSON, Markdown, plots), ``cli`` (the subcommand).
"""

from .cli import add_bench_parser, bench_main, dry_run
from .measure import CallCounter, calls_per_step, context_tensors, measure, metrics
from .peers import (
    CACHE_DIT_VERSION,
    GRIDS,
    PEERS,
    DBCacheGrid,
    Candidate,
    Peer,
    Point,
    best_at,
    mag_ratios,
    make_peers,
    sweep,
    taylorseer_computed_steps,
    taylorseer_match,
)
from .report import (
    SCHEMA,
    build_report,
    frontier,
    frontier_markdown,
    markdown_table,
    pareto_front,
    write_outputs,
    write_pareto,
    write_plot,
)
from .runner import DEFAULT_PEERS, PEER_NAMES, Entry, add_peers, plan_entries, run_benchmark
from .specs import BUILTIN_HELP, DEFAULT_CONFIGS, cache_options, config_tag, resolve_config
from .workloads import (
    DTYPES,
    FLUX_DEV_CONFIG,
    FLUX_DEV_TOKENS,
    MEDIUM_CONFIG,
    MEDIUM_TOKENS,
    TRAINED,
    Workload,
    loop_workload,
    build_workload,
)

__all__ = [
    "BUILTIN_HELP",
    "CACHE_DIT_VERSION",
    "CallCounter",
    "Candidate",
    "DBCacheGrid",
    "GRIDS",
    "DEFAULT_CONFIGS",
    "DEFAULT_PEERS",
    "DTYPES",
    "Entry",
    "FLUX_DEV_CONFIG",
    "FLUX_DEV_TOKENS",
    "MEDIUM_CONFIG",
    "MEDIUM_TOKENS",
    "PEERS",
    "PEER_NAMES",
    "Peer",
    "Point",
    "SCHEMA",
    "TRAINED",
    "Workload",
    "add_bench_parser",
    "add_peers",
    "bench_main",
    "best_at",
    "build_report",
    "build_workload",
    "loop_workload",
    "cache_options",
    "calls_per_step",
    "config_tag",
    "context_tensors",
    "dry_run",
    "frontier",
    "frontier_markdown",
    "mag_ratios",
    "make_peers",
    "markdown_table",
    "measure",
    "metrics",
    "pareto_front",
    "plan_entries",
    "resolve_config",
    "run_benchmark",
    "sweep",
    "taylorseer_computed_steps",
    "taylorseer_match",
    "write_outputs",
    "write_pareto",
    "write_plot",
]
