"""Evaluation: IoU / iIoU metrics as the official Cityscapes scripts count them, the one
evaluation loop (``emanet eval`` and validation during training), result files and figures.

May import runtime, models, io, data and predict.
"""
