"""The EMANet Gradio app: segmentation and an EM attention explorer (``python -m app``)."""

from .ui import build_demo

__all__ = ["build_demo"]
