"""End-to-end latency of the app's /segment endpoint against the model's bare inference.

Launches the app on 127.0.0.1 (a free port) with the bundled model (or --model), sends the same
1024x512 image N times through gradio_client, and prints p50, p95 and

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
  :class:`app.handlers.Explorer` whose ``segment`` only sleeps for the bare inference time and
  returns one real answer (its files copied afresh each call). Its ratio is the
  lowest any app can reach through gradio_client on this machine: the client opens a new httpx
  client (loading its TLS certificates, ~16 ms on 2 cores) for the upload, the queue join and
  every file it downloads, and looks for the answer every 50 ms (``time.sleep(0.05)``).

Usage: python benchmarks/bench_app.py [--requests 10] [--model NAME_OR_PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402
from timing import wall_times  # noqa: E402

from app.handlers import BUNDLED, DEFAULTS, Explorer  # noqa: E402
from app.ui import build_demo  # noqa: E402
from emanet.data.toycity import render_scene  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def segment(
        self, image, model, iterations, max_size, opacity, lambda_scale=1.0, uploaded=None
    ) -> tuple:
        time.sleep(self.seconds)
        fresh = []
        for value in self.answer[:2]:
            copy = self.folder / f"{uuid.uuid4().hex}.png"
            shutil.copyfile(value, copy)
            fresh.append(str(copy))
        return (*fresh, *self.answer[2:6], None)


def client_times(url: str, path: str, requests: int) -> list[float]:
    """Seconds of each /segment call of ``path`` through gradio_client (one client)."""
    client = Client(url, verbose=False)
    return wall_times(
        lambda: client.predict(handle_file(path), api_name="/segment"), requests, warmup=1
    )


def launched(demo: gr.Blocks) -> tuple[gr.Blocks, str]:
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--model")
    args = parser.parse_args()
    segmenter = Segmenter.from_pretrained(args.model)
    image, _, _ = render_scene(512, 1024, np.random.default_rng(2024))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "street_1024x512.png")
        Image.fromarray(image).save(path)
        bare = wall_times(lambda: segmenter(path), args.requests, warmup=1)

        def factory(name):
            return segmenter

        explorer = Explorer(factory, preload=True)
        demo, url = launched(build_demo(explorer=explorer, examples_dir=tmp))
        try:
            payload = {"path": path, "meta": {"_type": "gradio.FileData"}}
            inputs = [payload, BUNDLED, *DEFAULTS.values(), None]
            handler = wall_times(lambda: explorer.segment(*inputs), args.requests, warmup=1)
            answer = explorer.segment(*inputs)
            answer = (*(shutil.copy(view, tmp) for view in answer[:2]), *answer[2:])
            e2e = client_times(url, path, args.requests)
            with httpx.Client(timeout=120) as http:
                api = f"{url}gradio_api"
                rest = wall_times(lambda: rest_segment(http, api, path), args.requests, warmup=1)
        finally:
            demo.close()
        ideal = IdealExplorer(answer, percentile(bare, 50), Path(tmp), segmenter_factory=factory)
        ideal, url = launched(build_demo(explorer=ideal, examples_dir=tmp))
        try:
            floor = client_times(url, path, args.requests)
        finally:
            ideal.close()

    def line(name, times, note=""):
        p50 = percentile(times, 50)
        print(
            f"{name:34s} p50 {p50 * 1e3:6.1f} ms   p95 {percentile(times, 95) * 1e3:6.1f} ms"
            f"   ratio to bare {p50 / percentile(bare, 50):.2f}{note}"
        )

    print(f"model {segmenter.preset.name}, image 1024x512, {args.requests} requests")
    line("bare inference", bare)
    line("/segment handler, in-process", handler, "  (the app's own overhead)")
    line("plain HTTP (httpx, REST route)", rest)
    line("end to end through gradio_client", e2e, "  (targets: p50 <= 2000 ms, ratio <= 1.5)")
    line("ideal endpoint via gradio_client", floor, "  (sleeps the bare time: the lowest ratio)")


if __name__ == "__main__":
    main()
