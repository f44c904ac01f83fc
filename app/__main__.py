"""``python -m app [--host H] [--port N] [--model NAME_OR_PATH] [--share]``."""

from __future__ import annotations

import argparse
import logging
import os

# No analytics or other calls home; set before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from emanet.predict import Segmenter  # noqa: E402

from .ui import build_demo  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model", help="default model: zoo name, URL or .pth (default: bundled)")
    parser.add_argument("--share", action="store_true", help="open a public Gradio share link")
    parser.add_argument("--max-file-size", default="20mb", help="upload size limit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    factory = None
    if args.model:
        default = args.model

        def factory(name):
            return Segmenter.from_pretrained(default if name is None else name)

    demo = build_demo(segmenter_factory=factory, preload=True)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=args.max_file_size,
        show_error=True,
    )


if __name__ == "__main__":
    main()
