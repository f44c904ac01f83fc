"""ImageNet-pretrained backbones: the official file layout, torch.hub's cache, hashes, offline."""

import hashlib
import logging
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from emanet import build_model
from emanet.io.checkpoint import CheckpointError
from emanet.io.pretrained import PRETRAINED_BACKBONES, backbone_url, load_backbone
from emanet.models.backbone import ResNetV1c
from emanet.models.presets import PRESETS, SMALL_PRESET
from emanet.training.config import TrainConfig
from emanet.training.loop import pretrained_source

FIXTURES = Path(__file__).parents[1] / "fixtures"
R50 = "emanet_r50-d8_512x1024_80k_cityscapes"


def official_layout(depth_file: str) -> dict[str, torch.Size]:
    """Backbone keys and shapes as mmseg names them (read off an mmseg model), prefix removed."""
    shapes = {}
    for line in (FIXTURES / depth_file).read_text().splitlines():
        key, shape = line.split(" ", 1)
        if key.startswith("backbone."):
            dims = [int(v) for v in shape.strip("()").split(",") if v.strip()]
            shapes[key[len("backbone.") :]] = torch.Size(dims)
    return shapes


def imagenet_file(shapes: dict, in_features: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like mmcv's resnet*_v1c files: backbone keys plus the ImageNet fc."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.rand(shape, generator=gen) + 0.5
    state["fc.weight"] = torch.randn(1000, in_features, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return state


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory):
    state = imagenet_file(official_layout("mmseg_emanet_r50-d8_state_dict_keys.txt"), 2048)
    path = tmp_path_factory.mktemp("r50") / "resnet50_v1c.pth"
    torch.save({"state_dict": state}, path)
    return path, state


def r18_state(seed=0):
    shapes = {k: v.shape for k, v in ResNetV1c(18).state_dict().items()}
    return imagenet_file(shapes, 512, seed)


def test_official_r50_layout_loads_into_the_backbone_only(r50_file):
    path, state = r50_file
    model = build_model(R50)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if "backbone" not in k}
    report = load_backbone(model, str(path), progress=False)
    # the official layout: the deep stem's convs and BNs, four stages, downsamples
    assert {k.split(".")[1] for k in report.loaded if k.startswith("stem.")} == {
        "0",
        "1",
        "3",
        "4",
        "6",
        "7",
    }
    assert {k.split(".")[0] for k in report.loaded} == {
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    }
    assert set(report.loaded) == set(state) - {"fc.weight", "fc.bias"}
    assert report.unexpected == ("fc.weight", "fc.bias")
    assert report.missing == () and report.misshaped == ()
    backbone = model.backbone.state_dict()
    for key in report.loaded:
        assert torch.equal(backbone[key], state[key]), key
    for key, value in heads_before.items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "module_prefix"])
def test_wrappers_and_ddp_prefix(tmp_path, wrap):
    state = r18_state(seed=1)
    if wrap == "module_prefix":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    elif wrap == "state_dict":
        obj = {"state_dict": state, "meta": {"epoch": 100}}
    else:
        obj = state
    torch.save(obj, tmp_path / "r18.pth")
    backbone = ResNetV1c(18)  # a bare backbone works too
    report = load_backbone(backbone, tmp_path / "r18.pth", progress=False)
    assert len(report.loaded) == len(backbone.state_dict())
    assert torch.equal(backbone.stem[0].weight, state["stem.0.weight"])
    assert str(report).startswith(f"pretrained backbone {tmp_path / 'r18.pth'}: ")


def test_whole_segmentor_file_gives_its_backbone(tmp_path):  # the toy preset: half width
    donor = build_model(SMALL_PRESET)
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "seg.pth")
    model = build_model(SMALL_PRESET)
    report = load_backbone(model, tmp_path / "seg.pth", progress=False)
    assert set(report.loaded) == set(model.backbone.state_dict())
    assert torch.equal(model.backbone.stem[0].weight, donor.backbone.stem[0].weight)


def test_open_mmlab_name_is_read_from_the_torch_hub_cache(tmp_path, monkeypatch, caplog):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    url = PRETRAINED_BACKBONES["open-mmlab://resnet18_v1c"]
    cached = hub / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    state = r18_state(seed=2)
    torch.save(state, cached)
    backbone = ResNetV1c(18)
    with caplog.at_level(logging.INFO, logger="emanet.io.pretrained"):
        report = load_backbone(backbone, "open-mmlab://resnet18_v1c", progress=False)
    assert report.path == cached
    assert torch.equal(backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert "resnet18_v1c" in caplog.text and "warning" not in caplog.text.lower()


def _hashed_copy(folder: Path, stem: str, state: dict, good: bool) -> str:
    raw = folder / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()[:8]
    if not good:
        digest = f"{(int(digest, 16) + 1) % 16**8:08x}"
    named = folder / f"{stem}-{digest}.pth"
    raw.rename(named)
    return named.as_uri()


def test_download_checks_the_hash_prefix_and_caches(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    served = tmp_path / "served"
    served.mkdir()
    bad = _hashed_copy(served, "resnet18_v1c", r18_state(3), good=False)
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_backbone(ResNetV1c(18), bad, progress=False)
    assert bad in str(info.value)
    assert not (hub / "checkpoints").exists() or not any((hub / "checkpoints").iterdir())
    good = _hashed_copy(served, "resnet18_v1c", r18_state(4), good=True)
    report = load_backbone(ResNetV1c(18), good, progress=False)
    assert report.path.parent == hub / "checkpoints" and report.path.is_file()


def test_offline_error_names_the_url_and_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError) as info:
        load_backbone(ResNetV1c(18), "open-mmlab://resnet50_v1c", progress=False)
    message = str(info.value)
    assert "open-mmlab://resnet50_v1c" in message
    assert PRETRAINED_BACKBONES["open-mmlab://resnet50_v1c"] in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_unknown_name_and_a_file_that_does_not_fit(tmp_path):
    with pytest.raises(CheckpointError, match="known: open-mmlab://resnet18_v1c"):
        backbone_url("open-mmlab://resnet34_v1c")
    assert backbone_url("https://x/y.pth") == "https://x/y.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "torchvision.pth")
    with pytest.raises(CheckpointError, match="fits the backbone"):
        load_backbone(ResNetV1c(18), tmp_path / "torchvision.pth", progress=False)


def test_wrong_depth_is_loaded_partly_and_warned_about(tmp_path, caplog):
    state = r18_state()
    del state["layer4.1.conv2.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "partial.pth")
    with caplog.at_level(logging.WARNING, logger="emanet.io.pretrained"):
        report = load_backbone(ResNetV1c(18), tmp_path / "partial.pth", progress=False)
    assert report.missing == ("layer4.1.conv2.weight",)
    assert report.misshaped == (("layer1.0.conv1.weight", (64, 64, 1, 1), (64, 64, 3, 3)),)
    assert "1 missing, 1 wrongly shaped" in caplog.text


def test_presets_name_their_pretrained_backbone():
    for name, preset in PRESETS.items():
        if preset is SMALL_PRESET:
            assert preset.pretrained is None
        else:
            assert preset.pretrained == f"open-mmlab://resnet{preset.depth}_v1c", name
            assert preset.pretrained in PRETRAINED_BACKBONES


def test_training_starts_from_the_preset_backbone_as_mmseg_does():
    preset = PRESETS[R50]

    def source(resuming=False, **kw):
        config = TrainConfig(preset=R50, data_root="", work_dir="", **kw)
        return pretrained_source(config, preset, resuming)

    assert source() == "open-mmlab://resnet50_v1c"
    assert source(init="run/model.pth") is None  # --init replaces every weight
    assert source(resuming=True) is None  # so does the resumed state
    assert source(pretrained="none") is None
    assert source(pretrained="my.pth", init="x.pth") == "my.pth"  # asked for explicitly
    small = TrainConfig(preset=SMALL_PRESET.name, data_root="", work_dir="")
    assert pretrained_source(small, SMALL_PRESET, False) is None
