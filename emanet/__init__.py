"""emanet: Expectation-Maximization Attention Networks (Li et al., ICCV 2019), for segmentation.

The public API, re-exported here::

    em_attention                         the EM iterations as the paper writes them
    EMAttention, EMTrace                 the EM attention unit and its per-iteration record
    build_model, EMANet, PRESETS         models named like mmsegmentation's configs
    load_checkpoint, save_checkpoint     mmsegmentation checkpoints and our own format
    load_backbone                        ImageNet-pretrained backbones (open-mmlab://...)
    read_checkpoint, Checkpoint          a checkpoint file read once, its layout recognised
    Segmenter, Prediction                any image in, labels (+ EM trace) out
    save_trace, load_trace               one run's EM trace as an .npz file, and back
    IoUMetric                            mIoU as the official Cityscapes evaluation counts it
    export_onnx, ExportError             ONNX export (EM unrolled; needs the 'export' extra)
    model_cost, count_flops              parameters and FLOPs, EM unit apart
"""

from emanet.deploy.flops import count_flops, model_cost
from emanet.deploy.onnx import ExportError, export_onnx
from emanet.evaluation import InstanceIoUMetric, IoUMetric
from emanet.fast.fusion import optimize_for_inference
from emanet.io.checkpoint import (
    MODEL_ZOO,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from emanet.io.images import ImageLoadError, load_image
from emanet.io.pretrained import BackboneReport, load_backbone
from emanet.io.trace import TraceFile, load_trace, save_trace
from emanet.models.ema import EMAttention, EMTrace, em_attention
from emanet.models.presets import PRESETS, ModelPreset, get_preset
from emanet.models.segmentor import EMANet, build_model
from emanet.predict import Prediction, Segmenter

__version__ = "0.1.0"

__all__ = [
    "BackboneReport",
    "MODEL_ZOO",
    "PRESETS",
    "Checkpoint",
    "CheckpointError",
    "EMANet",
    "EMAttention",
    "EMTrace",
    "ExportError",
    "ImageLoadError",
    "InstanceIoUMetric",
    "IoUMetric",
    "ModelPreset",
    "Prediction",
    "Segmenter",
    "TraceFile",
    "build_model",
    "count_flops",
    "em_attention",
    "export_onnx",
    "get_preset",
    "load_backbone",
    "load_checkpoint",
    "load_image",
    "load_trace",
    "model_cost",
    "optimize_for_inference",
    "read_checkpoint",
    "save_checkpoint",
    "save_trace",
]
