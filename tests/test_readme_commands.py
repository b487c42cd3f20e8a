"""The README's set-up commands are the ones CI runs, in fresh venvs (.ci/run reads them)."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).parent.parent


def ci_command(index: int) -> str:
    script = (ROOT / ".ci" / "run").read_text()
    function = re.search(r"readme_command\(\) \{.*?\n\}\n", script, flags=re.S).group(0)
    done = subprocess.run(
        ["bash", "-c", f"{function}\nreadme_command {index}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    return done.stdout.strip()


def test_ci_runs_the_readmes_demo_command_on_a_bare_install():
    assert ci_command(1) == "pip install torch==2.13.0 && pip install -e . && dit-cache demo"


def test_ci_runs_the_readmes_test_command():
    command = ci_command(2)
    assert command.startswith("pip install torch==2.13.0 && pip install -e '.[test,reference")
    assert command.endswith("&& python -m pytest -q")


def test_the_demos_pipeline_needs_are_runtime_dependencies():
    # The demo builds a diffusers FluxPipeline, which cannot be imported without transformers.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0] for spec in project["dependencies"]}
    assert {"torch", "diffusers", "transformers"} <= names


def test_every_package_of_the_source_tree_is_installed():
    # pyproject.toml lists the packages explicitly; an editable install finds a missing one anyway,
    # a wheel silently leaves it out.
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "dit_cache_backend").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk - listed == set()
