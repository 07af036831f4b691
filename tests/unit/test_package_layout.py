"""The house plan holds: a short package root, no module over 400 lines, imports only downward
between wings (data -> methods -> evaluation -> sweep -> tracking -> delivery / reporting, the CLI on
top), and no import cycle between modules. docs/architecture.md draws the same picture."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "raybench"

# low -> high; a module may import its own wing and any wing of a LOWER rank, never a sibling
LAYERS = [
    {"errors", "console"}, {"config"}, {"data", "models"}, {"synthesis"}, {"evaluation"}, {"methods"},
    {"detector", "local_ray"}, {"tracking"}, {"reporting"}, {"sweep", "delivery"},
    {"raybench", "registry"},  # the public API (best_model, __version__); registry: 0.1 models' import path
    {"cli_parser"}, {"cli"}, {"__main__", "bench"},
]
RANK = {wing: rank for rank, wings in enumerate(LAYERS) for wing in wings}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing(module: str) -> str:
    """raybench.sweep.trial -> sweep; raybench.cli -> cli; raybench / raybench.best_model -> raybench."""
    parts = module.split(".")
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "raybench"


def imports(path: Path) -> set[str]:
    """Every raybench module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "raybench":
            for alias in node.names:  # `from raybench.x import y`: y may be a submodule
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").is_file() or \
                    (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                found.add(sub if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "raybench"}
    return found


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_the_package_root_holds_at_most_ten_modules():
    assert len(list(PACKAGE.glob("*.py"))) <= 10, sorted(p.name for p in PACKAGE.glob("*.py"))


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_every_wing_is_placed_in_a_layer():
    assert {wing(m) for m in GRAPH} <= set(RANK), {wing(m) for m in GRAPH} - set(RANK)


def test_imports_only_go_down_the_layers():
    upward = sorted(f"{src} -> {dst}" for src, targets in GRAPH.items() for dst in targets
                    if wing(src) != wing(dst) and RANK[wing(dst)] >= RANK[wing(src)])
    assert not upward


def test_no_import_cycle_between_modules():
    """Tarjan's strongly connected components over the module graph: every one a single module."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles


def test_the_layer_check_can_fail():
    """The checks above would see an upward import (a planted graph, not the package's)."""
    planted = {"raybench.tracking.store": {"raybench.sweep.driver"}}
    assert [s for s, ts in planted.items() for d in ts if RANK[wing(d)] >= RANK[wing(s)]]
