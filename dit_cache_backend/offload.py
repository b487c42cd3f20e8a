"""Layer-wise offload under cache-dit's names, delegated to diffusers' group offloading.

cache-dit 1.5.3 ships its own offloader (``cache_dit.offload``); here the same calls apply
diffusers' ``apply_group_offloading(offload_type="leaf_level")`` to each selected root module, so
each leaf layer is moved to ``onload_device`` just before it runs and back to ``offload_device``
after. cache-dit options that diffusers has no switch for (a fixed output device, prefetch windows
and budgets, resident "persistent" layers, lazy offload) raise ``NotImplementedError`` when set to
anything but their default, naming what diffusers offers instead.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
from diffusers.hooks import HookRegistry, apply_group_offloading

logger = logging.getLogger(__name__)

# cache-dit's layer-wise offload names; its module-path aliases re-export exactly these.
__all__ = [
    "LayerwiseOffloadHandle",
    "LayerwiseOffloadHandleGroup",
    "get_layerwise_offload_handles",
    "layerwise_cpu_offload",
    "layerwise_offload",
    "remove_layerwise_offload",
]

_HANDLES_ATTR = "_dit_cache_layerwise_offload"
# The hooks apply_group_offloading registers (diffusers.hooks.group_offloading's names).
_GROUP_OFFLOAD_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")
# cache-dit options without a diffusers counterpart, with the default that means "not used".
_CACHE_DIT_ONLY_OPTIONS: Dict[str, Any] = {
    "output_device": None,
    "eager_offload": True,
    "transfer_buckets": 1,
    "prefetch_limit": False,
    "max_copy_streams": None,
    "max_inflight_prefetch_bytes": None,
    "persistent_buckets": 0,
    "persistent_bins": 1,
}

Device = Union[torch.device, str]


class LayerwiseOffloadHandle:
    """The group offloading applied to the target modules of one root module."""

    def __init__(
        self,
        *,
        root_module: torch.nn.Module,
        targets: List[torch.nn.Module],
        onload_device: torch.device,
        offload_device: torch.device,
    ) -> None:
        self.root_module = root_module
        self.targets = targets
        self.onload_device = onload_device
        self.offload_device = offload_device

    def remove(self, *, offload: bool = True) -> None:
        """Take the hooks off; ``offload`` moves the targets to the offload device (else: onload)."""
        for target in self.targets:
            registry = HookRegistry.check_if_exists_or_initialize(target)
            for name in _GROUP_OFFLOAD_HOOKS:
                registry.remove_hook(name, recurse=True)
            target.to(self.offload_device if offload else self.onload_device)
        handles = self.root_module.__dict__.get(_HANDLES_ATTR, [])
        if self in handles:
            handles.remove(self)


class LayerwiseOffloadHandleGroup:
    """The handles of a pipeline's (or adapter's) root modules, removable together."""

    def __init__(
        self, *, source: Any, handles: Iterable[LayerwiseOffloadHandle], root_names: Iterable[str]
    ) -> None:
        self.source = source
        self.handles = list(handles)
        self.root_names = list(root_names)

    @property
    def module_names(self) -> List[str]:
        return list(self.root_names)

    def __len__(self) -> int:
        return len(self.handles)

    def __iter__(self) -> Iterator[LayerwiseOffloadHandle]:
        return iter(self.handles)

    def remove(self, *, offload: bool = True) -> None:
        for handle in self.handles:
            handle.remove(offload=offload)


def _check_options(options: Dict[str, Any]) -> None:
    for name, value in options.items():
        if value != _CACHE_DIT_ONLY_OPTIONS[name]:
            raise NotImplementedError(
                f"layerwise offload option {name}={value!r} has no counterpart in diffusers' group "
                "offloading, which dit_cache_backend delegates to; leave it at its default "
                f"({_CACHE_DIT_ONLY_OPTIONS[name]!r}), or call diffusers.hooks.apply_group_offloading "
                "directly (offload_type='block_level', num_blocks_per_group, use_stream, "
                "record_stream, low_cpu_mem_usage)"
            )


def _roots(
    source: Any, module_names: Optional[Iterable[str]], module_filter: Optional[Callable[..., bool]]
) -> List[Tuple[str, torch.nn.Module]]:
    """(name, module) of each root of a pipeline or BlockAdapter: named, filtered, or all."""
    transformers = getattr(source, "transformer", None)
    if hasattr(source, "components"):
        candidates = dict(source.components)
    else:  # a BlockAdapter: its transformer(s)
        listed = transformers if isinstance(transformers, (list, tuple)) else [transformers]
        candidates = {f"transformer_{i}" if i else "transformer": t for i, t in enumerate(listed)}
    if module_names is not None:
        return [(name, _resolve(source, name)) for name in module_names]
    return [
        (name, module)
        for name, module in candidates.items()
        if isinstance(module, torch.nn.Module) and (module_filter is None or module_filter(name, module))
    ]


def _resolve(source: Any, path: str) -> torch.nn.Module:
    head, _, rest = path.partition(".")
    module = getattr(source, head, None)
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module_names: {type(source).__name__} has no module {head!r}")
    return module.get_submodule(rest) if rest else module


def _targets(
    root: torch.nn.Module,
    module_names: Optional[Iterable[str]],
    module_filter: Optional[Callable[..., bool]],
) -> List[torch.nn.Module]:
    """The submodules of a module root to offload: named, the outermost matches, or the root."""
    if module_names is not None:
        return [root.get_submodule(name) for name in module_names]
    if module_filter is None:
        return [root]
    chosen: List[Tuple[str, torch.nn.Module]] = []
    for name, module in root.named_modules():
        inside_chosen = any(name.startswith(f"{outer}.") for outer, _ in chosen)
        if name and not inside_chosen and module_filter(name, module):
            chosen.append((name, module))
    return [module for _, module in chosen]


def _offload_root(
    root: torch.nn.Module,
    targets: List[torch.nn.Module],
    onload_device: Device,
    offload_device: Device,
    non_blocking: bool,
    async_transfer: bool,
) -> LayerwiseOffloadHandle:
    onload, offload = torch.device(onload_device), torch.device(offload_device)
    for target in targets:
        apply_group_offloading(
            target,
            onload_device=onload,
            offload_device=offload,
            offload_type="leaf_level",
            non_blocking=non_blocking,
            use_stream=async_transfer,
        )
    handle = LayerwiseOffloadHandle(
        root_module=root, targets=targets, onload_device=onload, offload_device=offload
    )
    root.__dict__.setdefault(_HANDLES_ATTR, []).append(handle)
    logger.info("layerwise offload of %d module(s) of %s", len(targets), type(root).__name__)
    return handle


def layerwise_offload(
    root_module: Any,
    *,
    module_names: Optional[Iterable[str]] = None,
    module_filter: Optional[Callable[..., bool]] = None,
    onload_device: Device = "cuda",
    offload_device: Device = "cpu",
    output_device: Optional[Device] = None,
    non_blocking: bool = False,
    eager_offload: bool = True,
    async_transfer: bool = False,
    transfer_buckets: int = 1,
    prefetch_limit: bool = False,
    max_copy_streams: Optional[int] = None,
    max_inflight_prefetch_bytes: Union[int, str, None] = None,
    persistent_buckets: int = 0,
    persistent_bins: int = 1,
) -> Union[LayerwiseOffloadHandle, LayerwiseOffloadHandleGroup]:
    """Offload a module (one handle) or a pipeline's / adapter's modules (a handle group).

    ``module_names`` picks submodules of a module, or components (dotted paths allowed) of a
    pipeline; ``module_filter(name, module)`` picks by predicate; by default the whole module, or
    every module component. ``async_transfer`` maps to diffusers' ``use_stream``.
    """
    _check_options(
        dict(
            output_device=output_device,
            eager_offload=eager_offload,
            transfer_buckets=transfer_buckets,
            prefetch_limit=prefetch_limit,
            max_copy_streams=max_copy_streams,
            max_inflight_prefetch_bytes=max_inflight_prefetch_bytes,
            persistent_buckets=persistent_buckets,
            persistent_bins=persistent_bins,
        )
    )
    devices = (onload_device, offload_device, non_blocking, async_transfer)
    if isinstance(root_module, torch.nn.Module):
        return _offload_root(root_module, _targets(root_module, module_names, module_filter), *devices)
    roots = _roots(root_module, module_names, module_filter)
    handles = [_offload_root(module, [module], *devices) for _, module in roots]
    return LayerwiseOffloadHandleGroup(
        source=root_module, handles=handles, root_names=[name for name, _ in roots]
    )


def layerwise_cpu_offload(
    root_module: Any,
    *,
    module_names: Optional[Iterable[str]] = None,
    module_filter: Optional[Callable[..., bool]] = None,
    onload_device: Device = "cuda",
    output_device: Optional[Device] = None,
    non_blocking: bool = False,
    eager_offload: bool = True,
    async_transfer: bool = False,
    transfer_buckets: int = 1,
    prefetch_limit: bool = False,
    max_copy_streams: Optional[int] = None,
    max_inflight_prefetch_bytes: Union[int, str, None] = None,
    persistent_buckets: int = 0,
    persistent_bins: int = 1,
) -> Union[LayerwiseOffloadHandle, LayerwiseOffloadHandleGroup]:
    """:func:`layerwise_offload` with the CPU as the offload device."""
    return layerwise_offload(
        root_module,
        module_names=module_names,
        module_filter=module_filter,
        onload_device=onload_device,
        offload_device="cpu",
        output_device=output_device,
        non_blocking=non_blocking,
        eager_offload=eager_offload,
        async_transfer=async_transfer,
        transfer_buckets=transfer_buckets,
        prefetch_limit=prefetch_limit,
        max_copy_streams=max_copy_streams,
        max_inflight_prefetch_bytes=max_inflight_prefetch_bytes,
        persistent_buckets=persistent_buckets,
        persistent_bins=persistent_bins,
    )


def _attached_roots(root_module: Any) -> List[torch.nn.Module]:
    if isinstance(root_module, torch.nn.Module):
        return [root_module]
    return [module for _, module in _roots(root_module, None, None)]


def get_layerwise_offload_handles(root_module: Any) -> Tuple[LayerwiseOffloadHandle, ...]:
    """The handles attached to a module, or to a pipeline's / adapter's modules."""
    return tuple(
        handle
        for module in _attached_roots(root_module)
        for handle in module.__dict__.get(_HANDLES_ATTR, [])
    )


def remove_layerwise_offload(root_module: Any, *, offload: bool = True) -> int:
    """Remove every attached handle; returns how many were removed."""
    handles = get_layerwise_offload_handles(root_module)
    for handle in handles:
        handle.remove(offload=offload)
    return len(handles)
