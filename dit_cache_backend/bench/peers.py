"""Every method at matched compute, in one table: each peer is a sweep of its own knobs.

A peer turns a workload (and the computed-step counts it is matched to) into *candidates*: one
install/uninstall pair per knob setting. :func:`sweep` runs each candidate once and records its
output and computed steps; :func:`best_at` picks, for a compute limit, the candidate with the best
PSNR among those that computed at most that many steps. ``dit-cache bench`` matches each peer to
the computed steps of the configs it benchmarks; ``benchmarks/fidelity_set.py`` reports the best
run at <= N/2, N/3 and N/4 steps. Both use this table, so a method is tuned the same way in both.

A peer that cannot apply to a model (no diffusers ``CacheMixin``, no pipeline to read the
scheduler from, cache-dit missing) says why instead of failing; the report lists the reasons.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import io
import logging
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .measure import measure
from .specs import cache_options
from .workloads import Workload

logger = logging.getLogger(__name__)

CACHE_DIT_VERSION = "1.5.3"


def _nothing() -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One knob setting of a peer, ready to install on a workload."""

    method: str  # the row of the report, e.g. "diffusers FBC"
    engine: str  # the group (colour) of the plot
    setting: str  # the knob values, for the report
    install: Callable[[], None] = _nothing
    uninstall: Callable[[], Any] = _nothing
    steps: Optional[int] = None  # the run's step count when it is not the workload's
    computed: Optional[float] = None  # known by construction (else counted)


@dataclasses.dataclass
class Point:
    """A candidate's run: its output and computed transformer steps."""

    candidate: Candidate
    computed: float
    output: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str
    candidates: Callable[[Workload, Sequence[int]], List[Candidate]]
    # Why the peer cannot apply to this workload, or None.
    unavailable: Callable[[Workload], Optional[str]] = lambda workload: None
    own_model: bool = False  # cache-dit patches the transformer's forward for good


# -- the sweeps -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DBCacheGrid:
    """The DBCache F1B0 sweep shared by ours and cache-dit: thresholds x warm-ups x
    continuous-cache limits (x the calibrator)."""

    thresholds: Tuple[float, ...] = (0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.5, 1.0)
    warmups: Tuple[int, ...] = (2, 4)
    continuous: Tuple[int, ...] = (-1, 2, 4)

    def sections(self, calibrator: str) -> Iterator[Dict[str, Any]]:
        """The cache_config sections of the sweep with one calibrator."""
        for warmup in self.warmups:
            for continuous in self.continuous:
                for threshold in self.thresholds:
                    yield {
                        "Fn_compute_blocks": 1,
                        "Bn_compute_blocks": 0,
                        "max_warmup_steps": warmup,
                        "max_continuous_cached_steps": continuous,
                        "residual_diff_threshold": threshold,
                        **CALIBRATORS[calibrator],
                    }


# "coarse": a third of the runs, for long step counts on a shared machine; "extra": the thresholds
# between and below the full grid's, run as a second sweep where the full grid leaves gaps.
GRIDS = {
    "full": DBCacheGrid(),
    "coarse": DBCacheGrid(
        thresholds=(0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.5),
        warmups=(4,),
        continuous=(-1, 3),
    ),
    "extra": DBCacheGrid(thresholds=(0.01, 0.02, 0.03, 0.06, 0.2, 0.4)),
}
CALIBRATORS: Dict[str, Dict[str, Any]] = {
    "reuse": {},
    "TS1": {"enable_taylorseer": True, "taylorseer_order": 1},
    "TS2": {"enable_taylorseer": True, "taylorseer_order": 2},
    "FoCa": {"enable_foca": True},
    "DMD": {"enable_dmd": True},
}
FBC_THRESHOLDS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32, 0.5, 0.8, 1.2)
TAYLORSEER_INTERVALS = (2, 3, 4, 5, 6)
TAYLORSEER_WARMUPS = (1, 2, 3, 4)
MAGCACHE_THRESHOLDS = (0.02, 0.04, 0.06, 0.1, 0.16, 0.24, 0.4, 0.8)
MAGCACHE_SKIPS = (2, 3, 5)
SEACACHE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2)
SEACACHE_CONSECUTIVE = (2, 3, 5)
ATTENTION_SKIP_RANGES = (2, 3, 4)


def engine_candidate(
    module: Any, workload: Workload, method: str, engine: str, source: Dict[str, Any]
) -> Candidate:
    """``module.enable_cache`` (ours or cache-dit) with a config source, on the workload."""
    options = cache_options(module, source)
    target = workload.cache_target
    return Candidate(
        method,
        engine,
        ", ".join(f"{k}={v}" for k, v in source["cache_config"].items()),
        install=lambda: module.enable_cache(target, **options),
        uninstall=lambda: module.disable_cache(target),
    )


def _ours_module() -> Any:
    return importlib.import_module("dit_cache_backend")


def cache_dit_module() -> Tuple[Optional[Any], str]:
    """cache-dit 1.5.3 quietened, or None and why it is not usable."""
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


def _dbcache_peer(engine: str, calibrator: str, grid: DBCacheGrid) -> Peer:
    label = "ours" if engine == "ours" else "cache-dit"
    method = f"{label} {calibrator}"

    def candidates(workload: Workload, _targets: Sequence[int]) -> List[Candidate]:
        module = _ours_module() if engine == "ours" else cache_dit_module()[0]
        return [
            engine_candidate(module, workload, method, engine, {"cache_config": section})
            for section in grid.sections(calibrator)
        ]

    if engine == "ours":
        return Peer(f"ours-{calibrator}", candidates)
    return Peer(
        f"cache-dit-{calibrator}",
        candidates,
        unavailable=lambda workload: cache_dit_module()[1] or None,
        own_model=True,
    )


# Our decision signals and compute budgets (docs/quality.md "Decision signals and compute
# budget"), on the same DBCache grid: each signal alone, and under each budget (MC -1 only).
SIGNALS: Dict[str, Dict[str, Any]] = {
    "lowpass": {"decision_signal": "lowpass_l1"},
    "magnitude": {"decision_signal": "magnitude"},
}
BUDGETS = (0.5, 0.3334, 0.25)


def _signals_peer(calibrator: str, grid: DBCacheGrid) -> Peer:
    def candidates(workload: Workload, _targets: Sequence[int]) -> List[Candidate]:
        module = _ours_module()
        signals: Dict[str, Dict[str, Any]] = {"l1": {}, **SIGNALS}
        if callable(getattr(workload.transformer, "enable_cache", None)):
            ratios = mag_ratios(workload)  # MagCache's own calibration, as its peer uses
            signals["magnitude-cal"] = {"decision_signal": "magnitude", "signal_mag_ratios": ratios}
        found = []
        for section in grid.sections(calibrator):
            for name, extra in signals.items():
                variants = [(f"ours {calibrator} {name}", {**section, **extra})] if extra else []
                if section["max_continuous_cached_steps"] == -1:
                    variants += [
                        (
                            f"ours {calibrator} {name} budget",
                            {
                                **section,
                                **extra,
                                "compute_budget": budget,
                                "num_inference_steps": workload.total_steps,
                            },
                        )
                        for budget in BUDGETS
                    ]
                found += [
                    engine_candidate(module, workload, method, "ours", {"cache_config": config})
                    for method, config in variants
                ]
        return found

    return Peer(f"ours-{calibrator}-signals", candidates)


def _needs_mixin(*config_names: str) -> Callable[[Workload], Optional[str]]:
    def unavailable(workload: Workload) -> Optional[str]:
        if not callable(getattr(workload.transformer, "enable_cache", None)):
            return f"{type(workload.transformer).__name__} has no diffusers CacheMixin.enable_cache"
        import diffusers

        missing = [name for name in config_names if not hasattr(diffusers, name)]
        if missing:
            return f"diffusers {diffusers.__version__} has no {', '.join(missing)}"
        return None

    return unavailable


def _needs_pipeline(*config_names: str) -> Callable[[Workload], Optional[str]]:
    mixin = _needs_mixin(*config_names)

    def unavailable(workload: Workload) -> Optional[str]:
        if getattr(workload.cache_target, "scheduler", None) is None:
            return "needs a diffusers pipeline (it reads the scheduler's step and timestep)"
        return mixin(workload)

    return unavailable


def _hook_candidate(
    workload: Workload, method: str, engine: str, setting: str, make_config: Callable[[], Any]
) -> Candidate:
    transformer = workload.transformer
    return Candidate(
        method,
        engine,
        setting,
        install=lambda: transformer.enable_cache(make_config()),
        uninstall=transformer.disable_cache,
    )


def _fbc(workload: Workload, _targets: Sequence[int]) -> List[Candidate]:
    from diffusers import FirstBlockCacheConfig

    return [
        _hook_candidate(
            workload,
            "diffusers FBC",
            "fbc",
            f"threshold={t}",
            lambda t=t: FirstBlockCacheConfig(threshold=t),
        )
        for t in FBC_THRESHOLDS
    ]


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


def _taylorseer(lite: bool) -> Callable[[Workload, Sequence[int]], List[Candidate]]:
    def candidates(workload: Workload, targets: Sequence[int]) -> List[Candidate]:
        from diffusers import TaylorSeerCacheConfig

        total = workload.total_steps
        pairs = {(i, b) for i in TAYLORSEER_INTERVALS for b in TAYLORSEER_WARMUPS}
        pairs |= {taylorseer_match(total, target)[:2] for target in targets}
        orders = (1,) if lite else (1, 2)
        mode = "lite" if lite else "full"
        found = []
        for interval, before in sorted(pairs):
            for order in orders:
                found.append(
                    dataclasses.replace(
                        _hook_candidate(
                            workload,
                            f"diffusers TaylorSeer {mode}",
                            "taylorseer",
                            f"{mode}, cache_interval={interval}, "
                            f"disable_cache_before_step={before}, max_order={order}",
                            lambda i=interval, b=before, o=order: TaylorSeerCacheConfig(
                                cache_interval=i,
                                disable_cache_before_step=b,
                                max_order=o,
                                taylor_factors_dtype=workload.dtype,
                                use_lite_mode=lite,
                            ),
                        ),
                        computed=taylorseer_computed_steps(total, interval, before),
                    )
                )
        return found

    return candidates


def mag_ratios(workload: Workload) -> List[float]:
    """MagCache's own calibration run: it prints the ratios at the end of the request."""
    from diffusers import MagCacheConfig

    transformer = workload.transformer
    printed = io.StringIO()
    transformer.enable_cache(
        MagCacheConfig(calibrate=True, num_inference_steps=workload.total_steps)
    )
    try:
        with contextlib.redirect_stdout(printed):
            workload.generate(workload.total_steps)
    finally:
        transformer.disable_cache()
    lists = [
        line
        for line in printed.getvalue().splitlines()
        if line.startswith("[") and line.endswith("]")
    ]
    return [float(x) for x in ast.literal_eval(lists[0])]


def _magcache(workload: Workload, _targets: Sequence[int]) -> List[Candidate]:
    from diffusers import MagCacheConfig

    ratios = mag_ratios(workload)
    return [
        _hook_candidate(
            workload,
            "diffusers MagCache",
            "magcache",
            f"threshold={t}, max_skip_steps={k} (calibrated ratios)",
            lambda t=t, k=k: MagCacheConfig(
                threshold=t,
                max_skip_steps=k,
                retention_ratio=0.2,
                num_inference_steps=workload.total_steps,
                mag_ratios=ratios,
            ),
        )
        for k in MAGCACHE_SKIPS
        for t in MAGCACHE_THRESHOLDS
    ]


def _packed_frames(module: torch.nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """SeaCache's view of the generated latents: packed (B, T, C) tokens → per sample (C, 1, √T, √T);
    video latents (B, C, F, H, W) → per sample (C, F, H, W), as diffusers' own Wan callback."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 5:
        return list(hidden.unbind(0))
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        return None
    batch, tokens, channels = hidden.shape
    side = int(round(tokens**0.5))
    if side * side != tokens:
        return None
    return list(hidden.transpose(1, 2).reshape(batch, channels, 1, side, side).unbind(0))


@contextlib.contextmanager
def _scheduler_position(pipe: Any, name: str, **kwargs: Any) -> Iterator[None]:
    # FluxPipeline and QwenImagePipeline enter cache_context("cond") without the scheduler's
    # position, which SeaCache needs (Wan's pipeline passes it); read it from the scheduler.
    scheduler = pipe.scheduler
    index = scheduler.step_index or 0  # None until the first scheduler step
    kwargs.setdefault("step_index", index)
    kwargs.setdefault("sigma", float(scheduler.sigmas[index]))
    kwargs.setdefault("num_inference_steps", len(scheduler.timesteps))
    with type(pipe.transformer).cache_context(pipe.transformer, name, **kwargs):
        yield


def _seacache(workload: Workload, _targets: Sequence[int]) -> List[Candidate]:
    from diffusers import SeaCacheConfig

    pipe, transformer = workload.cache_target, workload.transformer

    def install(config: Any) -> None:
        transformer.cache_context = lambda name, **kw: _scheduler_position(pipe, name, **kw)
        try:
            transformer.enable_cache(config)
        except BaseException:
            del transformer.cache_context
            raise

    def uninstall() -> None:
        del transformer.cache_context
        transformer.disable_cache()

    return [
        Candidate(
            "diffusers SeaCache",
            "seacache",
            f"threshold={t}, max_consecutive_cached={k}, residual_order=1",
            install=lambda t=t, k=k: install(
                SeaCacheConfig(
                    threshold=t,
                    max_consecutive_cached=k,
                    raw_vision_callback=_packed_frames,
                )
            ),
            uninstall=uninstall,
        )
        for k in SEACACHE_CONSECUTIVE
        for t in SEACACHE_THRESHOLDS
    ]


def _attention_reuse(
    method: str, config_name: str, extra: Dict[str, Any]
) -> Callable[[Workload, Sequence[int]], List[Candidate]]:
    """PAB / FasterCache: reuse each block's attention output for ``k - 1`` of ``k`` steps.

    Every block's MLP and norms still run at every step, so their computed steps stay N.
    """

    def candidates(workload: Workload, _targets: Sequence[int]) -> List[Candidate]:
        import diffusers

        config_class = getattr(diffusers, config_name)
        pipe = workload.cache_target
        return [
            _hook_candidate(
                workload,
                method,
                "attention",
                f"spatial_attention_block_skip_range={k}, "
                + ", ".join(
                    f"{key}={value}" for key, value in extra.items() if not callable(value)
                ),
                lambda k=k: config_class(
                    spatial_attention_block_skip_range=k,
                    current_timestep_callback=lambda: pipe.current_timestep,
                    **extra,
                ),
            )
            for k in ATTENTION_SKIP_RANGES
        ]

    return candidates


def _fewer_steps(workload: Workload, targets: Sequence[int]) -> List[Candidate]:
    return [
        Candidate(
            "fewer steps",
            "fewer-steps",
            f"num_inference_steps={steps}",
            steps=steps,
            computed=steps,
        )
        for steps in sorted({t for t in targets if 1 <= t < workload.total_steps})
    ]


def make_peers(grid: DBCacheGrid = GRIDS["full"]) -> Dict[str, Peer]:
    """Every peer by name; ``grid`` is the DBCache sweep of ours and cache-dit."""
    peers = [
        *(_dbcache_peer("ours", c, grid) for c in CALIBRATORS),
        *(_signals_peer(c, grid) for c in CALIBRATORS),
        *(_dbcache_peer("cache-dit", c, grid) for c in CALIBRATORS if c != "reuse"),
        Peer("fbc", _fbc, _needs_mixin("FirstBlockCacheConfig")),
        Peer("taylorseer-lite", _taylorseer(True), _needs_mixin("TaylorSeerCacheConfig")),
        Peer("taylorseer-full", _taylorseer(False), _needs_mixin("TaylorSeerCacheConfig")),
        Peer("magcache", _magcache, _needs_mixin("MagCacheConfig")),
        Peer("seacache", _seacache, _needs_pipeline("SeaCacheConfig")),
        Peer(
            "pab",
            _attention_reuse(
                "diffusers PAB",
                "PyramidAttentionBroadcastConfig",
                {"spatial_attention_timestep_skip_range": (100, 800)},
            ),
            _needs_pipeline("PyramidAttentionBroadcastConfig"),
        ),
        Peer(
            "fastercache",
            # The tiny pipelines make one transformer call per step (no batched CFG to split),
            # so only FasterCache's attention reuse applies: is_guidance_distilled turns off the
            # CFG part.
            _attention_reuse(
                "diffusers FasterCache",
                "FasterCacheConfig",
                {
                    "spatial_attention_timestep_skip_range": (-1, 681),
                    "attention_weight_callback": lambda _: 0.5,
                    "is_guidance_distilled": True,
                },
            ),
            _needs_pipeline("FasterCacheConfig"),
        ),
        Peer("fewer-steps", _fewer_steps),
    ]
    return {peer.name: peer for peer in peers}


PEERS: Dict[str, Peer] = make_peers()


# -- running and picking ----------------------------------------------------------------------


def sweep(
    workload: Workload,
    peer: Peer,
    targets: Sequence[int],
    per_step: int = 1,
    progress: Optional[Callable[[str], None]] = None,
) -> Tuple[List[Point], List[str]]:
    """Run every candidate of ``peer`` once; a candidate that fails is skipped with its reason."""
    points: List[Point] = []
    failures: List[str] = []
    for candidate in peer.candidates(workload, targets):
        if progress is not None:
            progress(f"{peer.name}: {candidate.setting}")
        try:
            output, counted = measure(
                workload,
                candidate.install,
                candidate.uninstall,
                candidate.steps or workload.total_steps,
                per_step,
            )
        except Exception as error:  # noqa: BLE001 - a setting the peer refuses is reported
            failures.append(f"{candidate.setting}: {type(error).__name__}: {error}")
            continue
        computed = counted if candidate.computed is None else candidate.computed
        points.append(Point(candidate, computed, output))
    return points, failures


def best_at(
    points: Sequence[Point], limit: float, score: Callable[[torch.Tensor], float]
) -> Optional[Point]:
    """The best-scoring point among those that computed at most ``limit`` steps."""
    inside = [p for p in points if p.computed <= limit + 1e-9]
    if not inside:
        return None
    return max(inside, key=lambda p: (_finite(score(p.output)), -p.computed))


def _finite(value: float) -> float:
    return -math.inf if math.isnan(value) else value
