"""The import graph of gpts_fairseq/ (every import statement, also those inside functions, read
with ast): no circle, no extension importing the task, the bandit free of fairseq, and the task
module a driver of at most 200 lines."""

import ast
from pathlib import Path

from conftest import PACKAGE_DIR

PACKAGE = "gpts_fairseq"
METHOD_PACKAGES = ("growth", "subsets", "interactions", "extensions", "supernet", "flexibert")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The gpts_fairseq modules ``path`` imports, with the packages whose ``__init__`` the import
    runs (``a.b.c`` runs ``a.b``); ``from package import name`` counts the submodule ``name``.
    The packages that hold ``path`` are left out: Python has begun them before it runs ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    parts = package.split(".")
    enclosing = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in modules)
    return found - enclosing - {name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]):
    """One circle of the graph as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    return next((cycle for node in sorted(graph) if node not in state and (cycle := visit(node))), None)


def test_reader_sees_package_relative_and_function_level_imports():
    graph = import_graph()
    assert "gpts_fairseq.extensions.registry" in graph["gpts_fairseq.tasks.gpts_mlm"]
    assert "gpts_fairseq.extensions" in graph["gpts_fairseq.growth.extension"]  # runs the package's __init__
    assert "gpts_fairseq.runtime" in graph["gpts_fairseq.bandit.thompson"]


def test_no_circle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, pending = set(), [start]
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(graph.get(node, ()))
    return seen


def test_no_extension_imports_the_task():
    """Neither a module of a method package (METHOD_PACKAGES) nor anything a
    registered extension imports (directly or not) imports tasks/."""
    from gpts_fairseq.extensions.registry import EXTENSIONS

    graph = import_graph()
    methods = {name for name in graph if name.split(".")[1:2] and name.split(".")[1] in METHOD_PACKAGES}
    for extension in EXTENSIONS:
        methods |= reachable(graph, extension.__module__)
    offenders = {name: sorted(m for m in graph[name] if m.startswith(f"{PACKAGE}.tasks")) for name in methods}
    assert not {name: found for name, found in offenders.items() if found}


def test_bandit_and_runtime_do_not_import_fairseq():
    """The bandit is usable without fairseq; runtime imports it inside its distributed functions only."""
    for path in [*(PACKAGE_DIR / "bandit").glob("*.py"), PACKAGE_DIR / "runtime.py"]:
        top_level = ast.parse(path.read_text()).body
        names = [alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "fairseq"], path


def test_task_module_is_a_short_driver():
    assert len((PACKAGE_DIR / "tasks" / "gpts_mlm.py").read_text().splitlines()) <= 200
