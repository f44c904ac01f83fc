"""Joint image/label pipelines of mmsegmentation's Cityscapes config, on torchvision.transforms.v2.

Training (``TrainTransform``), in mmsegmentation's order:

1. ``RandomResize``: draw ``ratio ~ U(ratio_range)``, target scale ``(int(2048 r), int(1024 r))``,
   then rescale keeping the aspect ratio so that the image fits inside that scale
   (:func:`keep_ratio_size`). Image bilinear, label nearest.
2. ``RandomCrop`` to ``crop_size`` with ``cat_max_ratio``: up to 10 redraws of the window until no
   single class holds ``cat_max_ratio`` or more of the labelled pixels.
3. Horizontal flip with probability 0.5.
4. ``PhotoMetricDistortion``: brightness, contrast, saturation, hue, on 0-255 values.
5. Normalisation with the ImageNet mean/std on 0-255 RGB, then padding to ``crop_size``
   bottom/right (image 0, i.e. after normalisation; label 255).

Images travel as ``tv_tensors.Image`` and labels as ``tv_tensors.Mask``: torchvision's v2 kernels
then resize masks with nearest neighbour whatever interpolation the image uses, so a label map is
never blended into class ids that were not there.

All randomness is drawn from torch's default generator: ``torch.manual_seed`` makes a run
reproducible and DataLoader workers (which reseed torch per worker) get different augmentations.
A generator stored on the transform would instead be copied into every worker in the same state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomResize",
    "TestTransform",
    "TrainTransform",
    "denormalize",
    "keep_ratio_size",
    "normalize",
]

# ImageNet statistics on the 0-255 scale, RGB order (mmsegmentation's Cityscapes config).
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

ImageLike = Image.Image | np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------------------------
# conversions and normalisation


def _writable(array: np.ndarray) -> np.ndarray:
    # torch.from_numpy warns on read-only arrays (np.asarray of a PIL image is one); copy those.
    if not array.flags.writeable or not array.flags.c_contiguous:
        return np.array(array, order="C")
    return array


def _as_image(image: ImageLike) -> tv_tensors.Image:
    """PIL RGB image, ``(H, W, 3)`` uint8 array or ``(3, H, W)`` uint8 tensor -> ``Image``."""
    if isinstance(image, Image.Image):
        return tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) array, got shape {image.shape}")
        return tv_tensors.Image(torch.from_numpy(_writable(image)).permute(2, 0, 1))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        return tv_tensors.Image(image)
    raise TypeError(f"unsupported image type {type(image).__name__}")


def _as_mask(label: ImageLike) -> tv_tensors.Mask:
    """PIL 'L'/'P' label, ``(H, W)`` array or tensor -> ``Mask`` of shape ``(1, H, W)``."""
    if isinstance(label, Image.Image):
        label = np.array(label)
    if isinstance(label, np.ndarray):
        label = torch.from_numpy(_writable(label))
    if not isinstance(label, torch.Tensor):
        raise TypeError(f"unsupported label type {type(label).__name__}")
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label, got shape {tuple(label.shape)}")
    if label.is_floating_point():
        raise TypeError("labels must be integers (class ids), not floats")
    return tv_tensors.Mask(label.unsqueeze(0))


def _check_same_size(image: torch.Tensor, label: torch.Tensor) -> None:
    if image.shape[-2:] != label.shape[-2:]:
        raise ValueError(
            f"image {tuple(image.shape[-2:])} and label {tuple(label.shape[-2:])} sizes differ"
        )


def normalize(
    image: ImageLike,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Normalise 0-255 RGB values with a per-channel mean and std given on the 0-255 scale.

    Args:
        image: a ``(3, H, W)`` or ``(B, 3, H, W)`` tensor (any dtype, values 0-255), an
            ``(H, W, 3)`` array (PIL/OpenCV layout, RGB) or a PIL image.
        mean, std: 3 values each, RGB order.

    Returns:
        float32 tensor ``(3, H, W)`` or ``(B, 3, H, W)``: ``(image - mean) / std``.
    """
    if not isinstance(image, torch.Tensor):
        image = _as_image(image)
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    image = image.as_subclass(torch.Tensor).float()
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return (image - mean_t) / std_t


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Inverse of :func:`normalize`: ``(..., 3, H, W)`` float -> uint8 0-255 (rounded, clipped)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return (image.float() * std_t + mean_t).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# geometry


def keep_ratio_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale rule: the largest size that fits inside ``scale``.

    The scale's long edge bounds the image's long edge and its short edge the short edge, so
    the orientation of ``scale`` does not matter: ``factor = min(max(scale) / max(h, w),
    min(scale) / min(h, w))``, and each side becomes ``int(side * factor + 0.5)``.

    Returns:
        ``(new_height, new_width)``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image {height}x{width}")
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize_pair(
    image: tv_tensors.Image, label: tv_tensors.Mask | None, size: tuple[int, int]
) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
    if tuple(image.shape[-2:]) == size:
        return image, label
    # antialias=False: mmsegmentation resizes with OpenCV's INTER_LINEAR, which does not
    # low-pass filter when shrinking; torch's bilinear without antialias is the same kernel.
    image = F.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)
    if label is not None:
        # A Mask is always resized with nearest neighbour by torchvision.
        label = F.resize(label, list(size))
    return image, label


class RandomResize:
    """mmsegmentation's ``RandomResize(scale, ratio_range, keep_ratio=True)``.

    Args:
        scale: base scale, e.g. ``(2048, 1024)``; its orientation does not matter.
        ratio_range: ``(low, high)``: the scale is multiplied by ``U(low, high)``.
    """

    def __init__(
        self, scale: Sequence[int] = (2048, 1024), ratio_range: Sequence[float] = (0.5, 2.0)
    ):
        if ratio_range[0] > ratio_range[1] or ratio_range[0] <= 0:
            raise ValueError(f"bad ratio_range {ratio_range}")
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def sample_scale(self) -> tuple[int, int]:
        low, high = self.ratio_range
        ratio = low + (high - low) * torch.rand(()).item()
        # mmcv truncates the scaled target (int, not round).
        return int(self.scale[0] * ratio), int(self.scale[1] * ratio)

    def __call__(
        self, image: tv_tensors.Image, label: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """``(3, H, W)`` image and ``(1, H, W)`` label -> both at the sampled keep-ratio size."""
        size = keep_ratio_size(*image.shape[-2:], self.sample_scale())
        return _resize_pair(image, label, size)


class RandomCrop:
    """mmsegmentation's ``RandomCrop(crop_size, cat_max_ratio)``.

    A window of ``crop_size = (h, w)`` (clipped to the image when it is smaller) is drawn
    uniformly. While the window's labelled pixels are dominated by one class (its share
    ``>= cat_max_ratio``, or only one class present) a new window is drawn, at most 10 times;
    the last draw is kept. Padding to the full crop size happens later, after normalisation.
    """

    def __init__(
        self, crop_size: Sequence[int], cat_max_ratio: float = 0.75, ignore_index: int = 255
    ):
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"bad crop_size {crop_size}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_retries = 10

    def _draw_window(self, height: int, width: int) -> tuple[int, int, int, int]:
        margin_h = max(height - self.crop_size[0], 0)
        margin_w = max(width - self.crop_size[1], 0)
        top = int(torch.randint(margin_h + 1, ()).item())
        left = int(torch.randint(margin_w + 1, ()).item())
        return top, left, min(self.crop_size[0], height), min(self.crop_size[1], width)

    def is_balanced(self, label: torch.Tensor) -> bool:
        """mmseg's acceptance test: >1 labelled class and none with ``cat_max_ratio`` or more."""
        values, counts = torch.unique(label, return_counts=True)
        counts = counts[values != self.ignore_index]
        if counts.numel() <= 1:
            return False
        return counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def sample_window(self, label: torch.Tensor) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the crop for a ``(..., H, W)`` label."""
        height, width = label.shape[-2:]
        window = self._draw_window(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_retries):
                top, left, h, w = window
                if self.is_balanced(label[..., top : top + h, left : left + w]):
                    break
                window = self._draw_window(height, width)
        return window

    def __call__(
        self, image: tv_tensors.Image, label: tv_tensors.Mask
    ) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        top, left, h, w = self.sample_window(label)
        return F.crop(image, top, left, h, w), F.crop(label, top, left, h, w)


# ----------------------------------------------------------------------------------------------
# colour


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` float RGB -> HSV with H in degrees [0, 360), S in [0, 1], V as the input."""
    r, g, b = rgb.unbind(0)
    v, _ = rgb.max(dim=0)
    chroma = v - rgb.min(dim=0).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        v == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.where(chroma > 0, hue * 60.0, torch.zeros_like(hue))
    sat = torch.where(
        v > 0, chroma / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v)
    )
    return torch.stack([hue, sat, v])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`."""
    hue, sat, v = hsv.unbind(0)
    channels = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = torch.remainder(n + hue / 60.0, 6.0)
        channels.append(v - v * sat * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _coin() -> bool:
    return bool(torch.rand(()).item() < 0.5)


class PhotoMetricDistortion:
    """mmsegmentation's ``PhotoMetricDistortion`` on a ``(3, H, W)`` 0-255 image.

    In order, each with probability 0.5: add ``U(-32, 32)`` (brightness); multiply by
    ``U(0.5, 1.5)`` ("contrast" in mmseg, a plain gain), either here or at the end, at random;
    scale the HSV saturation by ``U(0.5, 1.5)``; shift the hue by an integer ``U{-18..17}`` in
    OpenCV's 2-degree units. Values are clipped to 0-255 and truncated to integers after each
    gain/offset, as mmseg's uint8 arrays are. HSV is computed in float here (OpenCV quantises
    H, S, V to 8 bits), which only moves values by a rounding step.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _gain_offset(img: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
        # clip then truncate, like np.clip(...).astype(np.uint8)
        return (img * alpha + beta).clamp(0.0, 255.0).floor()

    def _contrast(self, img: torch.Tensor) -> torch.Tensor:
        if _coin():
            img = self._gain_offset(img, alpha=_uniform(*self.contrast_range))
        return img

    def distort(self, img: torch.Tensor) -> torch.Tensor:
        """``(3, H, W)`` float 0-255 -> distorted ``(3, H, W)`` float with integer values."""
        if _coin():
            delta = self.brightness_delta
            img = self._gain_offset(img, beta=_uniform(-delta, delta))
        contrast_first = _coin()
        if contrast_first:
            img = self._contrast(img)
        if _coin():
            hsv = _rgb_to_hsv(img)
            hsv[1] = (hsv[1] * _uniform(*self.saturation_range)).clamp(0.0, 1.0)
            img = _hsv_to_rgb(hsv).round().clamp(0.0, 255.0)
        if _coin():
            shift = int(torch.randint(-self.hue_delta, self.hue_delta, ()).item())
            hsv = _rgb_to_hsv(img)
            hsv[0] = torch.remainder(hsv[0] + 2.0 * shift, 360.0)
            img = _hsv_to_rgb(hsv).round().clamp(0.0, 255.0)
        if not contrast_first:
            img = self._contrast(img)
        return img

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask):
        out = self.distort(image.as_subclass(torch.Tensor).float())
        return tv_tensors.Image(out.to(torch.uint8)), label


# ----------------------------------------------------------------------------------------------
# pipelines


class TrainTransform:
    """mmsegmentation's Cityscapes training pipeline.

    Call with ``(image, label)``: a PIL RGB image (or ``(H, W, 3)`` uint8 array / ``(3, H, W)``
    uint8 tensor) and a PIL 'L' label of trainIds (or ``(H, W)`` integer array/tensor).

    Returns:
        ``image`` float32 ``(3, crop_h, crop_w)``, normalised, zero where padded;
        ``label`` int64 ``(crop_h, crop_w)``, ``ignore_index`` where padded.
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (512, 1024),
        scale: Sequence[int] = (2048, 1024),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
    ):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.resize = RandomResize(scale, ratio_range)
        self.crop = RandomCrop(crop_size, cat_max_ratio, ignore_index)
        # v2's flip draws from torch's generator and flips Image and Mask together.
        self.flip = v2.RandomHorizontalFlip(flip_prob)
        self.photometric = PhotoMetricDistortion() if photometric else None
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.ignore_index = ignore_index

    def __call__(self, image: ImageLike, label: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        img, lbl = _as_image(image), _as_mask(label)
        _check_same_size(img, lbl)
        img, lbl = self.resize(img, lbl)
        img, lbl = self.crop(img, lbl)
        img, lbl = self.flip(img, lbl)
        if self.photometric is not None:
            img, lbl = self.photometric(img, lbl)
        out = normalize(img, self.mean, self.std)
        lbl = lbl.as_subclass(torch.Tensor)[0].long()
        # Pad after normalising (as mmseg's Pad / data preprocessor do): image 0, label ignore.
        pad_h = self.crop_size[0] - out.shape[-2]
        pad_w = self.crop_size[1] - out.shape[-1]
        if pad_h > 0 or pad_w > 0:
            out = torch.nn.functional.pad(out, (0, pad_w, 0, pad_h), value=0.0)
            lbl = torch.nn.functional.pad(lbl, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return out, lbl


class TestTransform:
    """mmsegmentation's Cityscapes test pipeline: keep-ratio resize into ``scale``, normalise.

    The label is returned at its original size, untouched: evaluation compares predictions
    (upsampled to the original resolution by the model wrapper) with the original labels.

    Returns:
        ``image`` float32 ``(3, h, w)`` with ``(h, w) = keep_ratio_size(H, W, scale)``;
        ``label`` int64 ``(H, W)``, or ``None`` when no label is given.
    """

    def __init__(
        self,
        scale: Sequence[int] = (2048, 1024),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.scale = tuple(scale)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(
        self, image: ImageLike, label: ImageLike | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        img = _as_image(image)
        lbl = None
        if label is not None:
            mask = _as_mask(label)
            _check_same_size(img, mask)
            lbl = mask.as_subclass(torch.Tensor)[0].long()
        size = keep_ratio_size(*img.shape[-2:], self.scale)
        img, _ = _resize_pair(img, None, size)
        return normalize(img, self.mean, self.std), lbl
