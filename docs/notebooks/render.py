"""Render the tutorials with the outputs of a real, full run: ``make docs``.

Each notebook of ``notebooks/`` is executed top to bottom (nbclient, a fresh kernel, no
``EMANET_SMOKE``) in one temporary folder, in name order, so that 03 reuses the toy city 02
generated, as it does for a reader who runs them in order. The executed copy is written to
``docs/notebooks/<name>`` (GitHub shows its figures), with ``metadata.emanet``:

* ``code_sha256``: :func:`code_hash` of the notebook it was run from;
* ``run_seconds``, ``cpu_seconds`` (the kernel's user + system time, its worker processes
  included: what a busy machine's other jobs do not inflate), ``load_average`` (the 1-minute
  load when it finished), ``cpus``, ``date``.

A rendering whose code hash still matches is not run again: only its prose is refreshed from
the notebook, so editing a sentence costs seconds. ``--force`` runs everything again.
tests/test_notebooks.py fails when a rendering is missing or older than its notebook.

    python docs/notebooks/render.py [--force] [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
RENDERED = ROOT / "docs" / "notebooks"


def code_hash(nb) -> str:
    """sha256 of the sources of a notebook's code cells, in order (prose and outputs aside)."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def prose(nb) -> list[str]:
    """The markdown cells' sources, in order."""
    return [cell.source for cell in nb.cells if cell.cell_type == "markdown"]


def refresh_prose(source, rendered) -> None:
    """Copy ``source``'s markdown into ``rendered``, cell for cell (same code, same layout)."""
    for mine, theirs in zip(rendered.cells, source.cells, strict=True):
        assert mine.cell_type == theirs.cell_type
        if mine.cell_type == "markdown":
            mine.source = theirs.source


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(source_path: Path, folder: Path):
    """Run a copy of the notebook in ``folder``: the executed notebook, its wall-clock seconds
    and the CPU seconds of its kernel (reaped when the client shuts it down)."""
    import nbclient  # the notebooks extra

    path = folder / source_path.name
    shutil.copy(source_path, path)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    started, cpu = time.perf_counter(), _children_cpu_seconds()
    client.execute()
    return nb, time.perf_counter() - started, _children_cpu_seconds() - cpu


def render(names: list[str], force: bool) -> None:
    RENDERED.mkdir(parents=True, exist_ok=True)
    os.environ.pop("EMANET_SMOKE", None)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    with tempfile.TemporaryDirectory(prefix="emanet-docs-") as folder:
        for name in names:
            source = nbformat.read(NOTEBOOKS / name, as_version=4)
            target = RENDERED / name
            if not force and target.is_file():
                rendered = nbformat.read(target, as_version=4)
                if rendered.metadata.get("emanet", {}).get("code_sha256") == code_hash(source):
                    refresh_prose(source, rendered)
                    nbformat.write(rendered, target)
                    print(f"{name}: code unchanged, prose refreshed")
                    continue
            print(f"{name}: running (a full run takes minutes)", flush=True)
            nb, seconds, cpu_seconds = execute(NOTEBOOKS / name, Path(folder))
            nb.metadata["emanet"] = {
                "code_sha256": code_hash(source),
                "run_seconds": round(seconds, 1),
                "cpu_seconds": round(cpu_seconds, 1),
                "load_average": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            }
            nbformat.write(nb, target)
            print(f"{name}: {seconds:.0f} s ({cpu_seconds:.0f} s of CPU), written to {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    parser.add_argument("--force", action="store_true", help="run even an up-to-date one")
    args = parser.parse_args()
    names = args.names or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    render(names, args.force)


if __name__ == "__main__":
    main()
