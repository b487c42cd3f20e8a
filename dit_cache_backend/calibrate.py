"""``dit-cache calibrate``: a config that meets a target compute budget or a target fidelity.

It runs a few uncached requests of a workload (the ones ``dit-cache bench --model`` builds), and
records the chosen decision signal's curve per cache context (a probe request that measures every
step against the step before and computes them all) and, for the ``magnitude`` signal, MagCache's
per-step ratios of the transformer output's norm. From the curves it picks the threshold at which
the cache would spend the target, and writes a YAML config (cache-dit's schema plus our keys; it
loads with ``load_configs``):

* ``--target-budget f``: ``compute_budget: f`` (the guarantee) with that threshold;
* ``--target-psnr dB``: the smallest budget whose config, run against the uncached output, reaches
  the target (a bisection over budgets; every candidate is run, not predicted).

The written config is then run once more and its computed steps and PSNR are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import yaml

from .budget import warmup_steps
from .config import load_configs
from .config.extensions import DECISION_SIGNALS
from .errors import DitCacheError
from .metrics import psnr

# The probe's threshold: every measured step is compared with it, and no real signal is below it.
_PROBE_THRESHOLD = 1e-30


@dataclasses.dataclass
class Outcome:
    """One run of a config: the most steps any context and CFG branch computed, and the PSNR."""

    computed: int
    psnr: float


class Calibration:
    """A workload, its uncached reference, and the recorded signal curves of one signal."""

    def __init__(self, workload: Any, steps: int, base: Dict[str, Any]) -> None:
        self.workload, self.steps, self.base = workload, steps, dict(base)
        self.reference = workload.generate(steps)
        self.range = float(self.reference.max() - self.reference.min()) or 1.0
        self.warmup = warmup_steps(base["max_warmup_steps"], 1, 0, steps)
        if base["decision_signal"] == "magnitude":
            self.base["signal_mag_ratios"] = self._magnitude_ratios()
        self.curves = self._record_curves()

    # -- recording -------------------------------------------------------------------------------

    def _record_curves(self) -> List[List[float]]:
        """Per context and CFG branch: the signal of each step against the step before it."""
        probe = {**self.base, "max_warmup_steps": 0, "residual_diff_threshold": _PROBE_THRESHOLD}
        if "signal_mag_ratios" in probe:
            # The calibrated ratios decide alone (and may be exactly 1): probe the F residual.
            probe["decision_signal"] = "relative_l1"
            del probe["signal_mag_ratios"]
        stats = self._with_config(probe, lambda: self.workload.generate(self.steps))
        curves = []
        for cached, diffs in _branches(stats):
            if cached:
                raise DitCacheError(f"the calibration probe cached steps {cached}; its signal is 0")
            curves.append([float(diffs.get(str(s), 0.0)) for s in range(self.steps)])
        return curves

    def _magnitude_ratios(self) -> List[float]:
        """MagCache's calibration: per step, the mean per-token norm ratio of the transformer's
        output to the previous step's (first branch of each step), 1.0 for the first step."""
        outputs: List[torch.Tensor] = []

        def keep(module: Any, args: Any, output: Any) -> None:
            first = (
                output[0]
                if isinstance(output, (tuple, list))
                else getattr(output, "sample", output)
            )
            outputs.append(first.detach().float())

        handle = self.workload.transformer.register_forward_hook(keep)
        try:
            self.workload.generate(self.steps)
        finally:
            handle.remove()
        per_step = outputs[:: max(1, len(outputs) // self.steps)][: self.steps]
        ratios = [1.0]
        for previous, current in zip(per_step, per_step[1:]):
            norms = torch.linalg.vector_norm(current, dim=-1) / torch.linalg.vector_norm(
                previous, dim=-1
            )
            ratios.append(round(float(norms.mean()), 5))
        return ratios

    # -- the threshold for a budget --------------------------------------------------------------

    def computed_at(self, threshold: float) -> int:
        """Steps a fixed threshold would compute on the recorded curves (the most of any context
        and branch): the signal since the last computed step is the sum of the step signals (the
        magnitude signal: MagCache's accumulated ratio error)."""
        return max(self._computed_on(curve, threshold) for curve in self.curves)

    def _computed_on(self, curve: Sequence[float], threshold: float) -> int:
        ratios = self.base.get("signal_mag_ratios")
        computed, since, ratio = 0, 0.0, 1.0
        for step, value in enumerate(curve):
            if step < self.warmup or step == 0:
                computed += 1
                continue
            if ratios is not None:
                ratio *= ratios[step]
                since += abs(1.0 - ratio)
            else:
                since += value
            if since < threshold:
                continue
            computed, since, ratio = computed + 1, 0.0, 1.0
        return computed

    def threshold_for(self, budget: int) -> float:
        """The largest-spending threshold whose recorded schedule stays within ``budget``
        (bisection on a log scale between 1e-4 and 0.99: from 1 on, every step would cache)."""
        low, high = math.log(1e-4), math.log(0.99)
        if self.computed_at(math.exp(low)) <= budget:
            return round(math.exp(low), 6)
        for _ in range(40):
            middle = (low + high) / 2
            if self.computed_at(math.exp(middle)) <= budget:
                high = middle
            else:
                low = middle
        return round(math.exp(high), 6)

    # -- running configs -------------------------------------------------------------------------

    def config_for(self, budget: int) -> Dict[str, Any]:
        """The cache section spending ``budget`` steps of this request (written as a fraction)."""
        fraction = math.ceil(budget / self.steps * 10_000) / 10_000
        return {
            **self.base,
            "residual_diff_threshold": self.threshold_for(budget),
            "num_inference_steps": self.steps,
            "compute_budget": min(1.0, fraction),
        }

    def run(self, cache_section: Dict[str, Any]) -> Outcome:
        output: List[torch.Tensor] = []
        stats = self._with_config(
            cache_section, lambda: output.append(self.workload.generate(self.steps))
        )
        computed = max(self.steps - len(cached) for cached, _ in _branches(stats))
        return Outcome(computed, psnr(self.reference, output[0], self.range))

    def _with_config(self, cache_section: Dict[str, Any], call: Any) -> List[Any]:
        from . import disable_cache, enable_cache, summary

        options = load_configs({"cache_config": dict(cache_section)})
        target = self.workload.cache_target
        enable_cache(target, **{k: v for k, v in options.items() if v is not None})
        try:
            call()
            return summary(target, logging=False)
        finally:
            disable_cache(target)


def _branches(stats: List[Any]) -> List[Any]:
    """``(cached steps, recorded signal)`` of every context's cond branch, and of its CFG branch
    where the pipeline has one."""
    found = []
    for context in stats:
        found.append((context.cached_steps, context.residual_diffs))
        if context.cfg_cached_steps or context.cfg_residual_diffs:
            found.append((context.cfg_cached_steps, context.cfg_residual_diffs))
    return found


def smallest_budget_meeting(calibration: Calibration, target_psnr: float) -> Dict[str, Any]:
    """The config of the fewest computed steps whose run reaches ``target_psnr``: a bisection over
    budgets from the warmup to every step (every step computed is the uncached output itself)."""
    low, high = max(1, calibration.warmup), calibration.steps
    while low < high:
        middle = (low + high) // 2
        if calibration.run(calibration.config_for(middle)).psnr >= target_psnr:
            high = middle
        else:
            low = middle + 1
    return calibration.config_for(high)


def write_config(path: Path, cache_section: Dict[str, Any], note: str) -> None:
    header = "# written by dit-cache calibrate: " + note + "\n"
    path.write_text(header + yaml.safe_dump({"cache_config": cache_section}, sort_keys=False))


def calibrate_main(args: argparse.Namespace) -> int:
    from .bench import build_workload

    if (args.target_budget is None) == (args.target_psnr is None):
        raise ValueError("give exactly one of --target-budget and --target-psnr")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = {
        "Fn_compute_blocks": args.fn,
        "Bn_compute_blocks": args.bn,
        "max_warmup_steps": args.warmup,
        "decision_signal": args.signal,
    }
    calibration = Calibration(build_workload(args), args.steps, base)
    if args.target_budget is not None:
        if not 0 < args.target_budget <= 1:
            raise ValueError(
                f"--target-budget must be a fraction in (0, 1]; got {args.target_budget}"
            )
        budget = math.floor(args.target_budget * args.steps + 1e-9)
        section = {**calibration.config_for(budget), "compute_budget": args.target_budget}
        goal = f"compute_budget {args.target_budget} of {args.steps} steps"
    else:
        section = smallest_budget_meeting(calibration, args.target_psnr)
        goal = f"PSNR >= {args.target_psnr} dB at {args.steps} steps"
    outcome = calibration.run(section)
    out = Path(args.out)
    write_config(
        out,
        section,
        f"{goal} on {calibration.workload.name}; measured {outcome.computed} computed steps, "
        f"PSNR {outcome.psnr:.2f} dB",
    )
    print(
        f"wrote {out}: {outcome.computed}/{args.steps} computed steps, PSNR {outcome.psnr:.2f} dB"
    )
    met = args.target_psnr is None or outcome.psnr >= args.target_psnr
    return 0 if met else 1


def add_calibrate_parser(sub: Any) -> None:
    """Register ``dit-cache calibrate`` on the CLI's subparsers."""
    parser = sub.add_parser(
        "calibrate",
        help="write a config that meets a target compute budget or PSNR",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument(
        "--model", default="tiny", help="as dit-cache bench --model (tiny, or a pipeline directory)"
    )
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--target-budget", type=float, help="fraction of steps computed, e.g. 0.33")
    parser.add_argument("--target-psnr", type=float, help="dB against the uncached output, e.g. 45")
    parser.add_argument("--signal", default="relative_l1", choices=DECISION_SIGNALS)
    parser.add_argument("--fn", type=int, default=1, help="Fn_compute_blocks")
    parser.add_argument("--bn", type=int, default=0, help="Bn_compute_blocks")
    parser.add_argument("--warmup", type=int, default=2, help="max_warmup_steps")
    parser.add_argument("--out", default="calibrated.yaml")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument(
        "--batch", type=int, default=None, help="samples per call (tiny: 8 classes)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a photo of a cat", help="local pipelines only")
    parser.add_argument("--height", type=int, default=None, help="local pipelines only")
    parser.add_argument("--width", type=int, default=None, help="local pipelines only")
    parser.set_defaults(handler=_with_batch_default)


def _with_batch_default(args: argparse.Namespace) -> int:
    if args.batch is None:
        args.batch = 8 if args.model == "tiny" else 1
    return calibrate_main(args)
