"""The tutorials: committed clean, and each runs top to bottom in a fresh kernel (smoke mode).

Each notebook is copied into a temporary folder and executed there with nbclient and
``EMANET_SMOKE=1`` (tiny data, few iterations), so what it writes (``work/``) never lands in the
repository. A run passes when no cell raises -- the notebooks ``assert`` what they claim (EM
written out matches the unit, memory is linear against quadratic, validation equals
evaluation, ...) -- and when it draws its figures, each readable at JupyterLab's width (no
text under 9 pixels as shown, no figure over 960 pixels, integer iteration ticks; see
tests/readability.py) and prints no line wider than the output area. Their prose is not tested.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest

from tests.readability import KERNEL_HOOK, MAX_LINE_CHARS, OUTPUT_WIDTH_PX, png_width, problems

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# name -> the least number of PNG figures a smoke run must display (one line per notebook)
EXPECTED_FIGURES = {
    "01_em_attention_from_scratch.ipynb": 8,
    "02_train_small_cityscapes.ipynb": 7,
    "03_inside_the_bases.ipynb": 8,
    "04_your_own_data.ipynb": 4,
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDGET = "application/vnd.jupyter.widget-view+json"


def _read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_every_tutorial_is_in_the_table():
    assert ALL == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("name", ALL)
def test_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, name
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell was committed with outputs"
        assert cell.execution_count is None, f"{name}: a cell was committed with a count"
    assert "widgets" not in nb.metadata, f"{name}: widget state was committed"


def _renderer():
    """docs/notebooks/render.py, the script behind `make docs`."""
    spec = importlib.util.spec_from_file_location(
        "render", ROOT / "docs" / "notebooks" / "render.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ALL)
def test_rendering_is_current(name):
    """docs/notebooks/<name> holds a full run of the notebook as it is now."""
    render = _renderer()
    path = render.RENDERED / name
    assert path.is_file(), f"docs/notebooks/{name} is missing: run `make docs`"
    rendered, source = nbformat.read(path, as_version=4), _read(name)
    assert rendered.metadata["emanet"]["code_sha256"] == render.code_hash(source), (
        f"{name}'s code changed after its rendering: run `make docs` (a full run)"
    )
    assert render.prose(rendered) == render.prose(source), (
        f"{name}'s prose changed after its rendering: run `make docs` (seconds)"
    )
    code = [c for c in rendered.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every cell of the rendering ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    figures = _figures(rendered)
    assert len(figures) >= EXPECTED_FIGURES.get(name, 1)
    # What only a full run prints or draws (smoke mode sweeps fewer settings) fits the width too;
    # a tight bounding box may add a few pixels to a figure drawn 960 wide.
    assert max(map(png_width, figures)) <= OUTPUT_WIDTH_PX + 20
    wide = "\n".join(line for line in _printed_lines(rendered) if len(line) > MAX_LINE_CHARS)
    assert not wide, f"{name}: printed lines wider than {MAX_LINE_CHARS} characters:\n{wide}"


def _figures(nb) -> list[bytes]:
    pngs = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                pngs.append(base64.b64decode(data["image/png"]))
    return pngs


def _printed_lines(nb) -> list[str]:
    """Every line of text the cells printed or returned (not the reprs of figures)."""
    lines = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                lines += output.text.splitlines()
            elif not {"image/png", WIDGET} & set(output.get("data", {})):
                lines += output.get("data", {}).get("text/plain", "").splitlines()
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_runs_top_to_bottom_in_smoke_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("EMANET_SMOKE", "1")
    monkeypatch.delenv("CITYSCAPES_ROOT", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    path = tmp_path / name
    shutil.copy(NOTEBOOKS / name, path)
    nb = nbformat.read(path, as_version=4)
    log = tmp_path / "figures.jsonl"
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_HOOK.format(root=str(ROOT), log=str(log))))
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    seconds = time.perf_counter() - started
    errors = [
        output
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors, errors
    figures = _figures(nb)
    assert len(figures) >= EXPECTED_FIGURES.get(name, 1), (name, len(figures))
    for png in figures:
        assert png.startswith(PNG_MAGIC) and len(png) > 2000  # a real picture, not an empty one
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    assert reports, "the figures' sizes were not measured"
    assert [p for report in reports for p in problems(report)] == []
    wide = "\n".join(line for line in _printed_lines(nb) if len(line) > MAX_LINE_CHARS)
    assert not wide, f"{name}: printed lines wider than {MAX_LINE_CHARS} characters:\n{wide}"
    if name.startswith("03"):
        _check_explorer(nb)
    if not name.startswith("01"):  # 01 writes nothing; the others write into ./work
        assert (tmp_path / "work").is_dir()
    print(f"{name}: {seconds:.0f} s in smoke mode")


def _check_explorer(nb) -> None:
    """The sliders exist as live widgets and their first drawing is a figure."""
    views = [
        output
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if WIDGET in output.get("data", {})
    ]
    assert views, "the explorer produced no widget"
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = [m["model_name"] for m in state.values()]
    assert models.count("IntSliderModel") >= 2 and "DropdownModel" in models, models
    images = [m for m in state.values() if m["model_name"] == "ImageModel"]
    assert len(images) >= 2, models
    for model in images:
        buffers = {tuple(b["path"]): b for b in model.get("buffers", [])}
        assert ("value",) in buffers, "an explorer picture was never drawn"
        png = base64.b64decode(buffers[("value",)]["data"])
        assert png.startswith(PNG_MAGIC) and len(png) > 2000
