"""Evaluation: IoU / iIoU metrics as the official Cityscapes scripts count them (metrics.py), the
one evaluation loop (evaluate.py: ``emanet eval`` and validation during training), result files
(results.py) and figures (plots.py, imported by itself: it loads matplotlib).

May import runtime, models, io, data and predict.
"""

from .evaluate import evaluate_segmenter
from .metrics import CITYSCAPES_AVG_INSTANCE_SIZE, InstanceIoUMetric, IoUMetric, format_table
from .results import export_cityscapes_results, result_file_name, save_train_id_png

__all__ = [
    "CITYSCAPES_AVG_INSTANCE_SIZE",
    "InstanceIoUMetric",
    "IoUMetric",
    "evaluate_segmenter",
    "export_cityscapes_results",
    "format_table",
    "result_file_name",
    "save_train_id_png",
]
