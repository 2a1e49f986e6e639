"""The package's shape: imports point one way, modules stay small, Keras enters at one seam.

Every import statement inside ``tfcompress`` counts, wherever it stands (module level,
inside a function, under ``TYPE_CHECKING``): an import hidden in a function is still an arrow.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tfcompress"
MAX_LINES = 400


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """The tfcompress modules that ``module`` imports, with the line of each import."""
    found = {}
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `from pkg import name` -> pkg
                target = target.rpartition(".")[0]
            if target and target != module:
                found.setdefault(target, node.lineno)
    return found


def _edges():
    """Import arrows, without the arrows from a package ``__init__`` to its own submodules
    (re-exports: the package depends on its parts, not the other way round)."""
    edges = {}
    for module in MODULES:
        imports = _imports(module)
        if MODULES[module].name == "__init__.py":
            imports = {t: line for t, line in imports.items() if not t.startswith(module + ".")}
        edges[module] = imports
    return edges


def _find_cycle(edges):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in edges.get(node, {}):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_inside_the_package():
    edges = _edges()
    cycle = _find_cycle(edges)
    if cycle:
        arrows = [f"{a} (line {edges[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle:\n  " + "\n  ".join(arrows))


def test_the_cycle_finder_finds_a_cycle():
    """The check above cannot pass vacuously: a hand-made cycle through a function-level
    import is found."""
    edges = {"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 7}, "d": {"a": 2}}
    assert _find_cycle(edges) == ["a", "b", "c", "a"]
    tree = ast.parse("def f():\n    from tfcompress.pruning import graph\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))
    assert "tfcompress.pruning.graph" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (limit {MAX_LINES}): split it"


def test_keras_enters_through_one_seam():
    seams = {"tfcompress._keras"}
    offenders = []
    for module in MODULES:
        if module in seams:
            continue
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and
                     not node.level else [])
            for name in names:
                if name.split(".")[0] in ("keras", "tf_keras"):
                    offenders.append(f"{module}:{node.lineno} imports {name}")
    assert not offenders, offenders
