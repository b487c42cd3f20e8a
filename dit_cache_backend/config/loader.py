"""The cache-dit YAML / JSON / dict loader: ``load_configs`` and its per-section siblings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import (
    Any,
    Dict,
    Mapping,
    Optional,
    Tuple,
    Union,
)

import yaml

from ..errors import ConfigError
from .cache import CacheType, DBCacheConfig, DBPruneConfig
from .calibrator import CalibratorConfig
from .checks import _check_keys, _check_str, _require_mapping
from .flat import _CALIBRATOR_KEYS, _calibrator_from
from .scaleout import _PARALLEL_SIZE_ALIASES, ParallelismConfig, QuantizeConfig

PathOrDict = Union[str, "os.PathLike[str]", Mapping[str, Any]]

_SECTIONS = ("cache_config", "parallelism_config", "attention_backend", "quantize_config")


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The config file passed to :func:`load_configs` does not exist (key ``path``)."""

    def __init__(self, path: str, *, hint: Optional[str] = None) -> None:
        message = f"config file not found: {path}"
        if hint:
            message += f". {hint}"
        super().__init__(
            "path", path, "the path of an existing YAML or JSON file", hint=hint, message=message
        )



def load_configs(
    path_or_dict: PathOrDict,
    return_dict: bool = True,
    *,
    reset: bool = False,
) -> Union[Dict[str, Any], Tuple[Any, Any, Any, Any, Any]]:
    """Load every section of a cache-dit config file or dict, for ``enable_cache(pipe, **...)``.

    Returns ``{"cache_config", "calibrator_config", "parallelism_config", "attention_backend",
    "quantize_config"}`` (missing sections are ``None``), or that 5-tuple if ``return_dict`` is
    false. ``path_or_dict`` is a YAML or JSON file path (str or Path; ``.json`` files are parsed as
    JSON, anything else as YAML) or a mapping. Without a ``cache_config`` section and without any of
    the other sections, the whole input is read as the flat legacy form of cache options.
    ``reset=True`` builds partial cache/calibrator configs (every unset field ``None``).

    Raises ConfigError (or a subclass: UnknownKeyError, NotSupportedYetError,
    ConfigFileNotFoundError) naming the file, section and key at fault.
    """
    raw, source = _read_source(path_or_dict)
    cache_config, calibrator_config = _cache_configs_from(raw, source, reset)
    parallelism_config = _parallelism_from(raw, source)
    attention_backend = _attention_backend_from(raw)
    quantize_config = _quantize_from(raw, source)
    if return_dict:
        return {
            "cache_config": cache_config,
            "calibrator_config": calibrator_config,
            "parallelism_config": parallelism_config,
            "attention_backend": attention_backend,
            "quantize_config": quantize_config,
        }
    return cache_config, calibrator_config, parallelism_config, attention_backend, quantize_config


def load_parallelism_config(path_or_dict: PathOrDict, **kwargs: Any) -> Optional[ParallelismConfig]:
    """Load only the ``parallelism_config`` section (``None`` when there is none).

    Unlike cache-dit, ``"auto"`` sizes stay ``"auto"`` until ``enable_cache`` resolves them from
    the world size. ``check_only=True`` returns whether the section exists.
    """
    raw, source = _read_source(path_or_dict)
    if kwargs.get("check_only", False):
        return "parallelism_config" in raw  # type: ignore[return-value]
    return _parallelism_from(raw, source)


def load_quantize_config(path_or_dict: PathOrDict, **kwargs: Any) -> Optional[QuantizeConfig]:
    """Load only the ``quantize_config`` section (``None`` when there is none)."""
    return _quantize_from(*_read_source(path_or_dict))


def load_attn_backend_config(path_or_dict: PathOrDict, **kwargs: Any) -> Optional[str]:
    """Load only the top-level ``attention_backend`` name (``None`` when there is none)."""
    return _attention_backend_from(_read_source(path_or_dict)[0])


def load_cache_config(
    path_or_dict: PathOrDict, reset: bool = False
) -> Tuple[Optional[DBCacheConfig], Optional[CalibratorConfig]]:
    """Load only ``(cache_config, calibrator_config)`` from a config file or dict.

    Both are ``None`` when the input has other sections but no ``cache_config``. With
    ``reset=True`` the configs start all-``None`` so that only the given fields are set (used by
    ``refresh_context`` and per-block-list overrides).
    """
    raw, source = _read_source(path_or_dict)
    return _cache_configs_from(raw, source, reset)


def _where(section: str, source: Optional[str]) -> str:
    return f"{section} of {source}" if source else section


def _read_source(path_or_dict: PathOrDict) -> Tuple[Dict[str, Any], Optional[str]]:
    """The top-level mapping and, for files, the path to name in messages."""
    if isinstance(path_or_dict, Mapping):
        return _copy_containers(path_or_dict), None
    if isinstance(path_or_dict, (str, os.PathLike)):
        path = Path(path_or_dict)
        return _parse_file(path), str(path)
    raise ConfigError(
        "path_or_dict",
        path_or_dict,
        "the path of a YAML or JSON file (str or pathlib.Path) or a dict",
    )


def _copy_containers(value: Any) -> Any:
    """Copy dicts and lists so parsing never mutates the caller's data; leaves (modules, tensors,
    callables) are shared rather than deep-copied."""
    if isinstance(value, Mapping):
        return {key: _copy_containers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_containers(item) for item in value]
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key set twice in one mapping is an error (the YAML
    spec requires unique keys; PyYAML silently keeps the last value)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    str(key),
                    "set twice",
                    "each key once per mapping",
                    message=f"key {key!r} is set twice (line {key_node.start_mark.line + 1})",
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_file(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = None
        if "\n" in str(path) or ": " in str(path):
            hint = (
                "load_configs takes a file path or a dict, not YAML text; "
                "pass yaml.safe_load(text)"
            )
        raise ConfigFileNotFoundError(str(path), hint=hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "path", str(path), "a readable UTF-8 YAML or JSON file", hint=str(exc)
        ) from exc

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                "path",
                str(path),
                "a valid JSON file",
                message=f"cannot parse JSON file {path}: line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}",
            ) from exc
    else:
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(
                "path",
                str(path),
                "a valid YAML file",
                message=f"cannot parse YAML file {path}: {where}{problem}",
            ) from exc

    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            "path",
            str(path),
            "a file whose top level is a mapping of sections or cache options",
            message=f"{path}: the top level must be a mapping of sections or cache options, "
            f"got {got}",
        )
    return dict(data)



def _cache_configs_from(
    raw: Dict[str, Any], source: Optional[str], reset: bool
) -> Tuple[Optional[DBCacheConfig], Optional[CalibratorConfig]]:
    if any(section in raw for section in _SECTIONS):
        _check_keys(raw, _SECTIONS, _where("the top level", source))
        if "cache_config" not in raw:
            return None, None
        section = _require_mapping(raw["cache_config"], _where("cache_config", source))
        return _parse_cache_options(section, _where("cache_config", source), reset, ())
    # Flat legacy form: the whole input is cache options. The section names are listed as valid
    # keys too, so that a misspelt `cache_confg:` is answered with `cache_config`.
    return _parse_cache_options(raw, _where("the cache options", source), reset, _SECTIONS)


def _parse_cache_options(
    options: Dict[str, Any], section: str, reset: bool, also_valid: Tuple[str, ...]
) -> Tuple[DBCacheConfig, Optional[CalibratorConfig]]:
    config_class = _cache_config_class(options)
    valid = [
        *config_class._field_names(),
        *config_class._ALIASES,
        *sorted(_CALIBRATOR_KEYS),
        *also_valid,
    ]
    _check_keys(options, valid, section)

    calibrator_options = {key: options.pop(key) for key in list(options) if key in _CALIBRATOR_KEYS}
    calibrator_config = _calibrator_from(calibrator_options, reset)
    if "cache_type" in options:
        options["cache_type"] = CacheType.parse(options["cache_type"])
    if reset:
        return config_class().reset(**options), calibrator_config
    cache_config = config_class()
    cache_config.update(**options)
    return cache_config, calibrator_config



def _cache_config_class(options: Mapping[str, Any]) -> type:
    cache_type = options.get("cache_type")
    if cache_type is None:
        return DBCacheConfig
    parsed = CacheType.parse(cache_type)
    if parsed is CacheType.NONE:
        raise ConfigError(
            "cache_type",
            cache_type,
            "DBCache or DBPrune",
            hint="to run without caching, leave the cache options out",
        )
    return DBPruneConfig if parsed is CacheType.DBPrune else DBCacheConfig



def _parallelism_from(raw: Mapping[str, Any], source: Optional[str]) -> Optional[ParallelismConfig]:
    if "parallelism_config" not in raw:
        return None
    where = _where("parallelism_config", source)
    options = _require_mapping(raw["parallelism_config"], where)
    fields = ParallelismConfig._field_names()
    _check_keys(options, [*fields, *_PARALLEL_SIZE_ALIASES], where)
    for alias, canonical in _PARALLEL_SIZE_ALIASES.items():
        if alias not in options:
            continue
        value = options.pop(alias)
        if canonical in options and options[canonical] != value:
            raise ConfigError(
                alias,
                value,
                f"the same value as {canonical} ({options[canonical]!r})",
                hint=f"'{alias}' is an alias of '{canonical}'; set only one of them",
            )
        options[canonical] = value
    return ParallelismConfig(**options)


def _attention_backend_from(raw: Mapping[str, Any]) -> Optional[str]:
    attention_backend = raw.get("attention_backend")
    if attention_backend is not None:
        _check_str("attention_backend", attention_backend)
    return attention_backend


def _quantize_from(raw: Mapping[str, Any], source: Optional[str]) -> Optional[QuantizeConfig]:
    if "quantize_config" not in raw:
        return None
    where = _where("quantize_config", source)
    options = _require_mapping(raw["quantize_config"], where)
    _check_keys(options, QuantizeConfig._field_names(), where)
    # Like cache-dit, an empty YAML value means "use the default".
    return QuantizeConfig(**{key: value for key, value in options.items() if value is not None})
