"""Optional speed and memory machinery, each piece behind one named switch and held by a test
to the plain version it replaces.

May import :mod:`emanet.runtime` only. ``em`` runs the EM iterations of
:mod:`emanet.models.ema` with preallocated buffers, channels_last layouts and split-TF32
products; ``fusion`` makes eval copies with BatchNorm folded into convolutions; ``recompute``
recomputes BatchNorm -> ReLU outputs in backward; ``loss`` is the segmentation loss that keeps
only low-resolution logits for backward.
"""
