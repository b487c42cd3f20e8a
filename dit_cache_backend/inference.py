"""Which block lists of an unregistered transformer to cache, and how, found without running it.

At ``enable_cache`` time there are no inputs, so nothing is probed. The adapter is read from:

* the module tree: direct-child ``nn.ModuleList``s named like block lists (``blocks``, ``layers``,
  ``transformer_blocks``, ``double_stream_blocks`` …) whose blocks all have the same class;
* each block's ``forward`` signature: its first parameter is the hidden-stream argument (Z-Image's
  blocks take ``x``), and ``encoder_hidden_states`` marks a block that takes the text stream;
* the transformer's ``forward`` source, parsed (never executed): the loop ``for block in
  self.<list>`` shows which lists run, which variables are threaded through the blocks and in which
  order the results are unpacked — ``encoder_hidden_states, hidden_states = block(...)`` is
  Pattern_1. When the source cannot be read, only a block whose return annotation is a single tensor
  is accepted (Pattern_2/3), since a pair's order is not in its annotation.

A cached list is run by one stand-in module, so the model's loop body runs once per list instead of
once per block. That is only exact when the body does nothing but call the block; lists whose loop
uses the block index, changes a stream between blocks, or that ``forward`` touches outside the loop
(``self.transformer_blocks[0]``) are left alone. When nothing is left, or the evidence is ambiguous,
:func:`infer_adapter` raises an :class:`UnsupportedModelError` that lists the lists it found and
shows how to pass a ``BlockAdapter`` or register the class.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import re
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .block_adapter import TRANSFORMER_ATTRS, BlockAdapter, is_pipeline
from .errors import UnsupportedModelError
from .patterns import ENCODER, HIDDEN, ForwardPattern

logger = logging.getLogger(__name__)

BLOCK_LIST_NAME = re.compile(r"(^|_)(blocks|layers)$")
# A grad-checkpointing call receives the block as an argument instead of calling it.
CHECKPOINT_CALL = "_gradient_checkpointing_func"


@dataclasses.dataclass(frozen=True)
class BlockList:
    """A candidate block list: a direct child ModuleList of one block class."""

    attr: str
    blocks: torch.nn.ModuleList

    @property
    def block(self) -> torch.nn.Module:
        first = self.blocks[0]
        inner = getattr(first, "block", None)
        return inner if isinstance(inner, torch.nn.Module) else first  # HiDream-style wrappers

    def parameters(self) -> List[str]:
        signature = inspect.signature(self.block.forward)
        return [
            name
            for name, p in signature.parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def describe(self) -> str:
        try:
            arguments = ", ".join(self.parameters())
        except (TypeError, ValueError):
            arguments = "?"
        return f"{self.attr} ({len(self.blocks)} x {type(self.blocks[0]).__name__}({arguments}))"


@dataclasses.dataclass(frozen=True)
class InferredList:
    """What :func:`infer_adapter` decided for one block list."""

    attr: str
    pattern: ForwardPattern
    hidden_argument: str
    encoder_argument: str


class _Refusal(Exception):
    """Why one block list cannot be cached generically (collected into the final error)."""


def candidate_lists(transformer: torch.nn.Module) -> List[BlockList]:
    """Direct-child ModuleLists named like block lists, non-empty, of a single block class."""
    found = []
    for attr, child in transformer.named_children():
        if not isinstance(child, torch.nn.ModuleList) or len(child) == 0:
            continue
        if not BLOCK_LIST_NAME.search(attr):
            continue
        if len({type(block) for block in child}) != 1:
            continue
        found.append(BlockList(attr, child))
    return found


def infer_lists(transformer: torch.nn.Module) -> List[InferredList]:
    """The cacheable block lists of ``transformer``, in module order; raises when none is sure."""
    candidates = candidate_lists(transformer)
    if not candidates:
        return []
    forward = _forward_tree(type(transformer))
    inferred, refusals = [], []
    for candidate in candidates:
        try:
            if forward is None:
                inferred.append(_from_annotation(candidate, single=len(candidates) == 1))
            else:
                result = _from_forward(candidate, forward)
                if result is not None:
                    inferred.append(result)
        except _Refusal as refusal:
            refusals.append(f"{candidate.attr}: {refusal}")
    if not inferred:
        reasons = refusals or [
            f"forward of {type(transformer).__name__} runs none of them in a loop"
        ]
        raise _unsupported(transformer, candidates, reasons)
    if len({(i.hidden_argument, i.encoder_argument) for i in inferred}) > 1:
        raise _unsupported(
            transformer,
            candidates,
            ["the lists name their hidden/encoder arguments differently; one adapter has one pair"],
        )
    for refusal in refusals:
        logger.warning("dit_cache_backend: not caching %s.%s", type(transformer).__name__, refusal)
    return inferred


def infer_adapter(obj: Any) -> Optional[BlockAdapter]:
    """A BlockAdapter for an unregistered pipeline or transformer, None if it has no block list.

    Raises :class:`UnsupportedModelError` when block lists exist but how to cache them is not
    certain; the message lists them and shows the explicit alternatives.
    """
    pipe = obj if is_pipeline(obj) else None
    if pipe is not None:
        transformers = [
            getattr(pipe, attr)
            for attr in TRANSFORMER_ATTRS
            if isinstance(getattr(pipe, attr, None), torch.nn.Module)
        ]
    elif isinstance(obj, torch.nn.Module):
        transformers = [obj]
    else:
        return None
    per_transformer = [infer_lists(transformer) for transformer in transformers]
    if not transformers or not all(per_transformer):
        return None
    arguments = {
        (i.hidden_argument, i.encoder_argument) for lists in per_transformer for i in lists
    }
    if len(arguments) > 1:
        raise _unsupported(
            transformers[0],
            candidate_lists(transformers[0]),
            ["the transformers name their block arguments differently"],
        )
    ((hidden_argument, encoder_argument),) = arguments
    blocks = [
        [getattr(t, i.attr) for i in lists]
        for t, lists in zip(transformers, per_transformer, strict=True)
    ]
    names = [[i.attr for i in lists] for lists in per_transformer]
    patterns = [[i.pattern for i in lists] for lists in per_transformer]
    single = len(transformers) == 1
    adapter = BlockAdapter(
        pipe=pipe,
        transformer=transformers[0] if single else transformers,
        blocks=blocks[0] if single else blocks,
        blocks_name=names,
        forward_pattern=patterns,
        # Our signature check knows only the standard names; the inference already read the rest.
        check_forward_pattern=hidden_argument == HIDDEN and encoder_argument == ENCODER,
        hidden_argument=hidden_argument,
        encoder_argument=encoder_argument,
    )
    logger.info(
        "dit_cache_backend: inferred block lists of %s: %s",
        ", ".join(type(t).__name__ for t in transformers),
        "; ".join(
            f"{n} {p.name}"
            for ns, ps in zip(names, patterns, strict=True)
            for n, p in zip(ns, ps, strict=True)
        ),
    )
    return adapter


# -- reading the block signature ----------------------------------------------------------------


def _from_annotation(candidate: BlockList, *, single: bool) -> InferredList:
    """Without the forward source: accept one list whose blocks return a single tensor."""
    if not single:
        raise _Refusal("the forward source is unavailable, so which lists it runs is unknown")
    parameters = _parameters(candidate)
    annotation = inspect.signature(candidate.block.forward).return_annotation
    if _tensor_count(annotation) != 1:
        raise _Refusal(
            "the forward source is unavailable and the block's return annotation "
            f"({_annotation_text(annotation)}) is not a single tensor, "
            "so the output order is unknown"
        )
    takes_encoder = ENCODER in parameters
    logger.warning(
        "dit_cache_backend: %s: forward source unavailable; pattern taken from the block signature "
        "and return annotation without checking the block loop",
        candidate.attr,
    )
    return InferredList(
        candidate.attr,
        ForwardPattern.Pattern_2 if takes_encoder else ForwardPattern.Pattern_3,
        parameters[0],
        ENCODER,
    )


def _parameters(candidate: BlockList) -> List[str]:
    try:
        parameters = candidate.parameters()
    except (TypeError, ValueError) as error:
        raise _Refusal(f"its block forward has no readable signature ({error})") from None
    if not parameters:
        raise _Refusal("its block forward takes only *args/**kwargs")
    return parameters


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Signature.empty:
        return "none"
    return annotation if isinstance(annotation, str) else repr(annotation)


def _tensor_count(annotation: Any) -> int:
    """How many tensors a return annotation promises (0 when there is none)."""
    text = _annotation_text(annotation).replace("typing.", "")
    if text == "none":
        return 0
    if text.startswith(("<class 'torch.", "torch.")) and "," not in text:
        return 1 if "Tensor" in text else 0
    return text.count("Tensor")


# -- reading the transformer's forward ----------------------------------------------------------


def _forward_tree(cls: type) -> Optional[ast.FunctionDef]:
    try:
        source = textwrap.dedent(inspect.getsource(cls.forward))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    function = tree.body[0] if tree.body else None
    return function if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _self_attr(node: ast.AST, attr: str) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == attr
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


@dataclasses.dataclass(frozen=True)
class _Loop:
    node: ast.For
    block: str
    index: Optional[str]


def _loops_over(forward: ast.AST, attr: str) -> List[_Loop]:
    """``for block in self.<attr>`` and ``for i, block in enumerate(self.<attr>)`` loops."""
    loops = []
    for node in ast.walk(forward):
        if not isinstance(node, ast.For):
            continue
        iterable, target = node.iter, node.target
        if _self_attr(iterable, attr) and isinstance(target, ast.Name):
            loops.append(_Loop(node, target.id, None))
        elif (
            isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Name)
            and iterable.func.id == "enumerate"
            and len(iterable.args) == 1
            and _self_attr(iterable.args[0], attr)
            and isinstance(target, ast.Tuple)
            and len(target.elts) == 2
            and all(isinstance(e, ast.Name) for e in target.elts)
        ):
            loops.append(_Loop(node, target.elts[1].id, target.elts[0].id))
    return loops


def _direct_calls(loop: _Loop) -> List[Tuple[ast.stmt, ast.Call]]:
    """(statement, call) for each ``block(...)`` call in the loop body (not grad checkpointing)."""
    found = []
    for statement in loop.node.body:
        for node in ast.walk(statement):
            if not isinstance(node, (ast.Assign, ast.Expr)):
                continue
            for call in ast.walk(node.value):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id == loop.block
                ):
                    found.append((node, call))
    return found


def _names(target: ast.AST) -> Optional[Tuple[str, ...]]:
    if isinstance(target, ast.Name):
        return (target.id,)
    if isinstance(target, ast.Tuple) and all(isinstance(e, ast.Name) for e in target.elts):
        return tuple(e.id for e in target.elts)
    return None


def _bind(call: ast.Call, parameters: Sequence[str]) -> Dict[str, Union[str, ast.AST]]:
    """Block parameter -> the variable name (or the expression) the loop passes for it.

    Positional arguments beyond ``parameters`` go to the block's ``*args`` and are not bound.
    """
    if any(isinstance(arg, ast.Starred) for arg in call.args):
        raise _Refusal("the loop passes *args to the blocks")
    bound: Dict[str, Union[str, ast.AST]] = {}
    pairs = list(zip(parameters, call.args, strict=False)) + [
        (k.arg, k.value) for k in call.keywords if k.arg
    ]
    for name, value in pairs:
        bound[name] = value.id if isinstance(value, ast.Name) else value
    return bound


def _from_forward(candidate: BlockList, forward: ast.FunctionDef) -> Optional[InferredList]:
    """The list's pattern from how ``forward`` calls its blocks; None if forward never loops it."""
    loops = [loop for loop in _loops_over(forward, candidate.attr) if _direct_calls(loop)]
    if not loops:
        return None
    if len(loops) > 1:
        raise _Refusal(f"forward runs its blocks in {len(loops)} different loops")
    loop = loops[0]
    calls = _direct_calls(loop)
    if len({ast.dump(call) for _, call in calls}) > 1:
        raise _Refusal("the loop calls the blocks in more than one way")
    statement, call = calls[0]
    parameters = _parameters(candidate)
    bound = _bind(call, parameters)
    hidden_argument = parameters[0]
    hidden = bound.get(hidden_argument)
    if not isinstance(hidden, str):
        raise _Refusal(f"the loop does not pass a plain variable as '{hidden_argument}'")
    targets = _names(statement.targets[0]) if isinstance(statement, ast.Assign) else None
    if targets is None or len(statement.targets) != 1 or hidden not in targets:
        raise _Refusal(f"the loop does not assign the block result back to '{hidden}'")
    pattern, encoder_argument, streams = _pattern(targets, hidden, bound, call, parameters)
    _check_loop_is_plain(loop, statement, call, streams)
    _check_list_used_only_in_loop(forward, candidate.attr)
    return InferredList(candidate.attr, pattern, hidden_argument, encoder_argument)


def _pattern(
    targets: Tuple[str, ...],
    hidden: str,
    bound: Dict[str, Union[str, ast.AST]],
    call: ast.Call,
    parameters: Sequence[str],
) -> Tuple[ForwardPattern, str, Tuple[str, ...]]:
    """(pattern, encoder argument, stream variables) from the unpacking and the bound arguments."""
    if targets == (hidden,):
        encoder = bound.get(ENCODER)
        if isinstance(encoder, str) and _threadable(ENCODER, call, parameters):
            return ForwardPattern.Pattern_2, ENCODER, (hidden, encoder)
        # The text stream, if any, reaches every block unchanged as an ordinary argument.
        return ForwardPattern.Pattern_3, ENCODER, (hidden,)
    if len(targets) != 2:
        raise _Refusal(f"the loop unpacks {len(targets)} block outputs; patterns have 1 or 2")
    hidden_first = targets[0] == hidden
    other = targets[1] if hidden_first else targets[0]
    threaded = {value: name for name, value in bound.items() if isinstance(value, str)}
    if other not in threaded:
        # A second output the blocks do not take back in: Pattern_4/5.
        pattern = ForwardPattern.Pattern_4 if hidden_first else ForwardPattern.Pattern_5
        return pattern, ENCODER, (hidden, other)
    encoder_argument = threaded[other]
    if not _threadable(encoder_argument, call, parameters):
        raise _Refusal(
            f"'{encoder_argument}' is passed positionally but is not the second argument"
        )
    pattern = ForwardPattern.Pattern_0 if hidden_first else ForwardPattern.Pattern_1
    return pattern, encoder_argument, (hidden, other)


def _threadable(argument: str, call: ast.Call, parameters: Sequence[str]) -> bool:
    """A cached list re-passes the second stream by keyword, or positionally right after hidden."""
    by_keyword = argument in {keyword.arg for keyword in call.keywords}
    return by_keyword or parameters.index(argument) == 1


def _assigned_names(node: ast.AST) -> List[str]:
    """Root variable names a statement writes to (``x = …``, ``x[i] = …``, ``x += …``)."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    else:
        return []
    names = []
    for target in targets:
        for leaf in ast.walk(target):
            while isinstance(leaf, (ast.Subscript, ast.Attribute, ast.Starred)):
                leaf = leaf.value
            if isinstance(leaf, ast.Name):
                names.append(leaf.id)
    return names


def _is_checkpoint_statement(node: ast.AST) -> bool:
    value = getattr(node, "value", None)
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr == CHECKPOINT_CALL
    )


def _check_loop_is_plain(
    loop: _Loop, call_statement: ast.stmt, call: ast.Call, streams: Tuple[str, ...]
) -> None:
    """The body may only call the block: the stand-in runs it once for the whole list.

    So no variable the blocks read (streams or other arguments) may change between blocks.
    """
    arguments = {node.id for node in ast.walk(call) if isinstance(node, ast.Name)} - {loop.block}
    watched = set(streams) | arguments
    loop_target = {id(node) for node in ast.walk(loop.node.target)}
    for node in ast.walk(loop.node):
        if id(node) in loop_target:
            continue
        if isinstance(node, ast.Name) and node.id == loop.index:
            raise _Refusal(f"the loop uses the block index '{loop.index}'")
        if node is call_statement or _is_checkpoint_statement(node):
            continue
        changed = sorted(set(_assigned_names(node)) & watched)
        if changed:
            raise _Refusal(f"the loop changes '{changed[0]}' between blocks")


def _check_list_used_only_in_loop(forward: ast.FunctionDef, attr: str) -> None:
    """``self.<list>`` may appear only as a loop iterable (its grad-checkpointing twin included)."""
    allowed = {id(n) for loop in _loops_over(forward, attr) for n in ast.walk(loop.node.iter)}
    for node in ast.walk(forward):
        if _self_attr(node, attr) and id(node) not in allowed:
            raise _Refusal(
                f"forward reads 'self.{attr}' outside its block loop (line {node.lineno})"
            )


# -- the error ----------------------------------------------------------------------------------


def _unsupported(
    transformer: torch.nn.Module, candidates: Sequence[BlockList], reasons: Sequence[str]
) -> UnsupportedModelError:
    name = type(transformer).__name__
    found = "; ".join(c.describe() for c in candidates) or "none"
    example = candidates[0].attr if candidates else "<block list>"
    return UnsupportedModelError(
        f"dit_cache_backend cannot infer how to cache {name}: {'; '.join(reasons)}. "
        f"Block lists found: {found}. "
        "Pass an explicit adapter, choosing each list's ForwardPattern from what its blocks take "
        "and return: enable_cache(BlockAdapter(transformer=transformer, "
        f"blocks=[transformer.{example}], forward_pattern=[ForwardPattern.Pattern_N]), "
        "cache_config=...) — or register the class once with "
        f"@BlockAdapterRegister.register('{name}') on a function returning that BlockAdapter. "
        "If the transformer's loop does more than call the block (block index, residuals added "
        "between blocks), caching a list as a whole changes the result; patch the loop first."
    )
