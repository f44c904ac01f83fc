"""ImageNet-pretrained backbones, loaded as mmsegmentation's ``init_cfg=Pretrained`` does.

mmseg's EMANet configs start training from ``open-mmlab://resnet50_v1c`` (``resnet101_v1c``):
ResNetV1c weights trained on ImageNet, stored with the backbone's own key names (``stem.0.weight``,
``layer1.0.conv1.weight``, ...) plus the ImageNet classifier ``fc.*``. They are loaded non-strict
into the backbone only; the heads start from their own initialisation. From a random backbone
the recipe ends tens of mIoU points below the model card.

Files are fetched like every other checkpoint here
(:func:`emanet.io.checkpoint.resolve_checkpoint`):
once, into torch.hub's cache, with the sha256 prefix in the file name checked, and read with
``weights_only=True``; an offline machine gets an error naming the URL and the cache folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from emanet.runtime.device import unwrap

from .checkpoint import read_checkpoint
from .hub import CheckpointError, resolve_checkpoint
from .keys import KeyReport, listing

__all__ = ["PRETRAINED_BACKBONES", "BackboneReport", "load_backbone", "backbone_url"]

log = logging.getLogger(__name__)

_PRETRAIN = "https://download.openmmlab.com/pretrain/third_party"

#: mmcv's ``open-mmlab://`` names of the ResNetV1c ImageNet weights -> their download URLs
#: (mmengine's ``hub/openmmlab.json``). The 8 hex digits are a sha256 prefix.
PRETRAINED_BACKBONES: dict[str, str] = {
    "open-mmlab://resnet18_v1c": f"{_PRETRAIN}/resnet18_v1c-b5776b93.pth",
    "open-mmlab://resnet50_v1c": f"{_PRETRAIN}/resnet50_v1c-2cccc1ad.pth",
    "open-mmlab://resnet101_v1c": f"{_PRETRAIN}/resnet101_v1c-e67eebb6.pth",
}

_SCHEME = "open-mmlab://"
# Keys a model may lack in an older file without any harm (BatchNorm's step counter).
_HARMLESS_MISSING = ("num_batches_tracked",)
# Keys every ImageNet file carries and a segmentation backbone does not have.
_CLASSIFIER = ("fc.",)


@dataclass(frozen=True)
class BackboneReport(KeyReport):
    """What :func:`load_backbone` did: a :class:`~emanet.io.keys.KeyReport` of the backbone
    (``unexpected`` holds the ImageNet classifier's ``fc.*``), with

    Attributes:
        source: as given (``open-mmlab://...``, a URL or a path).
        path: the local file that was read.
    """

    source: str = ""
    path: Path = Path()

    def __str__(self) -> str:
        return (
            f"pretrained backbone {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.misshaped)} wrongly shaped"
        )


def backbone_url(source: str) -> str:
    """The URL an ``open-mmlab://`` name stands for; other sources are returned unchanged.

    Raises:
        CheckpointError: an ``open-mmlab://`` name that is not in :data:`PRETRAINED_BACKBONES`.
    """
    if not source.startswith(_SCHEME):
        return source
    if source not in PRETRAINED_BACKBONES:
        known = ", ".join(PRETRAINED_BACKBONES)
        raise CheckpointError(f"unknown pretrained backbone {source!r}; known: {known}")
    return PRETRAINED_BACKBONES[source]


def load_backbone(
    model: nn.Module, source: str | os.PathLike[str], *, progress: bool = True
) -> BackboneReport:
    """Load ImageNet weights into ``model``'s backbone (non-strict, as mmseg does).

    Args:
        model: an :class:`~emanet.EMANet` (its ``backbone`` is loaded), a bare
            :class:`~emanet.models.backbone.ResNetV1c`, or either inside DDP / ``torch.compile``.
        source: ``open-mmlab://resnet{18,50,101}_v1c``, an http(s)/file URL or a local path.
            The file may hold the tensors at its top level or under ``state_dict``, with or
            without a DDP ``module.`` prefix; a whole segmentor's file (``backbone.*`` keys)
            gives its backbone.

    Returns:
        A :class:`BackboneReport`; its summary is logged, with a warning when backbone
        tensors are missing or wrongly shaped.

    Raises:
        CheckpointError: the file cannot be found, downloaded (offline: the message names the
            URL and where to put the file), read safely, or not a single tensor fits.
    """
    target = unwrap(model)
    backbone = getattr(target, "backbone", None)
    target = backbone if isinstance(backbone, nn.Module) else target
    name = str(source)
    try:
        path = resolve_checkpoint(
            backbone_url(name) if isinstance(source, str) else source, progress=progress
        )
    except CheckpointError as error:
        raise CheckpointError(f"cannot load the pretrained backbone {name}: {error}") from None
    state_dict = _backbone_tensors(read_checkpoint(path).state_dict, target.state_dict())
    keys = KeyReport.compare(state_dict, target.state_dict())
    if not keys.loaded:
        raise CheckpointError(
            f"no tensor of {path} fits the backbone ({len(state_dict)} keys, e.g. "
            f"{', '.join(list(state_dict)[:3])}; {len(keys.misshaped)} wrongly shaped): is it "
            f"a backbone of this depth ({type(target).__name__})?"
        )
    target.load_state_dict({k: state_dict[k] for k in keys.loaded}, strict=False)
    report = BackboneReport(**vars(keys), source=name, path=Path(path))
    _log_report(report)
    return report


def _backbone_tensors(state_dict: dict, expected: dict) -> dict:
    """The backbone's tensors of a file: as they are, or a whole segmentor's ``backbone.*``."""
    if any(k in expected for k in state_dict):
        return state_dict
    inner = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    return inner or state_dict


def _log_report(report: BackboneReport) -> None:
    log.info("%s (from %s)", report, report.path)
    missing = [k for k in report.missing if not k.endswith(_HARMLESS_MISSING)]
    foreign = [k for k in report.unexpected if not k.startswith(_CLASSIFIER)]
    if missing or report.misshaped or foreign:
        shown = listing([*missing, *(k for k, _, _ in report.misshaped), *foreign])
        log.warning(
            "pretrained backbone %s does not cover the backbone: %d missing, %d wrongly shaped, "
            "%d unexpected keys besides fc.* (e.g. %s)",
            report.source,
            len(missing),
            len(report.misshaped),
            len(foreign),
            shown,
        )
