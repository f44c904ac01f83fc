"""Named model configurations: the four rows of mmsegmentation's EMANet Cityscapes model card,
the paper's Pascal VOC recipe, and a small CPU-friendly one for the bundled model and the
tutorials.

A preset is plain data; :func:`emanet.build_model` turns it into a module. The names are
mmsegmentation's config names, so ``build_model("emanet_r50-d8_512x1024_80k_cityscapes")``
and that config describe the same network, data scale and test mode.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["PRESETS", "SMALL_PRESET", "VOC_PRESET", "ModelPreset", "get_preset"]


@dataclass(frozen=True)
class ModelPreset:
    """Everything that distinguishes one EMANet configuration from another.

    Attributes:
        name: mmsegmentation config name (or ours for the small preset).
        depth: ResNetV1c depth.
        stem_channels: backbone stem width (64 for every official ResNet).
        base_width: channels of the backbone's first stage, doubled per stage (64 for every
            official ResNet).
        head_channels: decode/auxiliary head width (``channels`` in mmseg, 256).
        ema_channels: channels of the EM unit (512).
        num_bases: ``K``.
        num_iterations: ``T`` (EM stages).
        momentum: bases moving-average rate.
        inverse_temperature: ``lambda`` of the EM unit's E-step ``softmax(lambda * X^T mu)``
            (1.0: mmsegmentation's and the paper's unit).
        centered_cosine: the EM unit works on pixels centred on the image's mean feature and
            L2-normalised, a cosine E-step (False: mmsegmentation's and the paper's unit). See
            :mod:`emanet.models.ema`.
        num_classes: classifier outputs: 19 Cityscapes train classes, 21 VOC classes (a
            training run sizes them from its dataset, see :func:`emanet.build_model`).
        crop_size: training crop ``(h, w)``; also the slide window.
        train_scale: ``(long, short)`` scale of the random resize in training, mmseg's
            ``(2048, 1024)`` (``(2049, 1025)`` for the 769 configs).
        test_scale: ``(long, short)`` scale the test pipeline resizes to, keeping aspect ratio.
        test_mode: ``"whole"`` or ``"slide"``.
        slide_stride: ``(h, w)`` stride of the slide windows.
        align_corners: bilinear resizing of logits, as in the config.
        aux_weight: auxiliary FCN loss weight (0.4).
        dropout: Dropout2d before the classifiers (0.1).
        url: official checkpoint, if any.
        pretrained: the ImageNet-pretrained backbone training starts from, as mmseg's config
            names it (``open-mmlab://resnet50_v1c``; see :mod:`emanet.io.pretrained`), or ``None``
            for a randomly initialised backbone.
    """

    name: str
    depth: int
    crop_size: tuple[int, int]
    train_scale: tuple[int, int]
    test_scale: tuple[int, int]
    test_mode: str
    align_corners: bool
    slide_stride: tuple[int, int] = (513, 513)
    stem_channels: int = 64
    base_width: int = 64
    head_channels: int = 256
    ema_channels: int = 512
    num_bases: int = 64
    num_iterations: int = 3
    momentum: float = 0.1
    inverse_temperature: float = 1.0
    centered_cosine: bool = False
    num_classes: int = 19
    aux_weight: float = 0.4
    dropout: float = 0.1
    url: str | None = None
    pretrained: str | None = None

    def with_overrides(self, **changes) -> ModelPreset:
        return replace(self, **changes)


_ZOO = "https://download.openmmlab.com/mmsegmentation/v0.5/emanet"


def _official(depth: int, crop: int, checkpoint: str) -> ModelPreset:
    if crop == 512:
        name = f"emanet_r{depth}-d8_512x1024_80k_cityscapes"
        kwargs = dict(
            crop_size=(512, 1024),
            train_scale=(2048, 1024),
            test_scale=(2048, 1024),
            test_mode="whole",
            align_corners=False,
        )
    else:
        name = f"emanet_r{depth}-d8_769x769_80k_cityscapes"
        kwargs = dict(
            crop_size=(769, 769),
            train_scale=(2049, 1025),
            test_scale=(2049, 1025),
            test_mode="slide",
            slide_stride=(513, 513),
            align_corners=True,
        )
    return ModelPreset(
        name=name,
        depth=depth,
        url=f"{_ZOO}/{name}/{checkpoint}",
        pretrained=f"open-mmlab://resnet{depth}_v1c",
        **kwargs,
    )


SMALL_PRESET = ModelPreset(
    name="emanet_r18-d8_toycity",
    depth=18,
    # ResNet-18-D8 at half width (stem 32, stages 32-64-128-256) and narrow heads: 2.7x faster
    # to train on a CPU than the full width, and plenty for the toy city.
    stem_channels=32,
    base_width=32,
    head_channels=64,
    ema_channels=128,
    # The EM unit's E-step is softmax(50 * cos(x - mean, mu)) instead of mmseg's
    # softmax(x^T mu): with mmseg's unit the attention of this model drifts towards uniform as
    # it trains (nothing differentiable reaches the unit's input; see emanet.models.ema), so the
    # explorer has nothing to show. The four official presets keep mmseg's unit.
    inverse_temperature=50.0,
    centered_cosine=True,
    # Trained on 128x256 crops of the 256x512 toy city.
    crop_size=(128, 256),
    train_scale=(512, 256),
    # The toy city is 256x512: the model sees every image at that scale (like the official
    # presets see 2048x1024), which keeps a 1024x512 photo well under a second on 2 CPU cores.
    test_scale=(512, 256),
    test_mode="whole",
    align_corners=False,
    # Trained from scratch on the synthetic toy city (the bundled model), so the tests and
    # tutorials run offline; no ImageNet backbone has its half-width stages anyway.
    pretrained=None,
)

# The paper's Pascal VOC recipe as the official repository (XiaLiPKU/EMANet, settings.py) sets
# it: R-101 at output stride 8, 513x513 crops, K = 64, T = 3, 512 EM channels, bases momentum
# 0.1 (its EM_MOM 0.9 is the weight of the old bases), logits resized with align_corners=True.
# Random scales of 0.5-2.0 times the image: a scale of (500, 500) is the image itself for VOC's
# 500-pixel images, so the ratio range does the rest; tested at that scale, the whole image.
# The network is mmsegmentation's (FCN auxiliary head, concat_input): docs/training.md lists
# where it and the schedule differ from the official code. Not yet trained or measured here.
VOC_PRESET = ModelPreset(
    name="emanet_r101-d8_513x513_30k_voc12aug",
    depth=101,
    num_classes=21,
    crop_size=(513, 513),
    train_scale=(500, 500),
    test_scale=(500, 500),
    test_mode="whole",
    align_corners=True,
    pretrained="open-mmlab://resnet101_v1c",
)

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        _official(50, 512, "emanet_r50-d8_512x1024_80k_cityscapes_20200901_100301-c43fcef1.pth"),
        _official(101, 512, "emanet_r101-d8_512x1024_80k_cityscapes_20200901_100301-2d970745.pth"),
        _official(50, 769, "emanet_r50-d8_769x769_80k_cityscapes_20200901_100301-16f8de52.pth"),
        _official(101, 769, "emanet_r101-d8_769x769_80k_cityscapes_20200901_100301-47a324ce.pth"),
        VOC_PRESET,
        SMALL_PRESET,
    )
}


def get_preset(name: str | ModelPreset) -> ModelPreset:
    """Return the preset called ``name`` (a :class:`ModelPreset` is returned as is)."""
    if isinstance(name, ModelPreset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise KeyError(f"unknown preset {name!r}; known presets: {known}") from None
