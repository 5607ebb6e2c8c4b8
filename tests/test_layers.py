"""The import rules of ARCHITECTURE.md section 1, read from the source (AST, every ggl/**/*.py, imports
inside functions included): (a) every ``ggl`` import goes to the same or a lower layer (and ``report``
imports neither ``config`` nor ``jobs``); (b) no cycle between modules; (c) no ``ggl`` import inside a
function. Strict: no exception is allowed (the step that moved the house here started from 4 upward
imports, 1 circle and 127 function-level imports, shrinking an allowlist to nothing).

An import edge goes to the module it names: ``from ggl.x import y`` -> ``ggl.x.y`` when that is a module,
else ``ggl.x`` (a package counts as its ``__init__.py``); relative imports resolve against the importer's
package. The implicit import of parent packages is not an edge.
"""
from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

GGL = Path(__file__).resolve().parent.parent / "ggl"

LAYERS = {"core": 0, "data": 1, "models": 1, "defenses": 1, "runs": 1, "fl": 2, "gan": 2, "attack": 2, "audit": 3,
          "config": 4, "jobs": 5, "report": 5, "flower": 5, "sweep": 6, "cli": 7}
FORBIDDEN = {"report": ("config", "jobs")}  # same or lower layer, but not allowed (section 1, rule 1)

def module_name(path: Path) -> str:
    parts = list(path.relative_to(GGL.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> Optional[str]:
    """The section-1 package of a module (today's or the target layout's), None if unknown."""
    parts = module.split(".")
    if module == "ggl":
        return "core"  # ggl/__init__.py: OMP_WAIT_POLICY default and __version__
    return parts[1] if parts[1] in LAYERS else None


def layer_of(module: str) -> Optional[int]:
    pkg = package_of(module)
    return None if pkg is None else LAYERS[pkg]


def _modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(GGL.rglob("*.py"))}


def _resolve(target: str, modules: Dict[str, Path]) -> str:
    """The longest known module prefix of a dotted name (``ggl.a.b.name`` -> ``ggl.a.b``)."""
    parts = target.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def _imports(module: str, path: Path, modules: Dict[str, Path]) -> List[Tuple[str, bool]]:
    """(imported ggl module, inside a function?) for every import statement of the module."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: List[Tuple[str, bool]] = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "ggl" or alias.name.startswith("ggl."):
                        out.append((_resolve(alias.name, modules), in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source == "ggl" or source.startswith("ggl."):
                    for alias in child.names:
                        full = f"{source}.{alias.name}"
                        out.append((full if full in modules else _resolve(source, modules), in_function))
            visit(child, inner)

    visit(tree, False)
    return out


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_layer(graph):
    modules, _ = graph
    unknown = sorted(m for m in modules if layer_of(m) is None)
    assert not unknown, f"modules outside the layers of ARCHITECTURE.md section 1 (move each into a layer package): {unknown}"


def upward_imports(edges) -> set:
    out = set()
    for importer, targets in edges.items():
        for target, _ in targets:
            if target == importer:
                continue
            up = layer_of(target) > layer_of(importer)
            if up or package_of(target) in FORBIDDEN.get(package_of(importer), ()):
                out.add(f"{importer} -> {target}")
    return out


def cycles(edges) -> set:
    """Strongly connected components of more than one module (Tarjan), each as a sorted tuple."""
    graph = {m: sorted({t for t, _ in ts if t != m}) for m, ts in edges.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), set(), [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def function_imports(edges) -> Dict[str, int]:
    return dict(Counter(f"{m} -> {t}" for m, ts in edges.items() for t, inside in ts if inside))


def test_imports_only_go_down(graph):
    found = upward_imports(graph[1])
    assert not found, f"imports that go up a layer (or from report into config/jobs): {sorted(found)}"


def test_no_import_cycles(graph):
    found = cycles(graph[1])
    assert not found, f"import cycles: {sorted(found)}"


def test_no_ggl_import_inside_a_function(graph):
    found = function_imports(graph[1])
    assert not found, f"ggl imports inside functions (hoist them to the module's top): {found}"


def test_the_scanner_resolves_relative_and_package_imports(tmp_path, monkeypatch):
    """The rules' reader itself: relative imports, ``from pkg import submodule``, a package as its
    __init__, function-level imports, and a cycle."""
    pkg = tmp_path / "ggl"
    for rel, text in {"__init__.py": "", "core/__init__.py": "from .errors import E\n", "core/errors.py": "E = 1\n",
                      "fl/__init__.py": "", "fl/a.py": "from . import b\nfrom ggl.core import errors\n",
                      "fl/b.py": "import ggl.fl.a\ndef f():\n    from ..audit import x\n",
                      "audit/__init__.py": "", "audit/x.py": "from ggl import core\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "GGL", pkg)
    modules = _modules()
    edges = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert edges["ggl.core"] == [("ggl.core.errors", False)]
    assert edges["ggl.fl.a"] == [("ggl.fl.b", False), ("ggl.core.errors", False)]
    assert edges["ggl.fl.b"] == [("ggl.fl.a", False), ("ggl.audit.x", True)]
    assert edges["ggl.audit.x"] == [("ggl.core", False)]
    assert cycles(edges) == {("ggl.fl.a", "ggl.fl.b")}
    assert upward_imports(edges) == {"ggl.fl.b -> ggl.audit.x"}
    assert function_imports(edges) == {"ggl.fl.b -> ggl.audit.x": 1}
