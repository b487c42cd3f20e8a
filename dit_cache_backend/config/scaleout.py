"""Parallelism and quantization sections: parsed and validated like cache-dit's;
``dit_cache_backend.scaleout`` applies them."""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    List,
    Mapping,
    Optional,
    Union,
)

from ..errors import ConfigError, UnknownKeyError
from .base import _ValidatedConfig
from .checks import (
    Checker,
    _check_anything,
    _check_bool,
    _check_callable,
    _check_dict,
    _check_modules,
    _check_parallel_size,
    _check_str,
    _check_str_list,
    _did_you_mean,
    _int_at_least,
    _is_int,
)

logger = logging.getLogger(__name__)



class ParallelismBackend(str, enum.Enum):
    """cache-dit's parallelism backends. Members compare equal to their names as strings;
    ``NATIVE_DIFFUSER`` is an alias of ``CACHE_DIT``, as cache-dit canonicalizes it."""

    AUTO = "AUTO"
    CACHE_DIT = "CACHE_DIT"  # context parallelism
    NATIVE_DIFFUSER = "CACHE_DIT"
    NATIVE_PYTORCH = "NATIVE_PYTORCH"  # tensor parallelism
    NATIVE_HYBRID = "NATIVE_HYBRID"  # both
    NONE = "NONE"

    @classmethod
    def from_str(cls, backend_str: str) -> "ParallelismBackend":
        return _backend_name(backend_str, _PARALLEL_BACKENDS, "backend")


class QuantizeBackend(str, enum.Enum):
    """cache-dit's quantization backends (members compare equal to their names as strings)."""

    AUTO = "AUTO"
    TORCHAO = "TORCHAO"
    CACHE_DIT = "CACHE_DIT"  # cache-dit's own SVDQuant kernels
    NONE = "NONE"

    @classmethod
    def from_str(cls, backend_str: str) -> "QuantizeBackend":
        return _backend_name(backend_str, _QUANTIZE_BACKENDS, "backend")


# cache-dit's ParallelismBackend spellings (enum values and names, lower-cased) -> stored member.
# "None" is refused by cache-dit too.
_PARALLEL_BACKENDS = {
    "auto": ParallelismBackend.AUTO,
    "cache_dit": ParallelismBackend.CACHE_DIT,
    "native_diffuser": ParallelismBackend.CACHE_DIT,
    "native_pytorch": ParallelismBackend.NATIVE_PYTORCH,
    "native_hybrid": ParallelismBackend.NATIVE_HYBRID,
}
_PARALLEL_SIZES = ("ulysses_size", "ring_size", "tp_size")
_PARALLEL_SIZE_ALIASES = {"ulysses": "ulysses_size", "ring": "ring_size", "tp": "tp_size"}
# Old parallel_kwargs names that cache-dit still maps onto fields (with a deprecation warning).
_DEPRECATED_PARALLEL_KWARGS = {
    "experimental_ulysses_anything": "ulysses_anything",
    "experimental_ulysses_float8": "ulysses_float8",
    "experimental_ulysses_async": "ulysses_async",
}


def _backend_name(value: Any, table: Mapping[str, str], key: str) -> Any:
    """Map a backend given as a string or as one of cache-dit's enum members to its stored name."""
    if isinstance(value, enum.Enum):
        value = value.name
    if isinstance(value, str) and value.strip().lower() in table:
        return table[value.strip().lower()]
    raise ConfigError(
        key,
        value,
        "one of " + ", ".join(sorted(set(table))),
        hint=_did_you_mean(str(value).lower(), table),
    )


def _check_parallel_backend(key: str, value: Any) -> None:
    if value not in _PARALLEL_BACKENDS.values():
        _backend_name(value, _PARALLEL_BACKENDS, key)


@dataclasses.dataclass
class ParallelismConfig(_ValidatedConfig):
    """The ``parallelism_config`` section: cache-dit's public ``ParallelismConfig`` fields.

    Sizes may be ``"auto"`` (at most one of them), meaning "derived from the world size when
    applied": ``enable_cache`` resolves it (cache-dit resolves it at load time and therefore fails
    when the file is loaded outside ``torchrun``). ``parallel_kwargs`` (the form of SGLang's and
    cache-dit's examples) is copied onto the fields.
    """

    backend: str = "AUTO"
    ulysses_size: Union[int, str, None] = None
    ring_size: Union[int, str, None] = None
    tp_size: Union[int, str, None] = None
    use_ray: bool = False
    ray_num_workers: Optional[int] = None
    ray_address: Optional[str] = None
    ray_runtime_env: Optional[Dict[str, Any]] = None
    ray_init_kwargs: Dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"include_dashboard": False}
    )
    ray_worker_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    ray_master_port: int = 0
    ray_auto_shutdown: bool = True
    ray_transfer_backend: str = "auto"
    ray_transfer_custom_obj: bool = True
    ray_use_flashpack: bool = False
    ray_use_compile: bool = False
    ray_transfer_fn: Optional[Callable[[], Any]] = None
    cp_plan: Optional[Any] = None
    attention_backend: Optional[str] = None
    ulysses_anything: Optional[bool] = False
    ulysses_float8: Optional[bool] = False
    ulysses_async: Optional[bool] = False
    extra_parallel_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    ring_rotate_method: Optional[str] = "p2p"
    ring_convert_to_fp32: Optional[bool] = True
    extra_parallel_modules: Optional[List[Any]] = dataclasses.field(default_factory=list)
    # The nesting of SGLang's and cache-dit's examples: its keys are copied onto the fields above,
    # overriding them, as cache-dit does.
    parallel_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        "backend": _check_parallel_backend,
        "ulysses_size": _check_parallel_size,
        "ring_size": _check_parallel_size,
        "tp_size": _check_parallel_size,
        "use_ray": _check_bool,
        "ray_num_workers": _int_at_least(1),
        "ray_address": _check_str,
        "ray_runtime_env": _check_dict,
        "ray_init_kwargs": _check_dict,
        "ray_worker_options": _check_dict,
        "ray_master_port": _int_at_least(0, " (0 = pick a free port)"),
        "ray_auto_shutdown": _check_bool,
        "ray_transfer_backend": _check_str,
        "ray_transfer_custom_obj": _check_bool,
        "ray_use_flashpack": _check_bool,
        "ray_use_compile": _check_bool,
        "ray_transfer_fn": _check_callable,
        "cp_plan": _check_anything,
        "attention_backend": _check_str,
        "ulysses_anything": _check_bool,
        "ulysses_float8": _check_bool,
        "ulysses_async": _check_bool,
        "extra_parallel_kwargs": _check_dict,
        "ring_rotate_method": _check_str,
        "ring_convert_to_fp32": _check_bool,
        "extra_parallel_modules": _check_modules,
        "parallel_kwargs": _check_dict,
    }

    def _normalize(self) -> None:
        if isinstance(self.parallel_kwargs, dict) and self.parallel_kwargs:
            fields = [name for name in self._field_names() if name != "parallel_kwargs"]
            for key, value in self.parallel_kwargs.items():
                target = _DEPRECATED_PARALLEL_KWARGS.get(key, key)
                if target not in fields:
                    raise UnknownKeyError(
                        key,
                        [*fields, *_DEPRECATED_PARALLEL_KWARGS],
                        section="parallelism_config.parallel_kwargs",
                    )
                if key in _DEPRECATED_PARALLEL_KWARGS:
                    logger.warning(
                        "parallelism_config.parallel_kwargs.%s is deprecated; use %s", key, target
                    )
                setattr(self, target, value)
        if self.backend is not None:
            self.backend = _backend_name(self.backend, _PARALLEL_BACKENDS, "backend")
        for name in _PARALLEL_SIZES:
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() == "auto":
                setattr(self, name, "auto")

    def _check_relations(self) -> None:
        autos = [name for name in _PARALLEL_SIZES if getattr(self, name) == "auto"]
        if len(autos) > 1:
            raise ConfigError(
                autos[1],
                "auto",
                "at most one of ulysses_size, ring_size, tp_size set to 'auto'",
                hint=f"{autos[0]} is already 'auto'",
            )
        needed = self._backend_needed()
        if needed is None:
            # cache-dit refuses a parallelism_config that parallelizes nothing.
            raise ConfigError(
                "parallelism_config",
                {name: getattr(self, name) for name in _PARALLEL_SIZES},
                "at least one of ulysses_size, ring_size, tp_size > 1 or 'auto'",
            )
        if self.backend not in ("AUTO", needed):
            raise ConfigError(
                "backend",
                self.backend,
                f"AUTO or {needed} for these sizes",
                hint="context parallelism runs on CACHE_DIT, tensor parallelism on "
                "NATIVE_PYTORCH, both together on NATIVE_HYBRID",
            )

    def strify(
        self,
        details: bool = False,
        text_encoder: bool = False,
        vae: bool = False,
        controlnet: bool = False,
    ) -> str:
        """cache-dit's tag of the layout (``Ulysses2_Ring2_UAA``), or with ``details`` its
        ``ParallelismConfig(...)`` form. The extra-module flags add cache-dit's ``TEP`` / ``VAEP`` /
        ``CNP`` suffixes; here extra modules are never parallelized, so only a caller sets them."""
        if details:
            shown = [f"backend={self.backend}"]
            if self.ulysses_size is not None:
                shown.append(f"ulysses_size={self.ulysses_size}")
                shown += [
                    f"{flag}={getattr(self, flag)}"
                    for flag in ("ulysses_anything", "ulysses_float8", "ulysses_async")
                    if getattr(self, flag)
                ]
            shown += [
                f"{size}={getattr(self, size)}"
                for size in ("ring_size", "tp_size")
                if getattr(self, size) is not None
            ]
            return f"ParallelismConfig({', '.join(shown)})"
        parts = [
            f"{label}{size}"
            for label, size in (("Ulysses", self.ulysses_size), ("Ring", self.ring_size))
            if size is not None
        ]
        if self.ulysses_anything:
            parts += ["UAA"] + (["F8"] if self.ulysses_float8 else [])
        elif self.ulysses_float8:
            parts.append("UF8")
        if self.ulysses_async:
            parts.append("UAS")
        if self.tp_size is not None:
            parts.append(f"TP{self.tp_size}")
        extras = (("TEP", text_encoder), ("VAEP", vae), ("CNP", controlnet))
        parts += [tag for tag, wanted in extras if wanted]
        return "_".join(parts)

    def _backend_needed(self) -> Optional[str]:
        def enabled(value: Any) -> bool:
            return value == "auto" or (_is_int(value) and value > 1)

        context = enabled(self.ulysses_size) or enabled(self.ring_size)
        tensor = enabled(self.tp_size)
        if context and tensor:
            return "NATIVE_HYBRID"
        if context:
            return "CACHE_DIT"
        if tensor:
            return "NATIVE_PYTORCH"
        return None


_QUANTIZE_BACKENDS = {
    "auto": QuantizeBackend.AUTO,
    "ao": QuantizeBackend.TORCHAO,
    "torchao": QuantizeBackend.TORCHAO,
    "cache_dit": QuantizeBackend.CACHE_DIT,
    "cache-dit": QuantizeBackend.CACHE_DIT,
    "cachedit": QuantizeBackend.CACHE_DIT,
}
_SVDQ_QUANT_TYPE = re.compile(r"svdq_(?:int4|nvfp4)_r\d+(?:_dq)?")


def _check_quantize_backend(key: str, value: Any) -> None:
    if value not in _QUANTIZE_BACKENDS.values():
        _backend_name(value, _QUANTIZE_BACKENDS, key)


def _check_components(key: str, value: Any) -> None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return
    if isinstance(value, dict) and all(
        isinstance(name, str) and isinstance(spec, dict) for name, spec in value.items()
    ):
        return
    raise ConfigError(
        key, value, "a list of component names, or {component: {quant_type: ...}} mapping"
    )


def _check_precision_plan(key: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(layer, str) and isinstance(kind, str) for layer, kind in value.items()
    ):
        raise ConfigError(key, value, "a mapping of layer-name pattern to quant_type")


@dataclasses.dataclass
class QuantizeConfig(_ValidatedConfig):
    """The ``quantize_config`` section: cache-dit's ``QuantizeConfig`` fields and defaults."""

    backend: str = "AUTO"
    quant_type: str = "float8_per_row"
    exclude_layers: Optional[List[str]] = dataclasses.field(
        default_factory=lambda: ["embedder", "embed", "modulation", "mod"]
    )
    regional_quantize: bool = True
    repeated_blocks: List[str] = dataclasses.field(default_factory=list)
    filter_fn: Optional[Callable[..., bool]] = None
    components_to_quantize: Union[List[str], Dict[str, Dict[str, Any]], None] = None
    per_tensor_fallback: bool = True
    precision_plan: Optional[Dict[str, str]] = None
    calibrate_fn: Optional[Callable[..., Any]] = None
    serialize_to: Optional[str] = None
    svdq_kwargs: Optional[Dict[str, Any]] = None
    verbose: bool = False

    _CHECKS: ClassVar[Dict[str, Checker]] = {
        "backend": _check_quantize_backend,
        "quant_type": _check_str,
        "exclude_layers": _check_str_list,
        "regional_quantize": _check_bool,
        "repeated_blocks": _check_str_list,
        "filter_fn": _check_callable,
        "components_to_quantize": _check_components,
        "per_tensor_fallback": _check_bool,
        "precision_plan": _check_precision_plan,
        "calibrate_fn": _check_callable,
        "serialize_to": _check_str,
        "svdq_kwargs": _check_dict,
        "verbose": _check_bool,
    }

    def _normalize(self) -> None:
        if isinstance(self.quant_type, str):
            self.quant_type = self.quant_type.lower()
        if self.backend is not None:
            self.backend = _backend_name(self.backend, _QUANTIZE_BACKENDS, "backend")
        if self.backend == "AUTO" and isinstance(self.quant_type, str):
            # cache-dit's choice: SVDQuant runs on its own kernels, everything else on torchao.
            svdq = self.quant_type.startswith("svdq")
            self.backend = QuantizeBackend.CACHE_DIT if svdq else QuantizeBackend.TORCHAO

    def strify(self) -> str:
        """cache-dit's tag: the quant type, or ``<component:type>`` per component of a mapping."""
        if isinstance(self.components_to_quantize, dict):
            return "".join(
                f"<{component}:{self._tag_of(spec.get('quant_type', self.quant_type))}>"
                for component, spec in self.components_to_quantize.items()
            )
        return self._tag_of(self.quant_type)

    def _tag_of(self, quant_type: str) -> str:
        quant_type = quant_type.lower()
        if not quant_type.startswith("svdq"):
            return quant_type
        options = self.svdq_kwargs or {}
        strategy = options.get("smooth_strategy", "identity")
        if quant_type.endswith("_dq") and strategy != "identity":
            quant_type += f"_{strategy}"
            if strategy == "few_shot":
                quant_type += f"_{options.get('few_shot_relax_strategy', 'auto')}"
        return quant_type + ("_fused_mlp" if options.get("fused_mlp", False) else "")

    def _check_relations(self) -> None:
        svdq = isinstance(self.quant_type, str) and self.quant_type.startswith("svdq")
        if svdq and not _SVDQ_QUANT_TYPE.fullmatch(self.quant_type):
            raise ConfigError(
                "quant_type",
                self.quant_type,
                "svdq_int4_r{rank}, svdq_nvfp4_r{rank}, optionally with a _dq suffix",
            )
        if self.svdq_kwargs is not None and not svdq:
            raise ConfigError(
                "svdq_kwargs",
                self.svdq_kwargs,
                "only with an svdq_* quant_type",
                hint=f"quant_type is {self.quant_type!r}",
            )
