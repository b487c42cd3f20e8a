"""``quantize_config`` -> torchao's ``quantize_``, with cache-dit's type names and block filter.

cache-dit quantizes the Linear layers of each repeated block (``_repeated_blocks``) whose qualified
name contains none of ``exclude_layers``; so do we. Everything that can fail is checked before the
first weight is replaced (quantization cannot be undone): torchao installed, the type known, the
device able to run it, the weights' dtype. ``disable_cache`` keeps the model quantized, as in
cache-dit; a second ``enable_cache`` with the same type finds it quantized and leaves it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..config import QuantizeBackend, QuantizeConfig
from ..errors import ConfigError, NotSupportedYetError
from .device import cuda_capability, describe, module_device

logger = logging.getLogger(__name__)

QUANTIZED_ATTR = "_dit_cache_quant_type"
TORCHAO_PIN = "torchao==0.18.0"
INSTALL = "pip install 'dit_cache_backend[quantize]'"


def _float8_dynamic(device: torch.device) -> Optional[str]:
    capability = cuda_capability(device)
    if device.type == "xpu" or (capability is not None and capability >= (8, 9)):
        return None
    return "float8 activations need a CUDA GPU of compute capability 8.9 or newer (or an XPU)"


def _float8_weights(device: torch.device) -> Optional[str]:
    capability = cuda_capability(device)
    if device.type == "cpu" or (capability is not None and capability >= (8, 9)):
        return None
    return "float8 weights need the CPU or a CUDA GPU of compute capability 8.9 or newer"


def _int4(device: torch.device) -> Optional[str]:
    if device.type == "cuda" and importlib.util.find_spec("mslk") is not None:
        return None
    return "int4 needs a CUDA GPU and torchao's int4 kernels (the mslk package)"


def _nvfp4(device: torch.device) -> Optional[str]:
    capability = cuda_capability(device)
    if capability is not None and capability >= (10, 0):
        return None
    return "nvfp4 needs a Blackwell GPU (compute capability 10.0 or newer)"


def _anywhere(device: torch.device) -> Optional[str]:
    return None


@dataclasses.dataclass(frozen=True)
class QuantType:
    """One cache-dit quant_type: its torchao config and what the device needs to run it."""

    build: Callable[[], Any]
    cannot_run: Callable[[torch.device], Optional[str]]
    needs_bf16: bool = False


def _f8_dynamic(granularity: Callable[[], Tuple[Any, Any]], **extra: Any) -> Callable[[], Any]:
    def build() -> Any:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

        return Float8DynamicActivationFloat8WeightConfig(
            weight_dtype=torch.float8_e4m3fn,
            activation_dtype=torch.float8_e4m3fn,
            granularity=granularity(),
            **extra,
        )

    return build


def _per_row() -> Tuple[Any, Any]:
    from torchao.quantization import PerRow

    return PerRow(), PerRow()


def _per_tensor() -> Tuple[Any, Any]:
    from torchao.quantization import PerTensor

    return PerTensor(), PerTensor()


def _per_block() -> Tuple[Any, Any]:
    from torchao.quantization import PerBlock

    return PerBlock([1, 128]), PerBlock([128, 128])


def _torch_kernels() -> Dict[str, Any]:
    from torchao.quantization.quantize_.common import KernelPreference

    return {"kernel_preference": KernelPreference.TORCH}


def _float8_per_row() -> Any:
    return _f8_dynamic(_per_row, **_torch_kernels())()


def _float8_weight_only() -> Any:
    from torchao.quantization import Float8WeightOnlyConfig

    return Float8WeightOnlyConfig(weight_dtype=torch.float8_e4m3fn)


def _int8_dynamic(granularity: str) -> Callable[[], Any]:
    def build() -> Any:
        import torchao.quantization as ao

        return ao.Int8DynamicActivationInt8WeightConfig(granularity=getattr(ao, granularity)())

    return build


def _int8_weight_only() -> Any:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig(group_size=None)


def _int4_weight_only() -> Any:
    from torchao.quantization import Int4WeightOnlyConfig

    return Int4WeightOnlyConfig(group_size=32)


def _nvfp4_dynamic() -> Any:
    from torchao.prototype.mx_formats.inference_workflow import (
        NVFP4DynamicActivationNVFP4WeightConfig,
    )

    return NVFP4DynamicActivationNVFP4WeightConfig(
        use_triton_kernel=True, use_dynamic_per_tensor_scale=True
    )


def _nvfp4_weight_only() -> Any:
    from torchao.prototype.mx_formats.inference_workflow import NVFP4WeightOnlyConfig

    return NVFP4WeightOnlyConfig(use_dynamic_per_tensor_scale=True)


# cache-dit 1.5.3's names (quantize_ao.py::_get_torchao_config) -> the same torchao configs.
QUANT_TYPES: Dict[str, QuantType] = {
    "float8_per_row": QuantType(_float8_per_row, _float8_dynamic, needs_bf16=True),
    "float8_per_tensor": QuantType(_f8_dynamic(_per_tensor), _float8_dynamic),
    "float8_per_block": QuantType(_f8_dynamic(_per_block), _float8_dynamic),
    "float8_weight_only": QuantType(_float8_weight_only, _float8_weights),
    "int8_per_row": QuantType(_int8_dynamic("PerRow"), _anywhere),
    "int8_per_tensor": QuantType(_int8_dynamic("PerTensor"), _anywhere),
    "int8_weight_only": QuantType(_int8_weight_only, _anywhere),
    "int4_weight_only": QuantType(_int4_weight_only, _int4),
    "nvfp4": QuantType(_nvfp4_dynamic, _nvfp4),
    "nvfp4_weight_only": QuantType(_nvfp4_weight_only, _nvfp4),
}

# Fields of cache-dit's QuantizeConfig that only its own engine implements.
_REFUSED_FIELDS = ("precision_plan", "calibrate_fn", "serialize_to")


def runs_on(device: torch.device) -> List[str]:
    """The quant types this device can run (for error messages and docs)."""
    return [name for name, kind in QUANT_TYPES.items() if kind.cannot_run(device) is None]


@dataclasses.dataclass
class QuantizeTarget:
    """One module to quantize, the type, and the sub-modules ``quantize_`` walks."""

    name: str
    module: torch.nn.Module
    quant_type: str
    regions: List[torch.nn.Module]
    exclude_layers: List[str]
    filter_fn: Optional[Callable[..., bool]]

    def keeps(self, module: torch.nn.Module, name: str) -> bool:
        if self.filter_fn is not None:
            return bool(self.filter_fn(module, name))
        return isinstance(module, torch.nn.Linear) and not any(
            pattern in name for pattern in self.exclude_layers
        )


def _check_type(quant_type: str, key: str, modules: Sequence[torch.nn.Module]) -> QuantType:
    kind = QUANT_TYPES.get(quant_type)
    if kind is None:
        raise ConfigError(key, quant_type, "one of " + ", ".join(QUANT_TYPES))
    device = module_device(modules)
    reason = kind.cannot_run(device)
    if reason is not None:
        raise ConfigError(
            key,
            quant_type,
            f"on {describe(device)}: " + ", ".join(runs_on(device)),
            hint=reason,
        )
    check_dtype(quant_type, key, modules)
    return kind


def check_dtype(quant_type: str, key: str, modules: Sequence[torch.nn.Module]) -> None:
    """cache-dit's rule: types that need bfloat16 Linear weights refuse any other dtype."""
    if not QUANT_TYPES[quant_type].needs_bf16:
        return
    for module in modules:
        for name, sub in module.named_modules():
            if isinstance(sub, torch.nn.Linear) and sub.weight.dtype != torch.bfloat16:
                raise ConfigError(
                    key,
                    quant_type,
                    "a bfloat16 model for this type (cache-dit's rule)",
                    hint=f"{name} holds {sub.weight.dtype} weights",
                )


def _regions(module: torch.nn.Module, config: QuantizeConfig) -> List[torch.nn.Module]:
    classes = getattr(module, "_repeated_blocks", None) or config.repeated_blocks
    if not config.regional_quantize or not classes:
        return [module]
    regions = [sub for sub in module.modules() if type(sub).__name__ in classes]
    if not regions:
        raise ConfigError(
            "repeated_blocks",
            list(classes),
            f"class names of blocks inside {type(module).__name__}",
        )
    return regions


def _components(config: QuantizeConfig, pipeline: Any) -> List[Tuple[str, str]]:
    """(pipeline attribute, quant_type) for ``components_to_quantize``."""
    spec = config.components_to_quantize
    if not spec:
        return []
    if pipeline is None:
        raise ConfigError(
            "components_to_quantize", spec, "only when enable_cache is given a pipeline"
        )
    items = spec.items() if isinstance(spec, dict) else ((name, {}) for name in spec)
    found = []
    for name, options in items:
        if not isinstance(getattr(pipeline, name, None), torch.nn.Module):
            raise ConfigError(
                "components_to_quantize",
                name,
                f"names of {type(pipeline).__name__}'s model components",
            )
        found.append((name, str(options.get("quant_type", config.quant_type)).lower()))
    return found


def _svdq(config: QuantizeConfig) -> bool:
    return config.quant_type.startswith("svdq")


def _already(module: torch.nn.Module, quant_type: str, name: str) -> bool:
    done = getattr(module, QUANTIZED_ATTR, None)
    if done is not None and done != quant_type:
        raise ConfigError(
            "quant_type",
            quant_type,
            f"{done!r}, the type {name} is already quantized with (it cannot be re-quantized)",
        )
    return done is not None


def plan(
    config: QuantizeConfig,
    transformers: Sequence[torch.nn.Module],
    pipeline: Any = None,
) -> List[QuantizeTarget]:
    """What to quantize with which torchao config; raises before anything is changed."""
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        raise ConfigError(
            "quantize_config", config.quant_type, f"torchao installed ({TORCHAO_PIN}): {INSTALL}"
        ) from None
    if config.backend == QuantizeBackend.CACHE_DIT:
        # cache-dit's own (SVDQuant) kernels: nothing to hand them to.
        key, value = ("quant_type", config.quant_type) if _svdq(config) else ("backend", "CACHE_DIT")
        raise NotSupportedYetError(
            key, value, what_works="backend TORCHAO with a torchao quant_type: " + ", ".join(QUANT_TYPES)
        )
    for field in _REFUSED_FIELDS:
        if getattr(config, field) is not None:
            raise NotSupportedYetError(
                field, getattr(config, field), what_works="quant_type with exclude_layers/filter_fn"
            )
    exclude = list(config.exclude_layers or [])
    targets = [
        QuantizeTarget(
            type(t).__name__, t, config.quant_type, _regions(t, config), exclude, config.filter_fn
        )
        for t in transformers
    ]
    for name, quant_type in _components(config, pipeline):
        module = getattr(pipeline, name)
        targets.append(QuantizeTarget(name, module, quant_type, [module], exclude, None))
    for target in targets:
        key = "quant_type" if target.module in transformers else f"components_to_quantize.{target.name}"
        _check_type(target.quant_type, key, [target.module])
    return [t for t in targets if not _already(t.module, t.quant_type, t.name)]


def apply(targets: Sequence[QuantizeTarget]) -> None:
    if not targets:
        return
    from torchao.quantization import quantize_

    for target in targets:
        ao_config = QUANT_TYPES[target.quant_type].build()
        for region in target.regions:
            quantize_(region, ao_config, filter_fn=target.keeps)
        setattr(target.module, QUANTIZED_ATTR, target.quant_type)
        logger.info("%s quantized with torchao %s", target.name, target.quant_type)
