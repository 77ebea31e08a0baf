"""The package's layout rules (docs/ARCHITECTURE.md), checked on the source with ``ast``.

- no import cycle inside video_fer, counting module-level imports alone and module- plus
  function-level imports together;
- no module imports another module's private (``_name``) name;
- floors: core -> faces -> models -> the wings (data, train, evaluate, track) -> cli; no module
  imports a module of a higher floor;
- ``video_fer.track`` never reaches ``video_fer.data.prepare``, even through function-level imports;
- every ``from video_fer... import name`` in the package, recipes, tools and tests names
  something that exists (a module, or a name the module defines or imports).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "video_fer"
CORE = {"errors", "io", "config", "video", "runtime", "version"}
FLOORS = {"core": 0, "faces": 1, "models": 2, "data": 3, "train": 3, "evaluate": 3, "track": 3, "cli": 4}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    name: str | None  # the name taken from it (None: the module itself)
    function_level: bool
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = package_modules()


def floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package root is the public facade: it may re-export any part
        return max(FLOORS.values())
    return FLOORS["core"] if parts[1] in CORE else FLOORS[parts[1]]


def imports(path: Path, source: str) -> list[Edge]:
    """Every import of video_fer modules in a file, module-level or inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                edges.extend(Edge(source, alias.name, None, in_function, child.lineno)
                             for alias in child.names if alias.name.split(".")[0] == "video_fer")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against the importing module's package
                    anchor = source.split(".") if is_package else source.split(".")[:-1]
                    anchor = anchor[:len(anchor) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "video_fer":
                    continue
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in MODULES:
                        edges.append(Edge(source, submodule, None, in_function, child.lineno))
                    else:
                        edges.append(Edge(source, base, alias.name, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return edges


def package_edges() -> list[Edge]:
    return [edge for module, path in MODULES.items() for edge in imports(path, module)]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), Tarjan."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for edge in edges:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph.get(module, ()):
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            connect(module)
    return found


def defined_names(path: Path) -> set[str]:
    """Names a module binds at its top level (definitions, assignments, imports; inside top-level if/try too)."""
    names: set[str] = set()

    def collect(body) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                collect(node.body)
                for handler in getattr(node, "handlers", []):
                    collect(handler.body)
                collect(getattr(node, "orelse", []))
                collect(getattr(node, "finalbody", []))

    collect(ast.parse(path.read_text()).body)
    return names


def test_the_package_parses_into_the_expected_parts():
    parts = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert {"faces", "models", "data", "train", "evaluate", "track", "cli"} <= parts
    assert not parts - set(FLOORS) - CORE, f"modules outside the layout: {sorted(parts - set(FLOORS) - CORE)}"
    assert "video_fer.models.heads" in MODULES and "video_fer.models.heads.common" in MODULES
    folders = {path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    assert sorted(str(f) for f in folders if not (f / "__init__.py").is_file()) == []  # every part installs


def test_no_import_cycles_module_level_or_with_function_level_imports():
    edges = package_edges()
    module_level = cycles([edge for edge in edges if not edge.function_level])
    everything = cycles(edges)
    print(f"import cycles: {len(module_level)} with module-level imports, {len(everything)} with "
          f"module- and function-level imports ({len(edges)} imports between {len(MODULES)} modules)")
    assert module_level == [], f"module-level import cycles: {module_level}"
    assert everything == [], f"import cycles through function-level imports: {everything}"


def test_the_detector_finds_a_cycle():
    """The check above can fail: two modules importing each other form one cycle."""
    first, second = sorted(MODULES)[:2]
    assert cycles([Edge(first, second, None, False, 1), Edge(second, first, None, True, 1)]) == [sorted([first, second])]


def test_no_module_imports_a_private_name_of_another():
    private = [f"{edge.source}:{edge.line} imports {edge.target}.{edge.name}" for edge in package_edges()
               if edge.name and edge.name.startswith("_") and not edge.name.startswith("__")
               and edge.target != edge.source]
    assert private == []


def test_lower_floors_never_import_higher_ones():
    upward = [f"{edge.source}:{edge.line} -> {edge.target}" for edge in package_edges()
              if floor(edge.target) > floor(edge.source)]
    assert upward == []


def test_track_never_reaches_the_preparation_pipeline():
    graph: dict[str, set[str]] = {}
    for edge in package_edges():
        graph.setdefault(edge.source, set()).add(edge.target)
    track_modules = [module for module in MODULES if module.startswith("video_fer.track")]
    reached, todo = set(track_modules), list(track_modules)
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert "video_fer.data.prepare" not in reached
    assert "video_fer.track.bundle" in reached and "video_fer.faces.crops" in reached  # the walk does reach things


@pytest.mark.parametrize("folder", ["video_fer", "recipes", "tools", "tests"])
def test_every_imported_video_fer_name_exists(folder):
    names = {module: defined_names(path) for module, path in MODULES.items()}
    missing = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        source = module_name(path) if folder == "video_fer" else path.stem
        for edge in imports(path, source):
            if edge.target not in MODULES:
                missing.append(f"{path.relative_to(ROOT)}:{edge.line}: no module {edge.target}")
            elif edge.name is not None and edge.name not in names[edge.target]:
                missing.append(f"{path.relative_to(ROOT)}:{edge.line}: {edge.target} has no {edge.name}")
    assert missing == []
