"""The EMANet Gradio app: segmentation and an EM attention explorer (``python -m app``)."""

import os

# No usage analytics or other calls home; this must be set before gradio is first imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .ui import build_demo  # noqa: E402

__all__ = ["build_demo"]
