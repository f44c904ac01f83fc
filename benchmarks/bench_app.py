"""End-to-end latency of the app's /segment endpoint against the model's bare inference.

Launches the app on 127.0.0.1 (a free port) with the bundled model (or --model), sends the same
1024x512 image N times through gradio_client, and prints p50, p95 and

    ratio = end-to-end p50 / bare inference p50     (target <= 1.5)

where bare inference is ``Segmenter(image)`` in-process on the same decoded image (no trace, no
figures, no HTTP). The image is a synthetic street scene (emanet.data.toycity.render_scene).
Usage: python benchmarks/bench_app.py [--requests 10] [--model NAME_OR_PATH]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from app.ui import build_demo  # noqa: E402
from emanet.data.toycity import render_scene  # noqa: E402
from emanet.predict import Segmenter  # noqa: E402


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


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

        bare = []
        segmenter(path)
        for _ in range(args.requests):
            start = time.perf_counter()
            segmenter(path)
            bare.append(time.perf_counter() - start)

        demo = build_demo(segmenter_factory=lambda name: segmenter, examples_dir=tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            client.predict(handle_file(path), api_name="/segment")
            e2e = []
            for _ in range(args.requests):
                start = time.perf_counter()
                client.predict(handle_file(path), api_name="/segment")
                e2e.append(time.perf_counter() - start)
        finally:
            demo.close()
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


if __name__ == "__main__":
    main()
