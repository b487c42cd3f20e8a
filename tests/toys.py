"""Toy transformers and toy pipelines for the reference-parity tests.

* :func:`linear_toy` — spec §12.1: 8 Pattern_3 blocks, block *i* returns
  ``hidden + temb·(i+1)``. Input ``ones(1, 4, 8)``, ``temb`` = the scalar ``t`` of the step
  (uncond: ``2t + 0.3(t−1)``), so the F1 residual is ``t`` and the true output is ``1 + 36t``.
* :func:`two_stream_toy` — spec §12.6 / §12.10: Pattern_0 blocks adding ``t·w`` to ``h`` and
  ``encoder_scale·t·w`` (or ``t``) to ``e``, optionally followed by uncached trailing blocks.
* :func:`random_toy` / :func:`random_schedule` — seeded random transformers for every
  ForwardPattern 0–5 and smoothly drifting per-step inputs, for the differential tests.

Every toy transformer exposes ``transformer_blocks`` (the list to cache) and
``inputs(entry, branch)``: the keyword arguments of its forward for one schedule entry and one CFG
branch (``"cond"`` or ``"uncond"``). :func:`make_pipeline` wraps a toy in a ``DiffusionPipeline``
whose ``__call__(schedule)`` calls the transformer once per entry, or twice (cond, then uncond) for
CFG pipelines, and returns the list of transformer outputs in call order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from diffusers import DiffusionPipeline
from torch import nn

COND, UNCOND = "cond", "uncond"
TOKENS, ENCODER_TOKENS, DIM = 4, 3, 8
# Block outputs per ForwardPattern (spec §5): which streams, in which order.
PATTERN_OUTPUTS: Dict[int, Tuple[str, ...]] = {
    0: ("h", "e"),
    1: ("e", "h"),
    2: ("h",),
    3: ("h",),
    4: ("h", "e"),
    5: ("e", "h"),
}
DUAL_STREAM_PATTERNS = (0, 1, 2)  # blocks take (hidden_states, encoder_hidden_states, ...)


def uncond_temb(t: float) -> float:
    """The uncond branch's scalar of the §12.4 CFG toy."""
    return 2 * t + 0.3 * (t - 1)


# ---------------------------------------------------------------------------------------------
# §12.1 linear toy
# ---------------------------------------------------------------------------------------------


class ScaledTembBlock(nn.Module):
    """Pattern_3: ``hidden_states + temb * weight``."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return hidden_states + temb * self.weight


class LinearToy(nn.Module):
    def __init__(self, num_blocks: int = 8) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(ScaledTembBlock(i + 1) for i in range(num_blocks))

    def inputs(self, t: float, branch: str) -> Dict[str, torch.Tensor]:
        temb = t if branch == COND else uncond_temb(t)
        return {"hidden_states": torch.ones(1, TOKENS, DIM), "temb": torch.tensor(temb)}

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, temb)
        return hidden_states


def linear_toy() -> LinearToy:
    return LinearToy()


# ---------------------------------------------------------------------------------------------
# §12.6 / §12.10 two-stream toy
# ---------------------------------------------------------------------------------------------


class TwoStreamBlock(nn.Module):
    """Pattern_0: ``(h + t·weight, e + t·encoder_weight)``."""

    def __init__(self, weight: float, encoder_weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.encoder_weight = encoder_weight

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return (
            hidden_states + temb * self.weight,
            encoder_hidden_states + temb * self.encoder_weight,
        )


class TwoStreamToy(nn.Module):
    """Cached ``transformer_blocks`` followed by uncached ``single_transformer_blocks``."""

    def __init__(
        self, blocks: List[TwoStreamBlock], trailing: List[TwoStreamBlock], initial: float
    ) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(blocks)
        if trailing:  # no empty list attribute: cache-dit's summary() fails on one
            self.single_transformer_blocks = nn.ModuleList(trailing)
        self.initial = initial

    def inputs(self, t: float, branch: str) -> Dict[str, torch.Tensor]:
        state = torch.full((1, TOKENS, DIM), self.initial)
        return {
            "hidden_states": state,
            "encoder_hidden_states": state.clone(),
            "temb": torch.tensor(t),
        }

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        for block in [*self.transformer_blocks, *getattr(self, "single_transformer_blocks", [])]:
            hidden_states, encoder_hidden_states = block(hidden_states, encoder_hidden_states, temb)
        return hidden_states, encoder_hidden_states


def bn_toy() -> TwoStreamToy:
    """§12.6: h = e = zeros; 6 blocks w = 1..6 (encoder 10·w), then 4 uncached w = 101..104."""
    return TwoStreamToy(
        [TwoStreamBlock(w, 10 * w) for w in range(1, 7)],
        [TwoStreamBlock(w, 10 * w) for w in range(101, 105)],
        initial=0.0,
    )


def prune_toy() -> TwoStreamToy:
    """§12.10: h = e = ones; 8 blocks, h += t·(i+1), e += t."""
    return TwoStreamToy([TwoStreamBlock(i + 1, 1) for i in range(8)], [], initial=1.0)


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


class ToyPipeline(DiffusionPipeline):
    """``__call__(schedule)``: one transformer call per entry (two, cond then uncond, for CFG)."""

    branches: Tuple[str, ...] = (COND,)

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.register_modules(transformer=transformer)

    def __call__(self, schedule: Sequence[Any]) -> List[Any]:
        return [
            self.transformer(**self.transformer.inputs(entry, branch))
            for entry in schedule
            for branch in self.branches
        ]


def make_pipeline(transformer: nn.Module, *, cfg: bool = False) -> ToyPipeline:
    """A pipeline of a class of its own: cache-dit patches ``__call__`` on the pipeline class."""
    name = "ToyCFGPipeline" if cfg else "ToyPipeline"
    pipeline_class = type(name, (ToyPipeline,), {"branches": (COND, UNCOND) if cfg else (COND,)})
    return pipeline_class(transformer)


# ---------------------------------------------------------------------------------------------
# Random toys for every ForwardPattern
# ---------------------------------------------------------------------------------------------


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


class RandomDualStreamBlock(nn.Module):
    """Patterns 0–2: a small gated update of both streams, each seeing the other and ``temb``."""

    def __init__(self, pattern: int, generator: torch.Generator) -> None:
        super().__init__()
        self.pattern = pattern
        self.weights = nn.Parameter(_randn(generator, 6, DIM, DIM, scale=0.5 / math.sqrt(DIM)))
        self.gains = nn.Parameter(0.2 + 0.3 * torch.rand(2, generator=generator))

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor
    ) -> Any:
        w = self.weights
        context = encoder_hidden_states.mean(dim=1, keepdim=True)
        pooled = hidden_states.mean(dim=1, keepdim=True)
        h = hidden_states + self.gains[0] * torch.tanh(
            hidden_states @ w[0] + context @ w[1] + temb @ w[2]
        )
        e = encoder_hidden_states + self.gains[1] * torch.tanh(
            encoder_hidden_states @ w[3] + pooled @ w[4] + temb @ w[5]
        )
        return _pack(self.pattern, h, e)


class RandomSingleStreamBlock(nn.Module):
    """Patterns 3–5: gated update of ``h``; 4/5 also emit an encoder output (not fed forward)."""

    def __init__(self, pattern: int, generator: torch.Generator) -> None:
        super().__init__()
        self.pattern = pattern
        self.weights = nn.Parameter(_randn(generator, 3, DIM, DIM, scale=0.5 / math.sqrt(DIM)))
        self.gain = nn.Parameter(0.2 + 0.3 * torch.rand(1, generator=generator))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> Any:
        w = self.weights
        h = hidden_states + self.gain * torch.tanh(hidden_states @ w[0] + temb @ w[1])
        return _pack(self.pattern, h, torch.tanh(h @ w[2]))


def _pack(pattern: int, h: torch.Tensor, e: torch.Tensor) -> Any:
    streams = {"h": h, "e": e}
    out = tuple(streams[name] for name in PATTERN_OUTPUTS[pattern])
    return out[0] if len(out) == 1 else out


def _unpack(pattern: int, out: Any) -> Dict[str, torch.Tensor]:
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    return dict(zip(PATTERN_OUTPUTS[pattern], outs))


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """The transformer's keyword arguments for one diffusion step, per CFG branch."""

    cond: Dict[str, torch.Tensor]
    uncond: Dict[str, torch.Tensor]


class RandomToy(nn.Module):
    """Random blocks of one ForwardPattern; returns a tuple of every output stream."""

    def __init__(self, pattern: int, num_blocks: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        block_class = (
            RandomDualStreamBlock if pattern in DUAL_STREAM_PATTERNS else RandomSingleStreamBlock
        )
        self.pattern = pattern
        self.transformer_blocks = nn.ModuleList(
            block_class(pattern, generator) for _ in range(num_blocks)
        )

    def inputs(self, entry: StepInputs, branch: str) -> Dict[str, torch.Tensor]:
        return getattr(entry, branch)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, ...]:
        streams = {"h": hidden_states}
        for block in self.transformer_blocks:
            if self.pattern in DUAL_STREAM_PATTERNS:
                out = block(hidden_states, encoder_hidden_states, temb=temb)
            else:
                out = block(hidden_states, temb=temb)
            streams = _unpack(self.pattern, out)
            hidden_states = streams["h"]
            encoder_hidden_states = streams.get("e", encoder_hidden_states)
        if self.pattern in DUAL_STREAM_PATTERNS:
            return hidden_states, encoder_hidden_states
        return tuple(streams[name] for name in ("h", "e") if name in streams)


def random_toy(pattern: int, num_blocks: int, seed: int) -> RandomToy:
    return RandomToy(pattern, num_blocks, seed)


def random_schedule(pattern: int, num_steps: int, drift: float, seed: int) -> List[StepInputs]:
    """Random-walk inputs: each step moves every input by ``drift`` × N(0, 1) per element.

    The uncond branch sees the same latents with its own ``temb`` (and encoder states for
    dual-stream patterns), so its residuals — and decisions — differ from the cond branch's.
    """
    generator = torch.Generator().manual_seed(seed)

    def walk(*shape: int) -> List[torch.Tensor]:
        start = _randn(generator, *shape)
        steps = _randn(generator, num_steps, *shape, scale=drift)
        return list(start + torch.cumsum(steps, dim=0))

    hidden = walk(1, TOKENS, DIM)
    temb = {branch: walk(1, 1, DIM) for branch in (COND, UNCOND)}
    encoder = {branch: walk(1, ENCODER_TOKENS, DIM) for branch in (COND, UNCOND)}

    def kwargs(step: int, branch: str) -> Dict[str, torch.Tensor]:
        out = {"hidden_states": hidden[step], "temb": temb[branch][step]}
        if pattern in DUAL_STREAM_PATTERNS:
            out["encoder_hidden_states"] = encoder[branch][step]
        return out

    return [StepInputs(kwargs(s, COND), kwargs(s, UNCOND)) for s in range(num_steps)]
