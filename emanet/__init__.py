"""emanet: Expectation-Maximization Attention Networks (Li et al., ICCV 2019) for Cityscapes."""

from .ema import EMAttention, EMTrace
from .presets import PRESETS, ModelPreset, get_preset
from .segmentor import EMANet, build_model

__version__ = "0.1.0"

__all__ = [
    "EMAttention",
    "EMTrace",
    "EMANet",
    "ModelPreset",
    "PRESETS",
    "build_model",
    "get_preset",
]
