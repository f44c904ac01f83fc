"""End-to-end latency of the app's /segment endpoint against the model's bare inference.

Launches the app on 127.0.0.1 with the bundled model (or --model), sends the same 1024x512
image N times through gradio_client, and prints p50, p95 and

    ratio = end-to-end p50 / bare inference p50     (target <= 1.5)

where bare inference is ``Segmenter(image)`` in-process on the same decoded image (no trace, no
figures, no HTTP). The image is a synthetic street scene (emanet.data.toycity.render_scene).

Three more lines tell the app's cost from Gradio's and the client library's:

- the /segment handler in-process: the function Gradio calls (decode, model with its EM trace,
  figures, PNG encoding), no HTTP; its ratio to bare inference is the app's own overhead;
- plain HTTP: the same request with one keep-alive httpx client over Gradio's documented REST
  route (POST the file to /gradio_api/upload, POST /gradio_api/call/segment for an event id,
  read GET /gradio_api/call/segment/{event_id} until its ``complete`` event, GET every output
  file), and its ratio to bare inference;
- an ideal endpoint through gradio_client: the app itself (``build_demo``) with an
  :class:`emanet.app.handlers.Explorer` whose ``segment`` only sleeps for the bare inference
  time and returns one real answer (its files copied afresh each call). Its ratio is the lowest
  any app can reach through gradio_client on this machine (the client opens a new httpx client for
  every upload, queue join and download, and looks for the answer every 50 ms).

``--variants`` measures instead the app's two speed tricks side by side with what they
replace, in one run: the same /segment requests to one server, interleaved (every round sends
one request to each variant, in a rotating order), to the app as it is; to the app whose
handlers return arrays for Gradio to encode (PIL at PNG's default level 6) or whose files PIL
writes at the same level 1, instead of :mod:`emanet.app.png`'s encoder; and to the app whose
picture labels Pillow draws one by one instead of :mod:`emanet.viz.render`'s glyph stamps.
"The app again" is a second copy of the first variant: its difference from the first shows the
noise of the run.

``--compare URL [URL ...]`` instead times the apps already serving at these URLs,
interleaved, each in its own process (a server in this one would share its GIL with the
clients), e.g. this checkout's app against another commit's (same venv):

    mkdir /tmp/emanet-base && git archive HEAD | tar -x -C /tmp/emanet-base
    (cd /tmp/emanet-base && python -m app --device cpu --port 7861) &
    python -m app --device cpu --port 7862 &
    python benchmarks/bench_app.py --compare http://127.0.0.1:7862/ http://127.0.0.1:7861/

Both print p50, p95 and the p50 ratio to the first entry through gradio_client and over plain
HTTP, whose times are not rounded up to the client's 50 ms polling.

``--controls`` times instead every control of the explorer as the page redraws it, in-process
(the iteration scrubber, the base, a pixel click, the map and overlay opacities, the views drawn
after a run), then ``/segment`` and ``/pixel`` through gradio_client; vs = the ratio to
``/segment``'s p50.

``--backends`` times ``/segment`` of the app on the torch and onnxruntime backends (CPU), one
server each in this process, interleaved.

Usage: python benchmarks/bench_app.py [--requests 10] [--model NAME_OR_PATH] [--variants]
       [--controls] [--backends] [--compare URL [URL ...]]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from unittest import mock

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from timing import wall_times  # noqa: E402

from emanet.app import png  # noqa: E402
from emanet.app.handlers import Explorer  # noqa: E402
from emanet.app.session import BUNDLED, DEFAULTS  # noqa: E402
from emanet.app.ui import build_demo  # noqa: E402
from emanet.data.toycity import render_scene  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402
from emanet.viz import render  # noqa: E402


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def serve(demo: gr.Blocks) -> str:
    """Launch ``demo`` on 127.0.0.1 (Gradio picks a free port); its URL."""
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    return demo.local_url


def rest_segment(http: httpx.Client, api: str, path: str) -> list:
    """One /segment request over Gradio's REST route; returns the outputs, files fetched."""
    with open(path, "rb") as f:
        upload = http.post(f"{api}/upload", files={"files": (os.path.basename(path), f)})
    upload.raise_for_status()
    image = {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}
    inputs = [image, BUNDLED, *DEFAULTS.values()]
    call = http.post(f"{api}/call/segment", json={"data": inputs})
    call.raise_for_status()
    event, outputs = None, None
    with http.stream("GET", f"{api}/call/segment/{call.json()['event_id']}") as stream:
        stream.raise_for_status()
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                outputs = json.loads(line.split(":", 1)[1])
                break
    if event != "complete":
        raise RuntimeError(f"/segment failed over REST: {event} {outputs}")
    for value in outputs:
        if isinstance(value, dict) and value.get("url"):
            http.get(value["url"]).raise_for_status()
    return outputs


class IdealExplorer(Explorer):
    """The app's explorer whose ``/segment`` only sleeps ``seconds`` and returns ``answer`` (one
    real answer of /segment; its two image files are copied afresh into ``folder`` on each
    call, as every real answer is a new file)."""

    def __init__(self, answer: tuple, seconds: float, folder: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.answer, self.seconds, self.folder = answer, seconds, folder

    def segment(self, *inputs) -> tuple:  # the inputs of Explorer.segment, unread
        time.sleep(self.seconds)
        fresh = []
        for value in self.answer[:2]:
            copy = self.folder / f"{uuid.uuid4().hex}.png"
            shutil.copyfile(value, copy)
            fresh.append(str(copy))
        return (*fresh, *self.answer[2:6], None)


def pil_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PIL's PNG encoder: the alternative to :func:`emanet.app.png.encode_png`."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def pil_draw_labels(canvas: np.ndarray, labels) -> None:
    """Pillow drawing each label: the alternative to the glyph stamps of
    :func:`emanet.viz.render._draw_labels` (the same pixels)."""
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for xy, text in labels:
        if text.strip():
            left, top, right, bottom = draw.textbbox(xy, text)
            draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
            draw.text(xy, text, fill=(255, 255, 255))
    canvas[:] = np.asarray(image)


def variants(explorer: Explorer) -> dict[str, Callable[[], contextlib.AbstractContextManager]]:
    """Each variant of the app: a context in which ``explorer`` answers as that variant does."""
    return {
        "the app": contextlib.nullcontext,
        "Gradio encodes the PNGs (arrays out)": lambda: mock.patch.object(
            explorer, "png", lambda array, name: array
        ),
        "PIL writes the PNGs (level 1)": lambda: mock.patch.object(png, "encode_png", pil_png),
        "PIL draws the labels": lambda: mock.patch.object(render, "_draw_labels", pil_draw_labels),
        "the app again": contextlib.nullcontext,
    }


def interleaved(calls: dict, rounds: int) -> dict:
    """Seconds of each call of each entry: one warm-up each, then ``rounds`` rounds of one call
    of every entry, the order rotated by one every round."""
    names = list(calls)
    for name in names:
        calls[name]()
    times: dict = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def client_call(url: str, path: str, variant=contextlib.nullcontext) -> Callable[[], object]:
    """One /segment request of ``path`` through gradio_client (one client), in ``variant``."""
    client = Client(url, verbose=False)

    def call():
        with variant():
            return client.predict(handle_file(path), api_name="/segment")

    return call


def rest_call(http: httpx.Client, url: str, path: str, variant=contextlib.nullcontext):
    """One /segment request of ``path`` over the REST route, in ``variant``."""

    def call():
        with variant():
            return rest_segment(http, f"{url}gradio_api", path)

    return call


def line(name: str, times: list[float], reference: list[float], note: str = "") -> None:
    p50 = percentile(times, 50)
    print(
        f"{name:38s} p50 {p50 * 1e3:6.1f} ms   p95 {percentile(times, 95) * 1e3:6.1f} ms"
        f"   vs {p50 / percentile(reference, 50):.3f}{note}"
    )


def side_by_side(apps: dict[str, tuple], path: str, requests: int) -> None:
    """Print the interleaved end-to-end times of each ``name: (url, variant)``, through
    gradio_client and over plain HTTP (whose times are not rounded up to the client's 50 ms
    polling, so that it shows differences of a few milliseconds)."""
    with httpx.Client(timeout=120) as http:
        calls = {}
        for name, (url, variant) in apps.items():
            calls["gradio_client", name] = client_call(url, path, variant)
            calls["plain HTTP", name] = rest_call(http, url, path, variant)
        times = interleaved(calls, requests)
    first = next(iter(apps))
    for route in ("gradio_client", "plain HTTP"):
        print(f"{route}: /segment end to end, {requests} interleaved rounds; vs = p50 ratio")
        for name in apps:
            line(name, times[route, name], times[route, first])


def baseline(explorer: Explorer, segmenter, path: str, tmp: str, requests: int) -> None:
    """The default report: bare inference, the handler, REST, gradio_client, the ideal app."""
    bare = wall_times(lambda: segmenter(path), requests, warmup=1)
    demo = build_demo(explorer=explorer, examples_dir=tmp)
    url = serve(demo)
    try:
        payload = {"path": path, "meta": {"_type": "gradio.FileData"}}
        inputs = [payload, BUNDLED, *DEFAULTS.values(), None]
        handler = wall_times(lambda: explorer.segment(*inputs), requests, warmup=1)
        answer = explorer.segment(*inputs)
        answer = (*(shutil.copy(view, tmp) for view in answer[:2]), *answer[2:])
        e2e = wall_times(client_call(url, path), requests, warmup=1)
        with httpx.Client(timeout=120) as http:
            rest = wall_times(rest_call(http, url, path), requests, warmup=1)
    finally:
        demo.close()
    seconds = percentile(bare, 50)
    ideal = IdealExplorer(answer, seconds, Path(tmp), segmenter_factory=lambda name: segmenter)
    ideal_demo = build_demo(explorer=ideal, examples_dir=tmp)
    url = serve(ideal_demo)
    try:
        floor = wall_times(client_call(url, path), requests, warmup=1)
    finally:
        ideal_demo.close()
    print(f"model {segmenter.preset.name}, image 1024x512, {requests} requests; vs = bare p50")
    line("bare inference", bare, bare)
    line("/segment handler, in-process", handler, bare, "  (the app's own overhead)")
    line("plain HTTP (httpx, REST route)", rest, bare)
    line("end to end through gradio_client", e2e, bare, "  (targets: p50 <= 2000 ms, <= 1.5)")
    line("ideal endpoint via gradio_client", floor, bare, "  (sleeps the bare time)")


class Click:
    """What Gradio hands a click handler: the pixel clicked and the picture it was on."""

    def __init__(self, x: int, y: int, target: str) -> None:
        self.index, self.target = [x, y], gr.Image(elem_id=target, render=False)


def control_calls(explorer: Explorer, session) -> dict[str, Callable[[], object]]:
    """One call per control of the explorer, each drawing what the page redraws. Parts maps
    are drawn anew every time (the session's cache emptied): the first visit of an iteration,
    the slowest case."""
    steps = session.prediction.trace.num_iterations
    width, height = session.prediction.image.size
    rng = np.random.default_rng(0)
    state = {"t": 0, "base": 0, "opacity": 0.0}

    def fresh(call):
        def run():
            session.parts.clear()
            return call()

        return run

    def step(key, size):
        state[key] = (state[key] + 1) % size
        return state[key]

    return {
        "iteration scrubbed (parts map, grid)": fresh(
            lambda: explorer.redraw_iteration(session, step("t", steps) + 1, 0.7)
        ),
        "base chosen (base strip)": lambda: explorer.redraw_base(session, step("base", 64), 0.7),
        "pixel clicked (chart, 4 marked views)": fresh(
            lambda: explorer.click(
                session,
                steps,
                0,
                0.5,
                0.7,
                Click(int(rng.integers(width)), int(rng.integers(height)), "overlay"),
            )
        ),
        "map opacity (parts, grid, strip)": fresh(
            lambda: explorer.redraw_maps(session, steps, 0, 0.3 + 0.1 * step("opacity", 5))
        ),
        "overlay opacity (segmentation)": lambda: explorer.redraw_overlay(session, 0.4),
        "after a run (grid, strip, PCA, ...)": lambda: explorer.details(session, 0.7),
    }


def controls_report(explorer: Explorer, path: str, tmp: str, requests: int) -> None:
    """The explorer's controls in-process, and /segment and /pixel through gradio_client."""
    payload = {"path": path, "meta": {"_type": "gradio.FileData"}}
    session = explorer.segment(payload, BUNDLED, *DEFAULTS.values())[-1]
    times = {
        name: wall_times(call, requests, warmup=1)
        for name, call in control_calls(explorer, session).items()
    }
    demo = build_demo(explorer=explorer, examples_dir=tmp)
    url = serve(demo)
    try:
        client = Client(url, verbose=False)
        times["/segment via gradio_client"] = wall_times(
            lambda: client.predict(handle_file(path), api_name="/segment"), requests, warmup=1
        )
        rng = np.random.default_rng(1)
        times["/pixel via gradio_client"] = wall_times(
            lambda: client.predict(
                int(rng.integers(1024)), int(rng.integers(512)), api_name="/pixel"
            ),
            requests,
            warmup=1,
        )
    finally:
        demo.close()
    print(f"explorer controls, 1024x512 image, {requests} calls each (target: p50 <= 300 ms)")
    reference = times["/segment via gradio_client"]
    for name, values in times.items():
        line(name, values, reference)


def backends_report(model: str | None, path: str, tmp: str, requests: int) -> None:
    """``/segment`` of the app on each backend (the CPU), interleaved, one server each."""
    demos = {}
    for backend in ("torch", "onnxruntime"):
        segmenter = Segmenter.from_pretrained(model, device="cpu", backend=backend)
        segmenter(path, trace=True, num_iterations=DEFAULTS["iterations"])  # the export, once
        explorer = Explorer(lambda name, s=segmenter: s, preload=True)
        demos[backend] = build_demo(explorer=explorer, examples_dir=tmp)
    try:
        apps = {name: (serve(demo), contextlib.nullcontext) for name, demo in demos.items()}
        side_by_side(apps, path, requests)
    finally:
        for demo in demos.values():
            demo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--model")
    parser.add_argument("--variants", action="store_true", help="the speed tricks side by side")
    parser.add_argument("--controls", action="store_true", help="the explorer's controls")
    parser.add_argument(
        "--backends", action="store_true", help="/segment on torch and onnxruntime side by side"
    )
    parser.add_argument("--compare", nargs="+", metavar="URL", help="apps serving at URLs")
    args = parser.parse_args()
    image, _, _ = render_scene(512, 1024, np.random.default_rng(2024))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "street_1024x512.png")
        Image.fromarray(image).save(path)
        if args.compare:
            side_by_side(
                {url: (url, contextlib.nullcontext) for url in args.compare}, path, args.requests
            )
            return
        if args.backends:
            backends_report(args.model, path, tmp, args.requests)
            return
        segmenter = Segmenter.from_pretrained(args.model)
        explorer = Explorer(lambda name: segmenter, preload=True)
        if args.controls:
            controls_report(explorer, path, tmp, args.requests)
            return
        if not args.variants:
            baseline(explorer, segmenter, path, tmp, args.requests)
            return
        demo = build_demo(explorer=explorer, examples_dir=tmp)
        url = serve(demo)
        try:
            apps = {name: (url, variant) for name, variant in variants(explorer).items()}
            side_by_side(apps, path, args.requests)
        finally:
            demo.close()


if __name__ == "__main__":
    main()
