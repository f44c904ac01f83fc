"""docs/app.png: the app on the bundled model, a toy-city example run as a person would see it.

The app is served on loopback (Gradio picks a free port); Debian's chromium (driven by
Playwright, never a downloaded browser) opens it, clicks a toy-city example (the run starts by
itself, as it does for a person), waits for the views, clicks a pixel of the parts map and
saves the whole page. With ``--tabs DIR`` it also saves each explorer tab, after running the
comparison, as ``DIR/<tab>.png``. ``make screenshot`` runs it.

Usage:
    python benchmarks/screenshot_app.py                      # docs/app.png, scene 1, CPU
    python benchmarks/screenshot_app.py --out /tmp/app.png --example 2 --width 1400
    python benchmarks/screenshot_app.py --out /tmp/app.png --tabs /tmp/tabs
    python benchmarks/screenshot_app.py --parts-gif docs/parts.gif   # and docs/parts.png
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

# No analytics; EMANET_TOYCITY would add val images to the examples: the page must not depend
# on this machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.pop("EMANET_TOYCITY", None)

from emanet.app import build_demo  # noqa: E402
from emanet.app.examples import toycity_examples  # noqa: E402
from emanet.app.handlers import Explorer  # noqa: E402
from emanet.io.atomic import atomic_write  # noqa: E402

VIEWS = ("#overlay img", "#parts img")
TABS = {
    "bases": ("Bases over the image", "#attention-grid img"),
    "projection": ("Bases in feature space", "#projection img"),
    "compare": ("Compare", "#parts-b img"),
    "convergence": ("Convergence", "#base-class img"),
}
TIMEOUT_MS = 120_000


def _tabs(page, folder: Path) -> dict[str, bytes]:
    """Each explorer tab, after running the comparison (B: one EM iteration)."""
    shots = {}
    for name, (label, view) in TABS.items():
        page.get_by_role("tab", name=label).click()
        if name == "compare":
            page.locator("#compare").click()
        page.locator(view).wait_for(state="visible", timeout=TIMEOUT_MS)
        page.wait_for_timeout(1000)
        shots[name] = page.screenshot(full_page=True)
    return shots


def figure_set(page) -> bytes:
    """The run's figure set as the Export tab hands it out (the .zip's bytes)."""
    page.get_by_role("tab", name="Export").click()
    page.locator("#export-figures").click()
    link = page.locator("#download a[href]").first
    link.wait_for(timeout=TIMEOUT_MS)
    response = page.request.get(link.get_attribute("href"))
    return response.body()


def parts_animation(archive: bytes, out: Path) -> None:
    """``out``: the parts maps at t = 1..T of the figure set as an animated GIF (each frame
    labelled), and beside it ``<out>.png``: the same frames side by side."""
    with zipfile.ZipFile(io.BytesIO(archive)) as files:
        names = sorted(n for n in files.namelist() if n.startswith("parts-t"))
        frames = [Image.open(io.BytesIO(files.read(n))).convert("RGB") for n in names]
    width = 480
    frames = [f.resize((width, round(f.height * width / f.width)), Image.LANCZOS) for f in frames]
    for t, frame in enumerate(frames, start=1):
        draw = ImageDraw.Draw(frame)
        draw.rectangle((0, 0, 92, 22), fill=(0, 0, 0))
        draw.text((6, 4), f"EM t = {t}", fill=(255, 255, 255), font_size=15)
    atomic_write(
        out,
        lambda tmp: frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=900, loop=0
        ),
    )
    strip = Image.new("RGB", (len(frames) * (width + 4) - 4, frames[0].height), "white")
    for t, frame in enumerate(frames):
        strip.paste(frame, (t * (width + 4), 0))
    atomic_write(out.with_suffix(".png"), lambda tmp: strip.save(tmp, format="PNG", optimize=True))


def screenshot(url: str, caption: str, chromium: str, width: int, tabs: Path | None) -> dict:
    """``{"app": PNG bytes, <tab>: ...}``: the page at ``url`` after clicking the example
    labelled ``caption`` and a pixel of its parts map, then each tab if ``tabs``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": width, "height": 1300})
        page.goto(url)
        page.get_by_text(caption, exact=True).click()
        for view in VIEWS:
            page.locator(view).wait_for(state="visible", timeout=TIMEOUT_MS)
        page.locator("#info").get_by_text("Attention at EM iteration").wait_for()
        # the views drawn after a run have arrived (the pixel chart's invitation is one)
        page.locator("#pixel-chart").get_by_text("Click a pixel").wait_for(timeout=TIMEOUT_MS)
        parts = page.locator("#parts img")
        box = parts.bounding_box()
        parts.click(position={"x": box["width"] * 0.52, "y": box["height"] * 0.72})
        page.locator("#pixel-chart td[data-value]").first.wait_for(timeout=TIMEOUT_MS)
        page.wait_for_timeout(1000)  # the marked views arrive after the chart
        shots = {"app": page.screenshot(full_page=True)}
        if tabs is not None:
            shots.update(_tabs(page, tabs))
        shots["figures"] = figure_set(page)
        browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/app.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--example", type=int, default=1, choices=(1, 2, 3), help="toy-city scene")
    parser.add_argument("--width", type=int, default=1400, help="browser width (pixels)")
    parser.add_argument("--device", default="cpu", help="where the model runs (default: cpu)")
    parser.add_argument("--tabs", type=Path, help="also save each explorer tab into this folder")
    parser.add_argument(
        "--parts-gif", type=Path, help="also write the parts map over t as a GIF (and a .png strip)"
    )
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("screenshot_app.py: needs Debian's chromium (apt-get install chromium)")

    with tempfile.TemporaryDirectory(prefix="emanet-screenshot-") as folder:
        explorer = Explorer(preload=True, device=args.device)
        demo = build_demo(explorer=explorer, examples_dir=folder)
        caption = toycity_examples(Path(folder))[args.example - 1][1]
        demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        try:
            shots = screenshot(demo.local_url, caption, chromium, args.width, args.tabs)
        finally:
            demo.close()
    if args.parts_gif:
        parts_animation(shots["figures"], args.parts_gif)
        print(f"wrote {args.parts_gif} and {args.parts_gif.with_suffix('.png')}")
    del shots["figures"]
    for name, png in shots.items():
        out = args.out if name == "app" else args.tabs / f"{name}.png"
        image = Image.open(io.BytesIO(png))
        # optimize: the same pixels in fewer bytes than the browser's PNG
        atomic_write(out, lambda tmp, image=image: image.save(tmp, format="PNG", optimize=True))
        print(f"wrote {out}: {image.width}x{image.height} ({caption})")


if __name__ == "__main__":
    main()
