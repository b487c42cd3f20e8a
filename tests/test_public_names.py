"""Every public name of cache-dit 1.5.3 exists here with cache-dit's parameters, or is documented.

The reference is read from the installed cache-dit (the ``reference`` extra); the only
differences allowed are the ones listed below, each of which docs/compatibility.md explains.
"""

from __future__ import annotations

import enum
import inspect
import pathlib
import types

import pytest

import dit_cache_backend as ours
from dit_cache_backend.compat import NOT_PROVIDED

from engines import load_engine

COMPATIBILITY_DOC = pathlib.Path(__file__).parent.parent / "docs" / "compatibility.md"

# Names whose signature differs on purpose: name -> the parameters in question ("*": all).
SIGNATURE_DIFFERENCES = {
    # cache-dit's **kwargs carry only `reset`, which ours name.
    "load_cache_config": {"kwargs"},
    "load_configs": {"kwargs"},
    # cache-dit's **kwargs are passed on and never read.
    "supported_pipelines": {"kwargs"},
    # cache-dit defaults it to None and then fails; ours say it is required.
    "enable_cache": {"pipe_or_adapter"},
    # Made by layerwise_offload(), never by users; ours hold diffusers' group-offload state.
    "LayerwiseOffloadHandle": {"*"},
}


def reference():
    return load_engine("cache_dit").module


def public_names(module: types.ModuleType):
    return sorted(
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    )


def comparable_parameters(obj):
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return {
        name: parameter
        for name, parameter in signature.parameters.items()
        if name not in ("self", "cls") and not name.startswith("_")  # private: not API
    }


def same_default(theirs, mine) -> bool:
    if theirs.default is inspect.Parameter.empty:
        return True  # a required parameter of theirs may have a default here
    if isinstance(theirs.default, enum.Enum):
        # Our enum member, or its name given as a string (parsed the same way).
        name = getattr(mine.default, "name", mine.default)
        return isinstance(name, str) and name.upper() == theirs.default.name.upper()
    return type(theirs.default) is type(mine.default) and theirs.default == mine.default


def test_the_reference_has_the_names_this_test_was_written_for():
    assert len(public_names(reference())) == 64


def test_every_cache_dit_name_is_here_or_explained():
    missing = [
        name
        for name in public_names(reference())
        if name not in NOT_PROVIDED and name not in vars(ours)
    ]
    assert missing == []


@pytest.mark.parametrize("name", sorted(NOT_PROVIDED))
def test_a_name_without_meaning_here_raises_naming_the_alternative(name):
    assert name in public_names(reference())
    with pytest.raises(NotImplementedError, match=f"cache_dit.{name} is not provided.*: .+"):
        getattr(ours, name)


@pytest.mark.parametrize("name", sorted(NOT_PROVIDED))
def test_a_name_without_meaning_here_is_listed_in_the_compatibility_notes(name):
    assert f"`{name}`" in COMPATIBILITY_DOC.read_text()


def _shared_names():
    try:
        module = reference()
    except pytest.skip.Exception:
        return []
    return [name for name in public_names(module) if name not in NOT_PROVIDED]


@pytest.mark.parametrize("name", _shared_names())
def test_a_shared_name_takes_cache_dits_parameters(name):
    theirs_obj, mine_obj = getattr(reference(), name), getattr(ours, name)
    theirs, mine = comparable_parameters(theirs_obj), comparable_parameters(mine_obj)
    if theirs is None or isinstance(theirs_obj, enum.Enum):
        return  # a value (a pattern, a cache type, a tuple): compared by the value tests
    assert mine is not None, name
    allowed = SIGNATURE_DIFFERENCES.get(name, set())
    if "*" in allowed:
        return
    for parameter_name, parameter in theirs.items():
        if parameter_name in allowed:
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in mine.values()), name
            continue
        assert parameter_name in mine, f"{name}: no parameter {parameter_name!r}"
        assert same_default(parameter, mine[parameter_name]), f"{name}({parameter_name}=...)"
    for parameter_name, parameter in mine.items():
        if parameter_name not in theirs and parameter.kind is not inspect.Parameter.VAR_KEYWORD:
            assert parameter.default is not inspect.Parameter.empty, (
                f"{name}: our extra parameter {parameter_name!r} must be optional"
            )


@pytest.mark.parametrize(
    "name", ["NONE", "DBCache", "DBPrune", *(f"Pattern_{i}" for i in range(6))]
)
def test_a_shared_value_has_cache_dits_value(name):
    assert getattr(ours, name).name == getattr(reference(), name).name
    assert getattr(ours, name).value == getattr(reference(), name).value


def test_version_tuple_is_a_tuple_of_this_packages_version():
    assert ours.version_tuple == tuple(int(part) for part in ours.__version__.split("."))


def test_signature_differences_are_listed_in_the_compatibility_notes():
    text = COMPATIBILITY_DOC.read_text()
    for name in SIGNATURE_DIFFERENCES:
        assert f"`{name}`" in text
