"""What the package and the app import is what pyproject.toml declares."""

import ast
import importlib.metadata
import re
import sys
from itertools import chain
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"emanet", "app"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(folder: Path):
    """``(top-level module, file)`` of every absolute import under ``folder``."""
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield name.partition(".")[0], path


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = chain(project["dependencies"], *project["optional-dependencies"].values())
    return {_canonical(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}


def test_every_third_party_import_is_a_declared_dependency():
    declared = _declared()
    providers = importlib.metadata.packages_distributions()
    undeclared = set()
    for module, path in chain(_imports(ROOT / "emanet"), _imports(ROOT / "app")):
        if module in FIRST_PARTY or module in sys.stdlib_module_names or module == "__future__":
            continue
        distributions = {_canonical(d) for d in providers.get(module, [module])}
        if not distributions & declared:
            undeclared.add(f"{module} ({path.relative_to(ROOT)})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
