"""The tutorials: committed clean, and each runs top to bottom in a fresh kernel (smoke mode).

Each notebook is copied into a temporary folder and executed there with nbclient and
``EMANET_SMOKE=1`` (tiny data, few iterations), so what it writes (``work/``) never lands in the
repository. A run passes when no cell raises -- the notebooks ``assert`` what they claim (EM
written out matches the unit, memory is linear against quadratic, validation equals
evaluation, ...) -- and when it draws its figures. Their prose is not tested.
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# name -> the least number of PNG figures a smoke run must display
EXPECTED_FIGURES = {
    "01_em_attention_from_scratch.ipynb": 8,
    "02_train_small_cityscapes.ipynb": 7,
    "03_inside_the_bases.ipynb": 8,
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_the_three_tutorials_are_there():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, name
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell was committed with outputs"
        assert cell.execution_count is None, f"{name}: a cell was committed with a count"
    assert "widgets" not in nb.metadata, f"{name}: widget state was committed"


def _figures(nb) -> list[bytes]:
    pngs = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                pngs.append(base64.b64decode(data["image/png"]))
    return pngs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_runs_top_to_bottom_in_smoke_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("EMANET_SMOKE", "1")
    monkeypatch.delenv("CITYSCAPES_ROOT", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    path = tmp_path / name
    shutil.copy(NOTEBOOKS / name, path)
    nb = nbformat.read(path, as_version=4)
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
    assert len(figures) >= EXPECTED_FIGURES[name], (name, len(figures))
    for png in figures:
        assert png.startswith(PNG_MAGIC) and len(png) > 2000  # a real picture, not an empty one
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
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
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
