"""Ready cache presets in cache-dit's YAML schema, installed as ``dit_cache_backend.presets``.

Load one with ``dit_cache_backend.load_configs(preset_path("balanced"))`` or by name in the CLI.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List


def preset_names() -> List[str]:
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".yaml")
    )


def preset_path(name: str) -> Path:
    """Path of the preset ``name`` (e.g. "balanced"); ValueError listing the presets otherwise."""
    candidate = resources.files(__name__) / f"{name}.yaml"
    if not candidate.is_file():
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(preset_names())}")
    return Path(str(candidate))


def resolve(name_or_path: str) -> Path:
    """A preset name ("balanced") or a YAML/JSON file path, as the path to load.

    A name with a config suffix, or one that exists on disk, is a path; anything else is a preset
    name (ValueError listing the presets when there is none of that name).
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        return path
    return preset_path(name_or_path)
