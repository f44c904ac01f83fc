"""Packaging: what the package and the app import is what pyproject.toml declares, and the
wheel installs emanet (the app inside it) and nothing under a generic name."""

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import zipfile
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


@pytest.mark.slow
def test_the_wheel_installs_the_app_inside_emanet_and_nothing_generic(tmp_path):
    # Built as pip builds it, without downloading anything (the environment's setuptools).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            ROOT,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Deprecat" not in result.stdout + result.stderr  # e.g. the license field
    assert "Warning" not in result.stdout + result.stderr
    (wheel,) = tmp_path.glob("emanet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("emanet-")}
    assert top_level == {"emanet"}
    package_files = {
        f"emanet/{path.relative_to(ROOT / 'emanet').as_posix()}"
        for path in (ROOT / "emanet").rglob("*.py")
    }
    app_files = {f"emanet/app/{path.name}" for path in (ROOT / "app").glob("*.py")}
    assert package_files | app_files <= set(names)  # every subpackage is listed in pyproject
    assert "emanet/weights/emanet_r18-d8_toycity.pth" in names


def test_emanet_app_is_the_repository_app_folder():
    spec = importlib.util.find_spec("emanet.app")
    assert spec is not None and Path(spec.origin).parent == ROOT / "app"
