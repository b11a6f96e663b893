"""The package's shape: its import graph points down — each room imports only rooms of its own layer or below, no module
imports itself back through others (no cycle), and no function runs past 80 lines. A new module goes in a layer here;
an upward import fails this test."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgeqwen"

# Lowest first. A room is a top-level module or subpackage of edgeqwen.
LAYERS = [
    {"__init__", "errors", "log", "schema", "resources", "extras", "warm"},  # no edgeqwen imports but these
    {"child", "architectures", "targets", "runtime", "ortfloor"},  # runtime: the torch-free device side
    {"tiny", "checkpoint", "quantize"},  # quantizers take a typed request; they know no recipe or plan
    {"recipe"},
    {"planner"},
    {"memory", "export", "package", "interop", "web"},  # web: the browser page bundled into artifacts, `edgeqwen web`
    {"evaluate"},
    {"build", "bench", "bench_speculate", "train"},
    {"matrix", "tune", "serve"},
    {"cli", "__main__"},
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """edgeqwen modules `path` imports (at any depth of the file; `from pkg import submodule` names the submodule)."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("edgeqwen"))
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("edgeqwen"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names
                    if (PACKAGE.parent / target.replace(".", "/") / f"{a.name}.py").exists()}
            out.update(subs or {target})
    return out


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_room_has_a_layer():
    rooms = {_room(m) for m in _graph()}
    assert not rooms - set(LAYER), f"rooms with no layer in tests/test_layers.py: {sorted(rooms - set(LAYER))}"


def test_imports_point_down():
    upward = sorted(f"{m} -> {d}" for m, deps in _graph().items() for d in deps
                    if LAYER.get(_room(d), -1) > LAYER.get(_room(m), 99))
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def test_no_import_cycle():
    graph = _graph()
    adj = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    cycles, seen, done = [], set(), set()

    def visit(m, path):
        if m in done:
            return
        if m in seen:
            cycles.append(path[path.index(m):] + [m])
            return
        seen.add(m)
        for d in sorted(adj[m]):
            visit(d, path + [m])
        done.add(m)

    for m in sorted(adj):
        visit(m, [])
    assert not cycles, f"import cycles: {cycles}"


def test_no_function_over_80_lines():
    long = [f"{p.relative_to(PACKAGE)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in PACKAGE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, f"functions over 80 lines (split them): {long}"
