"""Prediction: :class:`Segmenter` takes any image through a model's own test pipeline to labels
(and the EM trace), with its forward pass run by PyTorch or by onnxruntime.

``segmenter`` holds :class:`Segmenter` and :class:`Prediction`; ``graph`` the network as an
ONNX graph (EM unrolled, the trace as optional outputs), which :mod:`emanet.deploy.onnx` also
writes; ``ort`` the onnxruntime backend (the graph exported once into a cache, run by
onnxruntime); ``int8`` its static int8 quantisation and the calibration images.

May import runtime, fast, models, io, data and viz.
"""

from emanet.io.hub import BUNDLED_CHECKPOINT  # what Segmenter.from_pretrained() loads

from .segmenter import Prediction, Segmenter

__all__ = ["BUNDLED_CHECKPOINT", "Prediction", "Segmenter"]
