"""The presets against mmsegmentation's EMANet configs (the model card and its config files)."""

import pytest

from emanet.models.presets import PRESETS, SMALL_PRESET, get_preset

# mmsegmentation's configs/emanet: crop, train scale, test mode, align_corners, checkpoint hash.
CONFIGS = {
    "emanet_r50-d8_512x1024_80k_cityscapes": (
        50,
        (512, 1024),
        (2048, 1024),
        "whole",
        False,
        "c43fcef1",
    ),
    "emanet_r101-d8_512x1024_80k_cityscapes": (
        101,
        (512, 1024),
        (2048, 1024),
        "whole",
        False,
        "2d970745",
    ),
    "emanet_r50-d8_769x769_80k_cityscapes": (
        50,
        (769, 769),
        (2049, 1025),
        "slide",
        True,
        "16f8de52",
    ),
    "emanet_r101-d8_769x769_80k_cityscapes": (
        101,
        (769, 769),
        (2049, 1025),
        "slide",
        True,
        "47a324ce",
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_official_presets_are_mmsegs_configs(name):
    depth, crop, scale, mode, align_corners, digest = CONFIGS[name]
    preset = get_preset(name)
    assert (preset.depth, preset.crop_size, preset.train_scale) == (depth, crop, scale)
    assert (preset.test_scale, preset.test_mode, preset.align_corners) == (
        scale,
        mode,
        align_corners,
    )
    assert preset.slide_stride == (513, 513)
    # EMAHead and FCNHead as the configs build them, and the paper's EM unit
    assert (preset.head_channels, preset.ema_channels, preset.num_bases) == (256, 512, 64)
    assert (preset.num_iterations, preset.momentum, preset.aux_weight) == (3, 0.1, 0.4)
    assert (preset.inverse_temperature, preset.centered_cosine) == (1.0, False)
    assert (preset.num_classes, preset.dropout, preset.stem_channels) == (19, 0.1, 64)
    assert preset.url.endswith(f"{digest}.pth") and f"/emanet/{name}/" in preset.url
    assert preset.pretrained == f"open-mmlab://resnet{depth}_v1c"


def test_the_voc_preset_is_the_papers_recipe():
    voc = PRESETS["emanet_r101-d8_513x513_30k_voc12aug"]
    assert (voc.depth, voc.num_classes, voc.crop_size, voc.test_mode) == (
        101,
        21,
        (513, 513),
        "whole",
    )
    assert (voc.num_bases, voc.num_iterations, voc.ema_channels, voc.momentum) == (64, 3, 512, 0.1)
    assert voc.align_corners and voc.url is None and voc.pretrained == "open-mmlab://resnet101_v1c"


def test_the_small_preset_and_lookups():
    assert set(PRESETS) == {*CONFIGS, SMALL_PRESET.name, "emanet_r101-d8_513x513_30k_voc12aug"}
    assert SMALL_PRESET.url is None and SMALL_PRESET.pretrained is None
    assert get_preset(SMALL_PRESET) is SMALL_PRESET
    assert get_preset(SMALL_PRESET.name).with_overrides(num_iterations=5).num_iterations == 5
    with pytest.raises(KeyError, match="known presets"):
        get_preset("emanet_r999")
