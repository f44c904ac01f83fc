"""``python -m app [--host H] [--port N] [--model NAME_OR_PATH] [--device D] [--precision P]
[--backend B] [--share]`` from a clone; ``emanet app ...`` after ``pip install 'emanet[app]'``.

Serves on 127.0.0.1 (this machine only) unless told otherwise; a public Gradio share link is
opened only with ``--share``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from emanet.io.checkpoint import CheckpointError
from emanet.runtime.backends import add_backend_arguments
from emanet.runtime.device import add_runtime_arguments, check_runtime
from emanet.runtime.errors import UserError
from emanet.runtime.logs import configure_logging

from . import build_demo  # importing the package switches Gradio's analytics off first
from .handlers import Explorer

log = logging.getLogger(__name__)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The app's command-line options (``python -m app`` and ``emanet app`` alike)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--model",
        help="default model: a zoo name or a .pth file (default: the bundled toy-city model)",
    )
    add_runtime_arguments(parser, compile=False)
    add_backend_arguments(parser)
    parser.add_argument("--share", action="store_true", help="also open a public share link")
    parser.add_argument(
        "--max-file-size",
        default="64mb",
        help="largest upload accepted, images and checkpoints alike (default: 64mb)",
    )


def main(argv: list[str] | None = None, prog: str = "python -m app") -> None:
    """Serve the app (``emanet app`` calls this with ``prog="emanet app"``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="EMANet segmentation and EM attention explorer (a Gradio web app).",
    )
    add_options(parser)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        device, _ = check_runtime(args.device, args.precision, args.backend)
    except ValueError as error:
        parser.error(str(error))
    log.info("running the networks with %s on %s", args.backend, device)
    try:
        # preload: a model that cannot be loaded (offline download, bad file) stops us here
        # with its message instead of failing every request.
        explorer = Explorer(
            default_model=args.model,
            preload=True,
            device=str(device),
            precision=args.precision,
            backend=args.backend,
            calibration=args.calibration,
        )
    except (CheckpointError, UserError) as error:
        sys.exit(f"{prog}: {error}")
    demo = build_demo(explorer=explorer)
    # SIGTERM (kill, docker stop, systemd) ends the server as Ctrl-C does: Gradio closes it and
    # the app's temporary image folder is removed at exit instead of staying in the temp dir.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            max_file_size=args.max_file_size,
            show_error=True,
        )
    except KeyboardInterrupt:  # during start-up; once serving, Gradio handles it itself
        demo.close()


if __name__ == "__main__":
    main()
