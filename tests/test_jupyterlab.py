"""The tutorials as a student meets them: JupyterLab in Debian's chromium, driven by Playwright.

The test starts JupyterLab on a loopback port (``--allow-root`` where the user is root) over a
temporary copy of notebooks/, with ``EMANET_SMOKE=1`` in the kernels' environment. For each
notebook it clicks Run > Run All Cells and saves until the saved file shows every code cell run;
none may leave an error or a warning. Where a notebook has widgets (03's
explorer) they must be drawn as controls, and moving a slider must change the picture.

With ``EMANET_SHOTS=folder`` it also saves screenshots of a few figures and of the explorer, at
the width JupyterLab gives a notebook in a 1280-pixel window. A failing run leaves a screenshot
of the page, ``jupyterlab.png``, in the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import BROWSER_TESTS

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("jupyterlab")
sync_api = pytest.importorskip("playwright.sync_api")  # the browser fixture: conftest.py

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
# A smoke run of the slowest notebook on a busy 2-core machine, with room to spare.
RUN_TIMEOUT_S = 600
# name -> {screenshot file: text of the code cell whose output it shows}
SHOTS = {
    "01_em_attention_from_scratch.ipynb": {"01_figure11.png": "Figure 11 - cost"},
    "03_inside_the_bases.ipynb": {"03_figure3.png": "Figure 3 - test-time"},
}

pytestmark = BROWSER_TESTS


def _wait_for(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "JupyterLab exited while starting"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, free_port):
    """(base URL, folder): JupyterLab serving a copy of the notebooks on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("lab")
    for name in ALL:
        shutil.copy(NOTEBOOKS / name, folder / name)
    settings = tmp_path_factory.mktemp("lab-settings")
    env = {
        **os.environ,
        "EMANET_SMOKE": "1",
        "JUPYTER_CONFIG_DIR": str(settings / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings / "user"),
        "JUPYTERLAB_WORKSPACES_DIR": str(settings / "workspaces"),
    }
    env.pop("MPLBACKEND", None)  # the kernel's own default, as for a student
    env.pop("CITYSCAPES_ROOT", None)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.root_dir={folder}",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--LabApp.news_url=None",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(settings / "lab.log", "wb")  # noqa: SIM115 (open while the server runs)
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=log)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/status", process)
        yield f"http://127.0.0.1:{port}", folder
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _run_all(page, path: Path):
    """Run > Run All Cells, then save every few seconds until the saved notebook shows every code
    cell run (collapsed cells have no prompt to watch). Returns the saved notebook."""
    first_prompt = page.locator(".jp-CodeCell .jp-InputArea-prompt").first
    for _ in range(3):  # a click before the kernel is connected runs nothing: click again
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(
                "p => /[*0-9]/.test(p.textContent)",
                arg=first_prompt.element_handle(),
                timeout=30_000,
            )
            break
        except sync_api.TimeoutError:
            continue
    started = time.monotonic()
    while time.monotonic() - started < RUN_TIMEOUT_S:
        time.sleep(5)
        page.locator(".lm-MenuBar-itemLabel", has_text="File").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Save Notebook").first.click()
        page.wait_for_timeout(1000)
        nb = nbformat.read(path, as_version=4)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        errors = [o for c in code for o in c.outputs if o.output_type == "error"]
        assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]  # Run All stops there
        counts = [cell.execution_count for cell in code]
        if all(counts):
            return nb
    raise TimeoutError(f"{path.name}: Run All did not finish in {RUN_TIMEOUT_S} s: {counts}")


def _check_explorer(page) -> None:
    """The explorer's controls are drawn, and moving the t slider redraws the grid."""
    explorer = page.locator(".widget-vbox").last
    explorer.wait_for(timeout=30_000)
    assert explorer.locator(".widget-hslider").count() >= 2, "the sliders are not drawn"
    assert explorer.locator(".widget-dropdown select").count() == 1, "no image menu"
    pictures = explorer.locator(".widget-image")
    assert pictures.count() >= 2
    before = pictures.first.get_attribute("src")
    assert before, "the explorer's grid was never drawn"
    handle = explorer.locator(".widget-hslider").first.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_function(
        "([element, before]) => element.getAttribute('src') !== before",
        arg=[pictures.first.element_handle(), before],
        timeout=30_000,
    )


def _save_shots(page, name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in SHOTS.get(name, {}).items():
        output = page.locator(".jp-CodeCell", has_text=text).locator(".jp-OutputArea").first
        output.scroll_into_view_if_needed()
        output.screenshot(path=str(folder / file))
    if page.locator(".widget-vbox").count():
        explorer = page.locator(".widget-vbox").last
        explorer.scroll_into_view_if_needed()
        explorer.screenshot(path=str(folder / f"{name[:2]}_explorer.png"))


@pytest.mark.parametrize("name", ALL)
def test_run_all_in_jupyterlab(name, lab, browser, tmp_path):
    base, folder = lab
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{base}/lab/tree/{name}?reset")  # this notebook alone, no earlier tabs
        # The kernel is up when the status bar says so (the toolbar's indicator is idle sooner).
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        news = page.get_by_role("button", name="No", exact=True)  # "get Jupyter news?"
        if news.count():
            news.first.click()
        nb = _run_all(page, folder / name)
        if "ipywidgets" in (NOTEBOOKS / name).read_text():
            _check_explorer(page)
        if os.environ.get("EMANET_SHOTS"):
            _save_shots(page, name, Path(os.environ["EMANET_SHOTS"]))
    except Exception:
        page.screenshot(path=str(tmp_path / "jupyterlab.png"))  # what the page showed
        raise
    finally:
        page.close()
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    warnings = [o.text for o in outputs if o.output_type == "stream" and "Warning" in o.text]
    assert not warnings, warnings
