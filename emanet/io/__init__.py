"""Files in and out: checkpoints (ours and mmsegmentation's, the model zoo, downloads),
ImageNet-pretrained backbones, images, and atomic writes.

May import :mod:`emanet.runtime` and :mod:`emanet.models` (the presets name the zoo's files).
Everything read from a file that a person hands us goes through here: checkpoints with
``torch.load(weights_only=True)`` only, images through one decoder with clear errors; every file
written goes through :func:`~emanet.io.atomic.atomic_write`.
"""
