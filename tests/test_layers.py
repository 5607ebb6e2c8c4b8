"""The import rules of ARCHITECTURE.md section 1, read from the source (AST, every ggl/**/*.py, imports
inside functions included): (a) every ``ggl`` import goes to the same or a lower layer (and ``report``
imports neither ``config`` nor ``jobs``); (b) no cycle between modules; (c) no ``ggl`` import inside a
function. "Report" mode: today's violations are in the ALLOWLISTs below, which may only shrink; an
entry that no longer occurs fails too, so the lists stay honest (delete it; a moved module renames its
entries). Strict mode = all three lists empty.

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
          "config": 4, "jobs": 5, "report": 5, "sweep": 6, "cli": 7}
# today's modules outside the target packages (ARCHITECTURE.md section 3): module -> the package it goes to
TODAY = {
    "ggl.core.errors": "core", "ggl.core.checks": "core", "ggl.core.seeding": "core", "ggl.core.atomic": "core", "ggl.core.safe_load": "core",
    "ggl.core.environ": "core", "ggl.core.allocator": "core", "ggl.core.stats": "core", "ggl.core.plots": "core",
    "ggl.audit.metrics": "audit", "ggl.audit.records": "audit", "ggl.fl.progress": "fl", "ggl.models.checkpoint": "models",
    "ggl.runs.folder": "runs", "ggl.runs.resume": "runs", "ggl.runs.trainer": "runs", "ggl.runs.checkpointing": "runs",
    "ggl.jobs.federation": "jobs", "ggl.jobs.gan": "jobs", "ggl.jobs.attack": "jobs", "ggl.jobs.live": "jobs",
}
FORBIDDEN = {"report": ("config", "jobs")}  # same or lower layer, but not allowed (section 1, rule 1)

# --- today's violations (report mode): may only shrink -------------------------------------------------
# (a) "importer -> imported" that go up a layer (or into FORBIDDEN), each counted once per module pair
ALLOWLIST_UPWARD = {
    "ggl.audit.evaluate -> ggl.config",
    "ggl.audit.victim -> ggl.config",
    "ggl.runs.resume -> ggl.audit.victim",
    "ggl.runs.resume -> ggl.config",
}
# (b) the modules of each import cycle (a strongly connected component), sorted
ALLOWLIST_CYCLES = {
    ("ggl.audit.victim", "ggl.config"),
}
# (c) "importer -> imported": the number of `ggl` imports inside functions
ALLOWLIST_FUNCTION_IMPORTS: Dict[str, int] = {
    "ggl.attack -> ggl.attack.device": 1,
    "ggl.attack.attackers.base -> ggl.attack": 1,
    "ggl.attack.attackers.eot -> ggl.attack": 3,
    "ggl.attack.attackers.eot -> ggl.attack.objective": 3,
    "ggl.attack.attackers.eot -> ggl.defenses.clip": 1,
    "ggl.attack.attackers.eot -> ggl.defenses.quantize": 1,
    "ggl.attack.attackers.eot -> ggl.defenses.specs": 9,
    "ggl.attack.attackers.eot -> ggl.core.seeding": 1,
    "ggl.attack.attackers.ggl_latent -> ggl.attack": 1,
    "ggl.attack.attackers.inverting_gradients -> ggl.attack": 3,
    "ggl.attack.observation -> ggl.models": 2,
    "ggl.attack.schema -> ggl.attack.attackers": 1,
    "ggl.attack.schema -> ggl.attack.device": 2,
    "ggl.attack.schema -> ggl.defenses.specs": 1,
    "ggl.attack.trial -> ggl.defenses": 3,
    "ggl.audit.evaluate -> ggl.config": 1,
    "ggl.audit.reid -> ggl.gan.quality": 1,
    "ggl.audit.victim -> ggl.config": 1,
    "ggl.audit.victim -> ggl.data.datamodule": 1,
    "ggl.audit.victim -> ggl.fl.callbacks": 2,
    "ggl.audit.victim -> ggl.fl.client": 1,
    "ggl.audit.victim -> ggl.models": 1,
    "ggl.cli -> ggl.jobs.attack": 2,
    "ggl.cli -> ggl.config": 5,
    "ggl.cli -> ggl.jobs.federation": 1,
    "ggl.cli -> ggl.jobs.gan": 1,
    "ggl.cli -> ggl.models.checkpoint": 1,
    "ggl.cli -> ggl.runs.trainer": 2,
    "ggl.config -> ggl.audit.victim": 1,
    "ggl.config -> ggl.data.sources": 1,
    "ggl.config -> ggl.models": 1,
    "ggl.config -> ggl.runs.trainer": 1,
    "ggl.defenses.noise -> ggl.defenses.accounting": 1,
    "ggl.defenses.noise -> ggl.core.seeding": 2,
    "ggl.defenses.qsgd -> ggl.core.seeding": 2,
    "ggl.defenses.quantize -> ggl.core.seeding": 1,
    "ggl.jobs.federation -> ggl.audit.capture": 1,
    "ggl.gan -> ggl.gan.module": 1,
    "ggl.gan -> ggl.gan.prior": 1,
    "ggl.gan.quality -> ggl.gan.module": 1,
    "ggl.models.checkpoint -> ggl.data.sources": 1,
    "ggl.models.checkpoint -> ggl.models": 1,
    "ggl.runs.resume -> ggl.audit.victim": 1,
    "ggl.runs.resume -> ggl.config": 1,
    "ggl.runs.resume -> ggl.defenses.specs": 1,
    "ggl.sweep -> ggl.attack.attackers": 3,
    "ggl.sweep -> ggl.attack.search": 1,
    "ggl.sweep -> ggl.jobs.attack": 1,
    "ggl.sweep -> ggl.config": 8,
    "ggl.sweep -> ggl.defenses": 4,
    "ggl.sweep -> ggl.core.environ": 1,
    "ggl.sweep -> ggl.jobs.federation": 1,
    "ggl.sweep -> ggl.runs.resume": 1,
}  # 92 imports


def module_name(path: Path) -> str:
    parts = list(path.relative_to(GGL.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> Optional[str]:
    """The section-1 package of a module (today's or the target layout's), None if unknown."""
    if module in TODAY:
        return TODAY[module]
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
    assert not unknown, f"modules outside the layers of ARCHITECTURE.md section 1 (add to TODAY or move): {unknown}"


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
    assert not found - ALLOWLIST_UPWARD, f"new upward imports: {sorted(found - ALLOWLIST_UPWARD)}"
    assert not ALLOWLIST_UPWARD - found, f"fixed: delete from ALLOWLIST_UPWARD: {sorted(ALLOWLIST_UPWARD - found)}"


def test_no_import_cycles(graph):
    found = cycles(graph[1])
    assert not found - ALLOWLIST_CYCLES, f"new import cycles: {sorted(found - ALLOWLIST_CYCLES)}"
    assert not ALLOWLIST_CYCLES - found, f"gone: delete from ALLOWLIST_CYCLES: {sorted(ALLOWLIST_CYCLES - found)}"


def test_no_ggl_import_inside_a_function(graph):
    found = function_imports(graph[1])
    new = {k: v for k, v in found.items() if v > ALLOWLIST_FUNCTION_IMPORTS.get(k, 0)}
    gone = {k: v for k, v in ALLOWLIST_FUNCTION_IMPORTS.items() if found.get(k, 0) < v}
    assert not new, f"new ggl imports inside functions (hoist them): {new}"
    assert not gone, f"fewer than allowed: lower ALLOWLIST_FUNCTION_IMPORTS to {({k: found.get(k, 0) for k in gone})}"


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
