"""Taking a model elsewhere: ONNX export, FLOPs and parameters, predictions over folders.

May import runtime, fast, models, io, data and predict.
"""
