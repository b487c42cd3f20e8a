"""The run: plan the entries, probe each once, match the peers to their compute, time them all.

Protocol: one probe run per entry (untimed: records the computed steps, the output used for the
fidelity metrics and the memory the cache holds), ``--warmup`` untimed rounds, then ``--repeats``
timed rounds. Every round runs every entry once, in a rotated order, so load on a shared machine
hits all entries alike; enabling/disabling a cache happens outside the timed region.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from .measure import CallCounter, calls_per_step, context_tensors, storages_bytes, sync
from .report import build_report
from .peers import PEERS, best_at, cache_dit_module, sweep
from .specs import ConfigSource, cache_options, config_tag, describe, resolve_config
from .workloads import Workload, build_workload

logger = logging.getLogger(__name__)

# "cache-dit": cache-dit 1.5.3 with each benchmarked config (parity); the others are sweeps
# matched to the configs' computed steps (peers.PEERS).
DEFAULT_PEERS = [
    "cache-dit",
    "cache-dit-TS1",
    "cache-dit-TS2",
    "cache-dit-FoCa",
    "cache-dit-DMD",
    "fbc",
    "taylorseer-lite",
    "taylorseer-full",
    "magcache",
    "seacache",
    "pab",
    "fastercache",
    "fewer-steps",
]
PEER_NAMES = ("cache-dit", *PEERS)


@dataclasses.dataclass
class Entry:
    """One benchmarked variant: install (untimed), generate (timed), uninstall (untimed)."""

    name: str
    engine: str  # baseline | ours | cache-dit | a peer's group (peers.Candidate.engine)
    config: Optional[str] = None
    steps: Optional[int] = None  # None: the workload's total
    install: Callable[[], None] = lambda: None
    uninstall: Callable[[], Optional[int]] = lambda: None  # returns computed steps if it knows
    matched_to: Optional[str] = None
    setting: Optional[str] = None
    tag: Optional[str] = None
    workload: Optional[Workload] = None  # its own model instance (cache-dit patches the model)
    times: List[float] = dataclasses.field(default_factory=list)
    computed: Optional[float] = None
    output: Optional[torch.Tensor] = None
    cache_peak_bytes: Optional[int] = None
    cuda_peak_bytes: Optional[int] = None


def _engine_entry(
    module: Any, workload: Workload, name: str, engine: str, spec: str, source: ConfigSource
) -> Entry:
    """``module.enable_cache`` (ours or cache-dit) with one config; the engine counts the steps."""
    options = cache_options(module, source)
    target = workload.cache_target

    def uninstall() -> Optional[int]:
        stats = module.summary(target, logging=False)
        module.disable_cache(target)
        return workload.total_steps - len(stats[0].cached_steps) if stats else None

    return Entry(
        name,
        engine,
        spec,
        install=lambda: module.enable_cache(target, **options),
        uninstall=uninstall,
        tag=config_tag(options, spec),
        setting=describe(source),
        workload=workload,
    )


def plan_entries(workload: Workload, specs: List[str]) -> List[Entry]:
    """Baseline and ``ours`` entries; peers are added after the probe (they match its compute)."""
    ours = importlib.import_module("dit_cache_backend")
    entries = [Entry("uncached", "baseline")]
    for spec in specs:
        source = resolve_config(spec, workload.total_steps)
        entries.append(_engine_entry(ours, workload, spec, "ours", spec, source))
    return entries


def add_peers(
    workload: Workload,
    specs: List[str],
    ours: List[Entry],
    peers: List[str],
    notes: List[Dict[str, str]],
    progress: Any,
    rebuild: Callable[[], Workload],
    reference: torch.Tensor,
) -> List[Entry]:
    """cache-dit with each config, then every sweep peer at each config's computed steps.

    For each computed-step count of ``ours`` below the total, a sweep peer contributes its most
    faithful candidate (PSNR against ``reference``, the uncached output) that computes at most that many steps.
    cache-dit runs on a second, identical instance of the model: its enable_cache patches the
    transformer's forward for good (disable_cache leaves the patch), which would change what the
    other entries run.
    """
    from ..metrics import psnr

    added: List[Entry] = []
    total = workload.total_steps
    twin: List[Workload] = []

    def own_model() -> Workload:
        if not twin:
            twin.append(rebuild())
        return twin[0]

    if "cache-dit" in peers:
        module, why = cache_dit_module()
        if module is None:
            notes.append({"peer": "cache-dit", "reason": why})
        else:
            for spec in specs:
                try:
                    source = resolve_config(spec, total)
                    entry = _engine_entry(
                        module, own_model(), f"cache-dit {spec}", "cache-dit", spec, source
                    )
                except Exception as error:  # noqa: BLE001 - a config cache-dit rejects is reported
                    notes.append(
                        {"peer": f"cache-dit {spec}", "reason": f"{type(error).__name__}: {error}"}
                    )
                    continue
                entry.matched_to = spec
                added.append(entry)
    targets = sorted(
        {int(e.computed) for e in ours if e.computed is not None and e.computed < total}
    )
    if not targets:
        return added
    data_range = float(reference.max() - reference.min()) or 1.0
    per_step = calls_per_step(workload)

    def score(output: torch.Tensor) -> float:
        return psnr(reference, output, data_range)

    for name in peers:
        if name == "cache-dit":
            continue
        peer = PEERS[name]
        why = peer.unavailable(workload)
        if why:
            notes.append({"peer": name, "reason": why})
            continue
        target_workload = own_model() if peer.own_model else workload
        points, failures = sweep(
            target_workload, peer, targets, per_step, progress=progress.set_postfix_str
        )
        for failure in failures:
            notes.append({"peer": name, "reason": failure})
        chosen: Dict[int, List[int]] = {}  # id(point) → the targets it is the best run for
        by_id = {id(point): point for point in points}
        for target in targets:
            best = best_at(points, target, score)
            if best is None:
                notes.append({"peer": name, "reason": f"no setting computes <= {target} steps"})
                continue
            chosen.setdefault(id(best), []).append(target)
        for key, matched in chosen.items():
            point = by_id[key]
            candidate = point.candidate
            added.append(
                Entry(
                    f"{candidate.method} @{'/'.join(map(str, matched))}",
                    candidate.engine,
                    steps=candidate.steps,
                    install=candidate.install,
                    uninstall=candidate.uninstall,
                    matched_to=", ".join(e.name for e in ours if e.computed in matched),
                    setting=candidate.setting,
                    workload=target_workload,
                )
            )
            added[-1].computed = point.computed
    return added


def _probe(workload: Workload, entry: Entry, cuda_base: int) -> None:
    """Untimed run: output, computed steps and the memory the cache holds at its peak."""
    workload = entry.workload or workload
    transformer = workload.transformer
    peak = {"bytes": 0}
    counter = CallCounter(transformer)
    target = workload.cache_target

    def sample(*_: Any) -> None:
        peak["bytes"] = max(peak["bytes"], storages_bytes(context_tensors(target)))

    handle = transformer.register_forward_hook(sample) if entry.engine == "ours" else None
    before = 0
    if workload.device.type == "cuda":
        sync(workload.device)
        torch.cuda.reset_peak_memory_stats(workload.device)
        # Relative to what is allocated now (weights of both model instances, inputs), so the
        # figure is the run's growth; the baseline's growth (cuda_base) is subtracted.
        before = torch.cuda.memory_allocated(workload.device)
    entry.install()
    try:
        entry.output = workload.generate(entry.steps or workload.total_steps)
        sync(workload.device)
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
    elif entry.computed is None:  # a sweep peer keeps the compute its sweep established
        entry.computed = counter.count


def _timed(workload: Workload, entry: Entry) -> float:
    workload = entry.workload or workload
    entry.install()
    try:
        sync(workload.device)
        start = time.perf_counter()
        workload.generate(entry.steps or workload.total_steps)
        sync(workload.device)
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


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    peers = check_peers(args)
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
            entries[0].output,
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
    return build_report(workload, entries, notes, args, peers)


def _warm(workload: Workload) -> Workload:
    workload.generate(workload.total_steps)
    return workload


def check_peers(args: argparse.Namespace) -> List[str]:
    if args.no_peers:
        return []
    peers = list(args.peers)
    unknown = [p for p in peers if p not in PEER_NAMES]
    if unknown:
        raise ValueError(f"unknown --peers {unknown}; choose from {', '.join(PEER_NAMES)}")
    return peers
