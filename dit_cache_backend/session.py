"""Installing caching on a pipeline or transformer, and taking it off again without a trace.

A :class:`CacheSession` owns the contexts of one ``enable_cache`` call. It patches, per instance:

* each cached transformer's ``forward`` — for the duration of a call, iterating a cached block
  list yields a single :class:`CachedBlocks` (and "dummy" lists yield nothing); the registered
  children never change, so the module tree and ``state_dict`` are untouched even mid-forward;
* each transformer's ``cache_context`` (diffusers' CacheMixin) — to learn which CFG branch and step
  a call belongs to (rule 3);
* in pipeline mode, the pipeline's ``__call__`` — through a per-instance subclass with the same
  name, so sibling pipelines of the same class are unaffected — to start every request afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from .block_adapter import CachedListSpec, get_submodule_parent
from .blocks import BlockListRunner
from .context import BlockListContext
from .errors import DitCacheError
from .policy import CallIdentity
from .techniques import technique_for

logger = logging.getLogger(__name__)

SESSION_ATTR = "_dit_cache_session"
_MISSING = object()


@dataclasses.dataclass
class _InstancePatch:
    """An instance attribute we replaced, and what was there before (possibly nothing)."""

    owner: Any
    name: str
    previous: Any

    def restore(self) -> None:
        if self.previous is _MISSING:
            self.owner.__dict__.pop(self.name, None)
        else:
            self.owner.__dict__[self.name] = self.previous


@dataclasses.dataclass
class _Undo:
    """A patch functor's own undo function, in the session's list of things to restore."""

    undo: Callable[[], None]

    def restore(self) -> None:
        self.undo()


@dataclasses.dataclass
class _ForwardPatch:
    """Our wrapper of a transformer's ``forward``, which later hooks may have wrapped in turn."""

    owner: torch.nn.Module
    previous: Any
    wrapped: Callable[..., Any]
    ours: Callable[..., Any]

    def restore(self) -> None:
        current = self.owner.__dict__
        if current.get("forward") is self.ours:
            _InstancePatch(self.owner, "forward", self.previous).restore()
        elif current.get("_old_forward") is self.ours:
            # accelerate's add_hook_to_module wrapped us after enabling: splice ourselves out.
            current["_old_forward"] = self.wrapped
        # Otherwise another wrapper (e.g. a diffusers hook registry) holds us in its chain; the
        # session is inactive from now on, so our wrapper just passes calls through.


class CacheSession:
    """Contexts, wrappers and patches of one enable_cache call."""

    def __init__(
        self,
        specs: List[CachedListSpec],
        configs: List[tuple],
        *,
        pipeline: Any = None,
        separate_cfg: bool,
        process_group: Optional[object] = None,
    ) -> None:
        self.pipeline = pipeline
        self.persistent = pipeline is None
        self.specs = specs
        self.separate_cfg = separate_cfg
        # Whether refresh_context has run: cache-dit's transformer-level summary entry then reports
        # the last context's options (it overwrites them at each refresh), until then the first's.
        self.refreshed = False
        self.identity: Optional[CallIdentity] = None
        self.contexts: Dict[str, BlockListContext] = {}
        self.wrappers: Dict[str, BlockListRunner] = {}
        for spec, (cache_config, calibrator_config) in zip(specs, configs):
            technique = technique_for(cache_config.cache_type)
            context = technique.context(
                spec.name,
                cache_config,
                calibrator_config,
                separate_cfg=separate_cfg,
                process_group=process_group,
            )
            self.contexts[spec.name] = context
            self.wrappers[spec.name] = technique.runner(
                spec.blocks,
                spec.pattern,
                context,
                self.current_identity,
                hidden_arg=spec.hidden_arg,
                encoder_arg=spec.encoder_arg,
                block_kwargs=(
                    None
                    if spec.patch_functor is None
                    else functools.partial(spec.patch_functor.block_kwargs, spec.attr)
                ),
            )
        # Where each wrapper finds its blocks at call time: the lists that held them at enable time
        # (one list, or a list plus the "dummy" lists folded into it), or None when the adapter
        # gave blocks that no list of the transformer holds (then they are fixed).
        self._block_sources: Dict[str, Optional[List[str]]] = {
            spec.name: _block_sources(spec) for spec in specs
        }
        # A list read through the module at each call keeps none of its enable-time blocks: a block
        # replaced after enabling must not stay in memory through us until disable.
        self.specs = [
            spec if self._block_sources[spec.name] is None else dataclasses.replace(spec, blocks=[])
            for spec in specs
        ]
        for spec in self.specs:
            if self._block_sources[spec.name] is not None:
                self.wrappers[spec.name].release()
        self.transformers: List[torch.nn.Module] = list(
            {id(s.transformer): s.transformer for s in specs}.values()
        )
        self._patches: List[Any] = []
        self._pipeline_class: Optional[type] = None
        self.active = False
        self._calling = threading.RLock()
        self._open_requests = 0

    def current_blocks(self, spec: CachedListSpec) -> Tuple[torch.nn.Module, ...]:
        """The blocks of ``spec``'s list now: read from the module's lists, or the adapter's own."""
        sources = self._block_sources[spec.name]
        return tuple(spec.blocks) if sources is None else _blocks_at(spec.transformer, sources)

    def __reduce__(self) -> Any:
        # A copy of a cached module is an uncached module (see _CopiedUncached).
        return (_no_session, ())

    # -- identity ------------------------------------------------------------------------------

    def current_identity(self) -> Optional[CallIdentity]:
        return self.identity

    @contextlib.contextmanager
    def call_identity(self, identity: Optional[CallIdentity]) -> Iterator[None]:
        """Declare the branch/step of the transformer calls made inside the block."""
        previous, self.identity = self.identity, identity
        try:
            yield
        finally:
            self.identity = previous

    # -- lifetime ------------------------------------------------------------------------------

    def in_request(self) -> bool:
        """Whether a call belongs to a request of ours. In pipeline mode only the enabled
        pipeline's calls do: a sibling pipeline sharing the transformer (``from_pipe``,
        ``Pipeline(**pipe.components)``) runs it uncached instead of continuing our request."""
        return self.persistent or self._open_requests > 0

    def start_request(self) -> None:
        """Fresh buffers and counters for every context (a new pipeline call or a refresh)."""
        for context in self.contexts.values():
            context.reset()

    def reconfigure(self, configs: List[tuple], *, separate_cfg: Optional[bool] = None) -> None:
        if separate_cfg is not None:
            self.separate_cfg = separate_cfg
        self.refreshed = True
        for context, (cache_config, calibrator_config) in zip(self.contexts.values(), configs):
            context.reconfigure(cache_config, calibrator_config, separate_cfg=separate_cfg)

    # -- install / uninstall -------------------------------------------------------------------

    def install(self) -> None:
        self.active = True
        try:
            for transformer in self.transformers:
                self._patch_transformer(transformer)
                self._set(transformer, SESSION_ATTR, self)
            functors = {id(s.patch_functor): s for s in self.specs if s.patch_functor is not None}
            for spec in functors.values():
                self._patches.append(_Undo(spec.patch_functor.install(spec.transformer)))
            if self.pipeline is not None:
                self._patch_pipeline(self.pipeline)
                self._set(self.pipeline, SESSION_ATTR, self)
        except BaseException:
            self.uninstall()
            raise

    def uninstall(self) -> None:
        self.active = False
        for patch in reversed(self._patches):
            patch.restore()
        self._patches.clear()
        if self._pipeline_class is not None:
            self.pipeline.__class__ = self._pipeline_class
            self._pipeline_class = None
        for context in self.contexts.values():
            context.reset()

    def _set(self, owner: Any, name: str, value: Any) -> None:
        previous = owner.__dict__.get(name, _MISSING)
        self._patches.append(_InstancePatch(owner, name, previous))
        owner.__dict__[name] = value

    def _patch_transformer(self, transformer: torch.nn.Module) -> None:
        specs = [s for s in self.specs if s.transformer is transformer]
        original_forward = transformer.forward
        cached_forward = _CachedForward(self, transformer, specs, original_forward)
        previous = transformer.__dict__.get("forward", _MISSING)
        self._patches.append(_ForwardPatch(transformer, previous, original_forward, cached_forward))
        transformer.__dict__["forward"] = cached_forward
        original_cache_context = getattr(transformer, "cache_context", None)
        if callable(original_cache_context):
            self._set(
                transformer, "cache_context", _IdentifiedCacheContext(self, transformer, original_cache_context)
            )

    @contextlib.contextmanager
    def _one_call_at_a_time(self) -> Iterator[None]:
        """Refuse a second thread while one call runs: both would share (and corrupt) the
        contexts and the viewed block lists. The same thread may nest calls."""
        _enter(self)
        try:
            yield
        finally:
            _leave(self)

    @contextlib.contextmanager
    def _viewed_block_lists(
        self, transformer: torch.nn.Module, specs: List[CachedListSpec]
    ) -> Iterator[None]:
        viewed: List[torch.nn.ModuleList] = []
        try:
            for spec in specs:
                wrapper = self.wrappers[spec.name]
                _bind_current_blocks(wrapper, transformer, self._block_sources[spec.name])
                viewed.append(_install_view(transformer, spec.attr, (wrapper,)))
                for dummy in spec.dummy_attrs:
                    viewed.append(_install_view(transformer, dummy, ()))
            yield
        finally:
            for block_list in reversed(viewed):
                _remove_view(block_list)
            for spec in specs:
                if self._block_sources[spec.name] is not None:
                    self.wrappers[spec.name].release()

    def _patch_pipeline(self, pipeline: Any) -> None:
        original_class = type(pipeline)
        session = self

        def __call__(self_: Any, *args: Any, **kwargs: Any) -> Any:
            with session._one_call_at_a_time():  # a whole request is one thread's
                session.start_request()
                session._open_requests += 1
                try:
                    return original_class.__call__(self_, *args, **kwargs)
                finally:
                    session._open_requests -= 1

        functools.update_wrapper(__call__, original_class.__call__)
        # Same name and qualname: framework registries key enablers by type(pipeline).__name__.
        cached_class = type(
            original_class.__name__,
            (original_class,),
            {"__call__": __call__, "__qualname__": original_class.__qualname__,
             "__module__": original_class.__module__},
        )
        pipeline.__class__ = cached_class
        self._pipeline_class = original_class


class _CopiedUncached:
    """How the instance patches copy: ``copy.deepcopy``/pickle of a cached transformer give an
    uncached transformer computing with its own weights (its class's own method, bound to the
    copy), never one bound to the original."""

    def __reduce__(self) -> Any:
        return (_class_method_of, (self.transformer, self.method_name))


def _class_method_of(module: torch.nn.Module, name: str) -> Any:
    return getattr(type(module), name).__get__(module)


class _CachedForward(_CopiedUncached):
    """The forward installed on a cached transformer: its own forward, with the block lists
    viewed as the cached runners for the duration of the call."""

    method_name = "forward"

    def __init__(
        self,
        session: "CacheSession",
        transformer: torch.nn.Module,
        specs: List[CachedListSpec],
        original: Callable[..., Any],
    ) -> None:
        # updated=(): the wrapped callable may be a hook's wrapper of an earlier session's
        # forward, whose __dict__ (that session, its specs) must not overwrite ours.
        functools.update_wrapper(self, original, updated=())
        self.session = session
        self.transformer = transformer
        self.specs = specs
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        session = self.session
        if not session.active or not session.in_request():
            return self.original(*args, **kwargs)
        with session._one_call_at_a_time(), session._viewed_block_lists(self.transformer, self.specs):
            try:
                return self.original(*args, **kwargs)
            except BaseException:
                # The request died mid-way: the next call starts a new one, from step 0.
                session.start_request()
                raise


class _IdentifiedCacheContext(_CopiedUncached):
    """diffusers' ``cache_context`` of a cached transformer, also telling the session which CFG
    branch and step the calls inside belong to (rule 3)."""

    method_name = "cache_context"

    def __init__(self, session: "CacheSession", transformer: torch.nn.Module, original: Callable) -> None:
        self.session = session
        self.transformer = transformer
        self.original = original

    @contextlib.contextmanager
    def __call__(self, name: str, **kwargs: Any) -> Iterator[None]:
        identity = CallIdentity.from_context_name(name, kwargs.get("step_index"))
        with self.original(name, **kwargs), self.session.call_identity(identity):
            yield


class _BlockListView(torch.nn.ModuleList):
    """A ModuleList that, while a cached forward runs, presents other modules to its iterator.

    Only iteration, ``len`` and indexing change — the registered children (``_modules``) do not —
    so ``state_dict()``, ``named_modules()`` and hooks see the model's real tree even mid-forward.
    """

    def __iter__(self) -> Iterator[torch.nn.Module]:
        return iter(self.__dict__["_dit_cache_view"])

    def __len__(self) -> int:
        return len(self.__dict__["_dit_cache_view"])

    def __getitem__(self, index: Any) -> Any:
        return self.__dict__["_dit_cache_view"][index]


@functools.lru_cache(maxsize=None)
def _view_class(list_class: type) -> type:
    """The view class for a ModuleList (sub)class, made once per class."""
    if list_class is torch.nn.ModuleList:
        return _BlockListView
    return type(list_class.__name__, (_BlockListView, list_class), {})


@torch.compiler.disable
def _enter(session: CacheSession) -> None:
    if not session._calling.acquire(blocking=False):
        raise DitCacheError(
            "a cached transformer is already running a call in another thread; its cache state "
            "is per request, so concurrent calls on one cached module are refused (serialize "
            "them, or give each thread its own model)"
        )


@torch.compiler.disable
def _leave(session: CacheSession) -> None:
    session._calling.release()


def _list_at(transformer: torch.nn.Module, path: str) -> Any:
    parent, leaf = get_submodule_parent(transformer, path)
    return parent._modules[leaf]


def _block_sources(spec: CachedListSpec) -> Optional[List[str]]:
    paths = [spec.attr, *spec.dummy_attrs]
    try:
        held = [b for path in paths for b in _list_at(spec.transformer, path)._modules.values()]
    except (AttributeError, KeyError):
        return None
    same = len(held) == len(spec.blocks) and all(a is b for a, b in zip(held, spec.blocks))
    return paths if same else None


@torch.compiler.disable
def _bind_current_blocks(
    runner: BlockListRunner, transformer: torch.nn.Module, sources: Optional[List[str]]
) -> None:
    """Give the runner the blocks the module holds now, not the ones it held at enable time."""
    if sources is not None:
        runner.bind(_blocks_at(transformer, sources))


def _blocks_at(transformer: torch.nn.Module, sources: List[str]) -> Tuple[torch.nn.Module, ...]:
    return tuple(block for path in sources for block in _list_at(transformer, path)._modules.values())


@torch.compiler.disable
def _install_view(transformer: torch.nn.Module, path: str, view: tuple) -> torch.nn.ModuleList:
    block_list = _list_at(transformer, path)
    block_list.__dict__["_dit_cache_view"] = view
    block_list.__dict__["_dit_cache_class"] = type(block_list)
    block_list.__class__ = _view_class(type(block_list))
    return block_list


@torch.compiler.disable
def _remove_view(block_list: torch.nn.ModuleList) -> None:
    block_list.__class__ = block_list.__dict__.pop("_dit_cache_class")
    block_list.__dict__.pop("_dit_cache_view", None)


def _no_session() -> None:
    return None


def session_of(obj: Any) -> Optional[CacheSession]:
    """The session installed on a pipeline, transformer or adapter, if any."""
    if obj is None:
        return None
    session = getattr(obj, "__dict__", {}).get(SESSION_ATTR)
    if session is not None:
        return session
    for attr in ("transformer", "pipe"):
        inner = getattr(obj, attr, None)
        if isinstance(inner, (list, tuple)):
            inner = inner[0] if inner else None
        if inner is not None and inner is not obj:
            found = getattr(inner, "__dict__", {}).get(SESSION_ATTR)
            if found is not None:
                return found
    return None

