"""End-to-end latency of the app's /segment endpoint against the model's bare inference.

Launches the app on 127.0.0.1 (a free port) with the bundled model (or --model), sends the same
1024x512 image N times through gradio_client, and prints p50, p95 and

    ratio = end-to-end p50 / bare inference p50     (target <= 1.5)

where bare inference is ``Segmenter(image)`` in-process on the same decoded image (no trace, no
figures, no HTTP). The image is a synthetic street scene (emanet.data.toycity.render_scene).

Two more lines tell the app's cost from the client library's:

- plain HTTP: the same request with one keep-alive httpx client over Gradio's documented REST
  route (POST the file to /gradio_api/upload, POST /gradio_api/call/segment for an event id,
  read GET /gradio_api/call/segment/{event_id} until its ``complete`` event, GET every output
  file), and its ratio to bare inference;
- the client's floor: gradio_client calling an empty endpoint (no inputs, no outputs) of an
  empty app, mostly its polling of its message queue (``time.sleep(0.05)``). Not in the floor
  and not the app's doing either: gradio_client opens a new httpx client (with its TLS
  context, ~15 ms on 2 cores) for every file it uploads or downloads.

Usage: python benchmarks/bench_app.py [--requests 10] [--model NAME_OR_PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402
from timing import wall_times  # noqa: E402

from app.handlers import BUNDLED  # noqa: E402
from app.ui import DEFAULTS, build_demo  # noqa: E402
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
    inputs = [image, BUNDLED, DEFAULTS["iterations"], DEFAULTS["max_size"], DEFAULTS["opacity"]]
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


def empty_endpoint_floor(requests: int) -> list[float]:
    """gradio_client's own latency: an empty endpoint of an empty app, queued like ours."""
    with gr.Blocks(analytics_enabled=False) as empty:
        gr.Button("run").click(lambda: None, api_name="empty")
    empty.queue()
    port = free_port()
    empty.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        return wall_times(lambda: client.predict(api_name="/empty"), requests, warmup=1)
    finally:
        empty.close()


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

        demo = build_demo(segmenter_factory=lambda name: segmenter, examples_dir=tmp)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            e2e = wall_times(
                lambda: client.predict(handle_file(path), api_name="/segment"),
                args.requests,
                warmup=1,
            )
            with httpx.Client(timeout=120) as http:
                api = f"http://127.0.0.1:{port}/gradio_api"
                rest = wall_times(lambda: rest_segment(http, api, path), args.requests, warmup=1)
        finally:
            demo.close()
        floor = empty_endpoint_floor(args.requests)
    print(f"model {segmenter.preset.name}, image 1024x512, {args.requests} requests")
    print(f"bare inference   p50 {percentile(bare, 50) * 1e3:7.1f} ms")
    print(
        f"end to end       p50 {percentile(e2e, 50) * 1e3:7.1f} ms   "
        f"p95 {percentile(e2e, 95) * 1e3:7.1f} ms  (target p50 <= 2000 ms)"
    )
    print(
        f"ratio end-to-end / bare  {percentile(e2e, 50) / percentile(bare, 50):.2f}  "
        "(target <= 1.5)"
    )
    print(
        f"plain HTTP (httpx, REST route)  p50 {percentile(rest, 50) * 1e3:7.1f} ms   "
        f"p95 {percentile(rest, 95) * 1e3:7.1f} ms   "
        f"ratio to bare {percentile(rest, 50) / percentile(bare, 50):.2f}"
    )
    print(
        f"gradio_client floor (empty endpoint)  p50 {percentile(floor, 50) * 1e3:7.1f} ms  "
        "(the client library's own cost, in every end-to-end request)"
    )


if __name__ == "__main__":
    main()
