"""The import graph matches docs/architecture.md: every module has a layer, no layer imports from
a layer above it, there is no import cycle, and the framework plugins reach only the backend.

Imports are read from the source with ``ast`` (function-level imports included, since a lazy import
is still a dependency); the layer order is read from the "Layers" table of the doc, top to bottom.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dit_cache_backend"
DOC = ROOT / "docs" / "architecture.md"
# The checkout's folders installed inside the package (pyproject.toml's package-dir).
FOLDERS = {"adapters": f"{PACKAGE}.adapters", "configs": f"{PACKAGE}.presets"}
# The plugins may use only the backend's operations, the flat-settings translation and the errors.
PLUGIN_IMPORTS = {f"{PACKAGE}.backend", f"{PACKAGE}.config.framework", f"{PACKAGE}.errors"}
# Cycles another change removes; each entry names it. Delete the entry when that change lands.
KNOWN_CYCLES: Set[frozenset] = {
    # bench imports cli._latents_to_images and cli imports bench.add_bench_parser (issue 14, the
    # bench split moves the helper to tiny_model.py).
    frozenset({f"{PACKAGE}.bench", f"{PACKAGE}.cli"}),
    # cli registers calibrate, which builds bench's workloads: the same bench -> cli edge closes it.
    frozenset({f"{PACKAGE}.bench", f"{PACKAGE}.calibrate", f"{PACKAGE}.cli"}),
}


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] in FOLDERS:
        parts = FOLDERS[parts[0]].split(".") + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> Dict[str, Path]:
    paths = list((ROOT / PACKAGE).rglob("*.py"))
    paths += [p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")]
    found = {}
    for path in paths:
        tree = ast.parse(path.read_text())
        if path.name == "__init__.py" and all(
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in tree.body
        ):
            continue  # a package holding only a docstring is a folder, not a module with a layer
        found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _imports(name: str, path: Path) -> Set[str]:
    """The package modules that ``name`` imports (``from . import x`` resolves to module x when
    x is one, else to the package itself)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for target in targets:
            # The longest known module that the target names (``a.b.c`` may be attribute c of a.b).
            while target and target not in SOURCES:
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
                break
    return found


GRAPH = {name: _imports(name, path) for name, path in SOURCES.items()}


def _doc_layers() -> List[Tuple[str, List[str]]]:
    """(layer, module names) rows of the doc's Layers table (its first table), top to bottom."""
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    table = [line for line in section.split("\n\n") if line.lstrip().startswith("| layer")][0]
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        modules = []
        for entry in re.findall(r"`([^`]+)`", cells[1]):
            if entry.endswith("/") and entry.rstrip("/") not in FOLDERS:
                # A subpackage: every module in it.
                package = f"{PACKAGE}.{entry.rstrip('/').replace('/', '.')}"
                modules += sorted(m for m in SOURCES if m == package or m.startswith(package + "."))
                continue
            entry = entry.removesuffix(".py")
            parts = entry.split("/")
            if parts[0] in FOLDERS:
                parts = FOLDERS[parts[0]].split(".") + parts[1:]
            else:
                parts = [PACKAGE, *parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules.append(".".join(parts))
        rows.append((cells[0], modules))
    return rows


LAYERS = _doc_layers()
RANK = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def test_the_doc_lists_layers_top_to_bottom() -> None:
    names = [layer for layer, _ in LAYERS]
    assert names[0] == "application" and names[-1] == "config"
    assert len(names) == len(set(names))


def test_every_module_has_exactly_one_layer_in_the_doc() -> None:
    listed = [module for _, modules in LAYERS for module in modules]
    assert sorted(set(SOURCES) - set(listed)) == [], "modules missing from docs/architecture.md"
    assert sorted(set(listed) - set(SOURCES)) == [], "doc lists modules that do not exist"
    assert len(listed) == len(set(listed)), "a module is listed twice"


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_module_imports_from_a_layer_above_its_own(module: str) -> None:
    above = sorted(d for d in GRAPH[module] if RANK.get(d, 0) < RANK.get(module, 0))
    assert above == [], f"{module} ({LAYERS[RANK[module]][0]}) imports from above: {above}"


def _cycles() -> List[List[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in GRAPH[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def test_the_import_graph_has_no_cycle() -> None:
    cycles = [c for c in _cycles() if frozenset(c) not in KNOWN_CYCLES]
    assert cycles == []


def test_the_block_adapter_types_and_inference_import_no_resolution() -> None:
    # The cycle adapter <-> inference that resolve.py removed must not come back.
    assert f"{PACKAGE}.resolve" not in GRAPH[f"{PACKAGE}.inference"]
    assert GRAPH[f"{PACKAGE}.block_adapter"] <= {f"{PACKAGE}.config", f"{PACKAGE}.errors", f"{PACKAGE}.patterns"}


@pytest.mark.parametrize("plugin", sorted(m for m in SOURCES if m.startswith(f"{PACKAGE}.adapters.")))
def test_framework_plugins_reach_the_engine_only_through_the_backend(plugin: str) -> None:
    assert GRAPH[plugin] <= PLUGIN_IMPORTS, sorted(GRAPH[plugin] - PLUGIN_IMPORTS)
