"""Joint image/label pipelines of mmsegmentation's Cityscapes config.

Testing is one function, :func:`preprocess_test_image` (mmsegmentation's ``test_pipeline`` and
data preprocessor): keep-ratio resize into the test scale, rounded back to uint8 as OpenCV's
resize is, then normalisation. :class:`~emanet.predict.Segmenter` calls it, and through the
Segmenter so do validation during training and ``emanet eval``; :func:`test_input_size` is the
size it gives.

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

Steps 1-3 and every random draw happen where the sample is loaded (:meth:`TrainTransform.sample`),
steps 4-5 on the batch wherever it is trained (:meth:`TrainTransform.finish`, on the GPU in the
trainer). The label is resized only inside the candidate crop windows, and only ever with nearest
neighbour, so a label map is never blended into class ids that were not there; the image is
resized whole (bilinear, without antialiasing, as OpenCV's ``INTER_LINEAR``), then cropped.
``RandomResize``, ``RandomCrop`` and ``PhotoMetricDistortion`` hold each step's settings and
random draws; ``TrainTransform`` applies them.

All randomness is drawn from torch's default generator: ``torch.manual_seed`` makes a run
reproducible and DataLoader workers (which reseed torch per worker) get different augmentations.
A generator stored on the transform would instead be copied into every worker in the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = [
    "CITYSCAPES_IMAGE_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomResize",
    "TrainTransform",
    "denormalize",
    "keep_ratio_size",
    "normalize",
    "preprocess_test_image",
    "test_input_size",
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


def _as_image(image: ImageLike) -> torch.Tensor:
    """PIL RGB image, ``(H, W, 3)`` uint8 array or ``(3, H, W)`` uint8 tensor -> ``(3, H, W)``."""
    if isinstance(image, Image.Image):
        return F.pil_to_tensor(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) array, got shape {image.shape}")
        return torch.from_numpy(_writable(image)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        return image.as_subclass(torch.Tensor)
    raise TypeError(f"unsupported image type {type(image).__name__}")


def _as_label(label: ImageLike) -> torch.Tensor:
    """PIL 'L'/'P' label, ``(H, W)`` array or tensor -> ``(H, W)`` integer tensor."""
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
    return label.as_subclass(torch.Tensor)


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
        ``(new_height, new_width)``, each at least 1 (a 1x5000 strip would round to 0 rows).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image {height}x{width}")
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


#: ``(H, W)`` of a Cityscapes frame, the image the presets' test settings are stated for.
CITYSCAPES_IMAGE_SIZE = (1024, 2048)


def test_input_size(
    test_scale: Sequence[int], image_size: tuple[int, int] = CITYSCAPES_IMAGE_SIZE
) -> tuple[int, int]:
    """``(H, W)`` an ``image_size`` image is run at: its keep-ratio resize into ``test_scale``
    (1024x2048 for the 512x1024 presets, 1025x2049 for the 769x769 ones, 256x512 for the small
    one, given a Cityscapes frame)."""
    return keep_ratio_size(*image_size, test_scale)


def _resize_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., *size)``, bilinear, in the image's dtype."""
    # antialias=False: mmsegmentation resizes with OpenCV's INTER_LINEAR, which does not
    # low-pass filter when shrinking; torch's bilinear without antialias is the same kernel.
    return F.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)


def _interleaved(image: torch.Tensor) -> torch.Tensor:
    """``image`` ``(C, H, W)`` with each pixel's channels adjacent in memory (an HWC array seen
    as CHW, as the PNG decoders give it): torchvision's uint8 resize kernel is vectorised over
    such pixels, faster than on planar (CHW) memory, with the same values."""
    if image.stride(0) == 1:
        return image
    return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def _nearest_source(in_size: int, out_size: int) -> torch.Tensor:
    """Source index of every output index of a nearest-neighbour resize ``in -> out``:
    ``floor(i * in / out)`` as ``F.interpolate(mode="nearest")`` (and OpenCV's INTER_NEAREST)
    computes it, in float32."""
    scale = torch.tensor(float(in_size)) / out_size
    index = (torch.arange(out_size, dtype=torch.float32) * scale).floor().long()
    return index.clamp_(max=in_size - 1)


def _gather_2d(plane: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``plane[..., rows[:, None], cols[None, :]]`` for a ``(..., H, W)`` tensor, fast: whole
    rows are copied first (contiguous), then the columns gathered along the last dimension."""
    picked = plane.index_select(-2, rows)
    index = cols.expand(*picked.shape[:-1], -1)
    return picked.gather(-1, index)


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
        if label.dtype == torch.uint8:
            # A histogram of 256 bins: faster than unique() on a large crop.
            counts = torch.bincount(label.reshape(-1), minlength=256)
            if 0 <= self.ignore_index < counts.numel():
                counts[self.ignore_index] = 0
            counts = counts[counts > 0]
        else:
            values, counts = torch.unique(label, return_counts=True)
            counts = counts[values != self.ignore_index]
        if counts.numel() <= 1:
            return False
        return counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def sample_window(
        self, height: int, width: int, is_balanced: Callable[[int, int, int, int], bool]
    ) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the crop of a ``height x width`` label.

        ``is_balanced(top, left, h, w)`` tells whether a window passes, e.g. :meth:`is_balanced`
        of the label inside it (:meth:`TrainTransform.sample` computes only those windows of the
        resized label).
        """
        window = self._draw_window(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_retries):
                if is_balanced(*window):
                    break
                window = self._draw_window(height, width)
        return window


# ----------------------------------------------------------------------------------------------
# colour


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` float RGB -> HSV with H in degrees [0, 360), S in [0, 1], V as the
    input."""
    r, g, b = rgb.unbind(-3)
    v, _ = rgb.max(dim=-3)
    chroma = v - rgb.min(dim=-3).values
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
    return torch.stack([hue, sat, v], dim=-3)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`."""
    hue, sat, v = hsv.unbind(-3)
    channels = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = torch.remainder(n + hue / 60.0, 6.0)
        channels.append(v - v * sat * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=-3)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _coin() -> bool:
    return bool(torch.rand(()).item() < 0.5)


class PhotoMetricDistortion:
    """mmsegmentation's ``PhotoMetricDistortion`` on 0-255 images, one or a batch at a time.

    In order, each with probability 0.5: add ``U(-32, 32)`` (brightness); multiply by
    ``U(0.5, 1.5)`` ("contrast" in mmseg, a plain gain), either here or at the end, at random;
    scale the HSV saturation by ``U(0.5, 1.5)``; shift the hue by an integer ``U{-18..17}`` in
    OpenCV's 2-degree units. Values are clipped to 0-255 and truncated to integers after each
    gain/offset, as mmseg's uint8 arrays are. HSV is computed in float here (OpenCV quantises
    H, S, V to 8 bits), which only moves values by a rounding step.

    The random draws (:meth:`sample_params`, on the CPU, e.g. in a DataLoader worker under the
    sample's seed) are separate from the pixel work (:meth:`apply`, on a batch, on any device),
    so the trainer distorts its batches on the GPU with each sample's own parameters.
    """

    #: The entries of a parameter vector: a skipped step has the identity value (a gain or
    #: offset on integers 0-255 is then exact; the HSV round trips have an on/off flag).
    PARAMS = (
        "brightness",
        "contrast_first",
        "saturation_on",
        "saturation",
        "hue_on",
        "hue",
        "contrast_last",
    )

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

    @classmethod
    def identity_params(cls) -> torch.Tensor:
        """``(len(PARAMS),)`` float32 parameters that leave an image unchanged."""
        return torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])

    def sample_params(self) -> torch.Tensor:
        """Draw one image's parameters from torch's generator, in mmseg's order.

        Returns:
            ``(len(PARAMS),)`` float32.
        """
        params = self.identity_params()
        if _coin():
            params[0] = _uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = _coin()
        if contrast_first and _coin():
            params[1] = _uniform(*self.contrast_range)
        if _coin():
            params[2], params[3] = 1.0, _uniform(*self.saturation_range)
        if _coin():
            params[4] = 1.0
            params[5] = int(torch.randint(-self.hue_delta, self.hue_delta, ()).item())
        if not contrast_first and _coin():
            params[6] = _uniform(*self.contrast_range)
        return params

    @staticmethod
    def _gain_offset(img: torch.Tensor, alpha=1.0, beta=0.0) -> torch.Tensor:
        # clip then truncate, like np.clip(...).astype(np.uint8)
        return (img * alpha + beta).clamp(0.0, 255.0).floor()

    @classmethod
    def apply(cls, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Distort a batch, each image with its own parameters.

        Args:
            images: ``(B, 3, H, W)`` float, integer values 0-255, any device.
            params: ``(B, len(PARAMS))`` from :meth:`sample_params`.

        Returns:
            ``(B, 3, H, W)`` float32 with integer values 0-255.
        """
        p = params.to(images.device, torch.float32).view(*params.shape, 1, 1, 1).unbind(1)
        brightness, contrast_first, sat_on, saturation, hue_on, hue, contrast_last = p
        img = cls._gain_offset(images.float(), beta=brightness)
        img = cls._gain_offset(img, alpha=contrast_first)
        hsv = _rgb_to_hsv(img)
        hsv = torch.stack([hsv[:, 0], (hsv[:, 1] * saturation[:, 0]).clamp(0.0, 1.0), hsv[:, 2]], 1)
        img = torch.where(sat_on > 0, _hsv_to_rgb(hsv).round().clamp(0.0, 255.0), img)
        hsv = _rgb_to_hsv(img)
        hsv = torch.stack(
            [torch.remainder(hsv[:, 0] + 2.0 * hue[:, 0], 360.0), *hsv[:, 1:].unbind(1)], 1
        )
        img = torch.where(hue_on > 0, _hsv_to_rgb(hsv).round().clamp(0.0, 255.0), img)
        return cls._gain_offset(img, alpha=contrast_last)


# ----------------------------------------------------------------------------------------------
# pipelines


class TrainTransform:
    """mmsegmentation's Cityscapes training pipeline.

    Call with ``(image, label)``: a PIL RGB image (or ``(H, W, 3)`` uint8 array / ``(3, H, W)``
    uint8 tensor) and a PIL 'L' label of trainIds (or ``(H, W)`` integer array/tensor).

    Returns:
        ``image`` float32 ``(3, crop_h, crop_w)``, normalised, zero where padded;
        ``label`` int64 ``(crop_h, crop_w)``, ``ignore_index`` where padded.

    The call is two halves that the trainer runs in two places:

    * :meth:`sample` (the DataLoader worker, under the sample's seed): every random draw, and
      the geometry on uint8 values. The crop window is drawn on the resized label, computed
      only inside the candidate windows (nearest neighbour); the image is resized whole
      (bilinear) and cropped to the window drawn.
    * :meth:`finish` (the training step, on the batch, on the GPU): photometric distortion with
      each sample's drawn parameters, normalisation, zero padding.
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
        self.flip_prob = flip_prob
        self.photometric = PhotoMetricDistortion() if photometric else None
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.ignore_index = ignore_index

    def __call__(self, image: ImageLike, label: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole pipeline on one pair (as a dataset's ``transforms``): :meth:`sample`, then
        :meth:`finish` of a batch of one."""
        img, lbl, params = self.sample(image, label)
        return self.finish(img[None], params[None])[0], lbl.long()

    def sample(
        self, image: ImageLike, label: ImageLike
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The random, geometric half: resize, crop (cat_max_ratio), flip; draw the colours.

        Returns:
            ``image`` uint8 ``(3, crop_h, crop_w)`` (zero where padded); ``label``
            ``(crop_h, crop_w)`` (uint8; int64 where values or the ignore index exceed 255;
            ``ignore_index`` where padded); ``params`` float32 ``(2 + P,)``: the valid height
            and width, then the :class:`PhotoMetricDistortion` parameters.
        """
        img, lbl = self._resized_crop(*self._tensors(image, label))
        if torch.rand(()).item() < self.flip_prob:
            img, lbl = img.flip(-1), lbl.flip(-1)
        colours = (
            self.photometric.sample_params()
            if self.photometric is not None
            else PhotoMetricDistortion.identity_params()
        )
        h, w = lbl.shape
        pad_h, pad_w = self.crop_size[0] - h, self.crop_size[1] - w
        if pad_h > 0 or pad_w > 0:
            img = torch.nn.functional.pad(img, (0, pad_w, 0, pad_h), value=0)
            lbl = torch.nn.functional.pad(lbl, (0, pad_w, 0, pad_h), value=self.ignore_index)
        params = torch.cat([torch.tensor([float(h), float(w)]), colours])
        return img.contiguous(), lbl.contiguous(), params

    def _tensors(self, image: ImageLike, label: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        """``(3, H, W)`` image and ``(H, W)`` label tensors; the label uint8 where its values
        and the ignore index fit (8x lighter to ship than int64), else int64."""
        img, lbl = _as_image(image), _as_label(label)
        _check_same_size(img, lbl)
        if self.ignore_index > 255:
            lbl = lbl.long()
        elif lbl.dtype != torch.uint8:
            fits = lbl.numel() > 0 and lbl.min() >= 0 and lbl.max() <= 255
            lbl = lbl.to(torch.uint8) if fits else lbl.long()
        return img, lbl

    def _resized_crop(
        self, image: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RandomResize, then RandomCrop's window of the resized pair."""
        height, width = image.shape[-2:]
        size = keep_ratio_size(height, width, self.resize.sample_scale())
        rows, cols = _nearest_source(height, size[0]), _nearest_source(width, size[1])

        def window_label(top: int, left: int, h: int, w: int) -> torch.Tensor:
            return _gather_2d(label, rows[top : top + h], cols[left : left + w])

        def is_balanced(*window: int) -> bool:
            return self.crop.is_balanced(window_label(*window))

        top, left, h, w = self.crop.sample_window(*size, is_balanced)
        # The whole image, with torchvision's SIMD uint8 kernel: faster than interpolating the
        # window alone in float32 (bench_loader.py).
        if (height, width) != size:
            image = _resize_bilinear(_interleaved(image), size)
        return image[..., top : top + h, left : left + w], window_label(top, left, h, w)

    def finish(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The pixel half, on a batch from :meth:`sample`, on any device.

        Args:
            images: ``(B, 3, crop_h, crop_w)`` uint8 (or float with integer values 0-255).
            params: ``(B, 2 + P)`` from :meth:`sample`.

        Returns:
            ``(B, 3, crop_h, crop_w)`` float32: distorted, normalised, zero outside each
            sample's valid region (padding comes after normalisation, as in mmseg).
        """
        params = params.to(images.device, torch.float32)
        out = images.float()
        if self.photometric is not None:
            out = self.photometric.apply(out, params[:, 2:])
        out = normalize(out, self.mean, self.std)
        ys = torch.arange(out.shape[-2], device=out.device).view(1, -1, 1)
        xs = torch.arange(out.shape[-1], device=out.device).view(1, 1, -1)
        valid = (ys < params[:, 0].view(-1, 1, 1)) & (xs < params[:, 1].view(-1, 1, 1))
        return out * valid.unsqueeze(1)


def preprocess_test_image(
    image: ImageLike,
    scale: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """The test-time preprocessing: what the model sees of an image at test time.

    mmsegmentation's Cityscapes ``test_pipeline`` and data preprocessor: the uint8 RGB image is
    resized, keeping its aspect ratio, to fit inside ``scale`` (:func:`keep_ratio_size`;
    bilinear without antialiasing, rounded back to 0-255 integers as OpenCV's uint8 resize
    is), then normalised with ``mean``/``std``. The resize runs in float32 on the image's
    device, the same arithmetic on every device (torchvision's uint8 kernel for the CPU would
    round differently from its CUDA path).

    Args:
        image: a PIL RGB image, an ``(H, W, 3)`` uint8 array or a ``(3, H, W)`` uint8 tensor.
        scale: ``(long, short)``, e.g. the preset's ``test_scale``; orientation does not matter.

    Returns:
        float32 ``(3, h, w)`` on the image's device, ``(h, w) = keep_ratio_size(H, W, scale)``.
    """
    img = _as_image(image)
    if img.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels (0-255), got {img.dtype}")
    pixels = img.float()
    size = keep_ratio_size(*pixels.shape[-2:], scale)
    if size != tuple(pixels.shape[-2:]):
        pixels = _resize_bilinear(pixels, size).round_().clamp_(0, 255)
    return normalize(pixels, mean, std)
