"""docs/app.png: the app on the bundled model, a toy-city example run as a person would see it.

The app is served on loopback (Gradio picks a free port); Debian's chromium (driven by
Playwright, never a downloaded browser) opens it, clicks a toy-city example (the run starts by
itself, as it does for a person), waits for every view and saves the whole page.
``make screenshot`` runs it.

Usage:
    python benchmarks/screenshot_app.py                      # docs/app.png, scene 1, CPU
    python benchmarks/screenshot_app.py --out /tmp/app.png --example 2 --width 1400
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

# No analytics; EMANET_TOYCITY would add val images to the examples: the page must not depend
# on this machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.pop("EMANET_TOYCITY", None)

from emanet.app import build_demo  # noqa: E402
from emanet.app.examples import toycity_examples  # noqa: E402
from emanet.app.handlers import Explorer  # noqa: E402
from emanet.io.atomic import atomic_write  # noqa: E402

VIEWS = ("#overlay img", "#attention-grid img", "#base-strip img", "#base-class img")


def screenshot(url: str, caption: str, chromium: str, width: int) -> bytes:
    """The whole page at ``url`` after clicking the example labelled ``caption`` (PNG bytes)."""
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
            page.locator(view).wait_for(state="visible", timeout=120_000)
        page.locator("#info").get_by_text("Attention at EM iteration").wait_for()
        page.wait_for_timeout(1000)  # the convergence plot draws itself after its data arrives
        png = page.screenshot(full_page=True)
        browser.close()
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/app.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--example", type=int, default=1, choices=(1, 2, 3), help="toy-city scene")
    parser.add_argument("--width", type=int, default=1400, help="browser width (pixels)")
    parser.add_argument("--device", default="cpu", help="where the model runs (default: cpu)")
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
            png = screenshot(demo.local_url, caption, chromium, args.width)
        finally:
            demo.close()
    image = Image.open(io.BytesIO(png))
    # optimize: the same pixels in fewer bytes than the browser's PNG
    atomic_write(args.out, lambda tmp: image.save(tmp, format="PNG", optimize=True))
    print(f"wrote {args.out}: {image.width}x{image.height} ({caption})")


if __name__ == "__main__":
    main()
