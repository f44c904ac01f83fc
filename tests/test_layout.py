"""The package's layers: each module imports only the layers below it and its own package
(function-level imports included), no import goes round a circle, and every subpackage says
in its docstring what it is."""

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The layers from the bottom up; ``emanet.X`` is the subpackage or top-level module ``X``.
LAYERS = [
    "runtime",
    "fast",
    "models",
    "io",
    "data",
    "viz",
    "predict",
    "evaluation",
    "deploy",
    "training",
    "app",  # the repository's app/ folder, installed as emanet.app
    "cli",  # the emanet command, `emanet app` included
    "__init__",  # `import emanet`: the public API re-exported
    "__main__",
]
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for emanet/ and app/ (as emanet.app)."""
    modules = {}
    for base, prefix in ((ROOT / "emanet", "emanet"), (ROOT / "app", "emanet.app")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def _imports(name: str, path: Path) -> set[str]:
    """emanet modules that ``name`` imports anywhere in its file, as dotted names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {
        module.replace("app.", "emanet.app.", 1)
        if module.startswith("app.") or module == "app"
        else module
        for module in found
        if module.split(".")[0] in ("emanet", "app")
    }


def _layer(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def test_every_subpackage_and_top_module_has_a_layer():
    assert {_layer(name) for name in _modules()} <= set(RANK)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            own, other = _layer(module), _layer(target)
            if other != own and RANK[other] > RANK[own] and target != "emanet":
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = _graph()
    path, seen, cycles = [], set(), []

    def visit(node):
        if node in path:
            cycles.append(path[path.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        path.append(node)
        for target in sorted(graph[node]):
            # a package's __init__ re-exporting its own modules is not a cycle
            if not target.startswith(node + "."):
                visit(target)
        path.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "package",
    ["runtime", "fast", "models", "io", "data", "viz", "evaluation", "deploy", "training"],
)
def test_each_subpackage_says_what_it_is_and_what_it_may_import(package):
    module = importlib.import_module(f"emanet.{package}")
    assert module.__doc__ and len(module.__doc__.split()) >= 12
