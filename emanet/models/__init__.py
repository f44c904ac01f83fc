"""What the network is: the EM attention unit, the ResNetV1c-D8 backbone, the decode heads, the
segmentor with mmsegmentation's inference, the presets, and measures of the attention.

May import :mod:`emanet.runtime` and :mod:`emanet.fast`. Start with ``ema.py``: the EM
iterations as the paper writes them, in one short function.
"""

from .attention import AttentionStats, attention_stats, trace_stats
from .ema import EMAttention, EMTrace, em_attention
from .presets import PRESETS, SMALL_PRESET, ModelPreset, get_preset
from .segmentor import EMANet, build_model

__all__ = [
    "PRESETS",
    "SMALL_PRESET",
    "AttentionStats",
    "EMANet",
    "EMAttention",
    "EMTrace",
    "ModelPreset",
    "attention_stats",
    "build_model",
    "em_attention",
    "get_preset",
    "trace_stats",
]
