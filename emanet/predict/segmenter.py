"""``Segmenter``: any image in, Cityscapes trainId labels (and the EM trace) out.

The test pipeline is mmsegmentation's: the upright RGB image goes through
:func:`~emanet.data.transforms.preprocess_test_image` (resized, keeping its aspect ratio, to fit
the preset's test scale, 2048x1024 for the official models; normalised with the ImageNet
mean/std on 0-255 values), is segmented in the preset's whole or slide mode, and the logits are
resized back to the image's own size before the argmax. Validation during training and
``emanet eval`` run images through a Segmenter too, so all three score the same pixels.

The network itself runs in PyTorch (``backend="torch"``) or, on the CPU, in onnxruntime from an
ONNX graph exported once into a cache (``backend="onnxruntime"``, :mod:`emanet.predict.ort`);
the pipeline around it is the same.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from emanet.data.cityscapes import CLASSES, PALETTE, palette_lut
from emanet.data.formats import class_names
from emanet.data.transforms import preprocess_test_image
from emanet.fast.fusion import optimize_for_inference
from emanet.io.checkpoint import Checkpoint, read_checkpoint
from emanet.io.hub import BUNDLED_CHECKPOINT, MODEL_ZOO, CheckpointError, resolve_checkpoint
from emanet.io.images import load_image
from emanet.models.ema import EMTrace
from emanet.models.heads import resize_logits
from emanet.models.presets import PRESETS, ModelPreset, get_preset
from emanet.models.segmentor import EMANet, build_model
from emanet.runtime.backends import DEFAULT_BACKEND, check_backend, import_onnxruntime
from emanet.runtime.device import announce_compilation, compile_module, resolve_device
from emanet.runtime.precision import DEFAULT_PRECISION, PRECISIONS, autocast, check_precision

from .int8 import Calibration, folder_calibration, toycity_calibration
from .ort import OnnxRuntimeNet

__all__ = ["Prediction", "Segmenter", "class_labels"]

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """The result of :class:`Segmenter` on one image.

    Attributes:
        image: the upright RGB image that was segmented (PIL).
        labels: ``(H, W)`` uint8 trainIds at the image's size.
        probabilities: ``(classes, H, W)`` float32 softmax scores, if requested.
        trace: the EM trace (responsibilities ``(1, K, h, w)`` at the feature resolution and
            bases ``(1, C, K)`` per iteration), if requested.
        input_size: ``(h, w)`` the model's input after the test resize.
    """

    image: Image.Image
    labels: np.ndarray
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    input_size: tuple[int, int]
    probabilities: np.ndarray | None = None
    trace: EMTrace | None = None

    def color_mask(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 colour image of the labels (ignore/unknown -> black)."""
        return palette_lut(self.palette)[self.labels]

    def overlay(self, opacity: float = 0.5) -> np.ndarray:
        """``(H, W, 3)`` uint8 blend of the image and the colour mask."""
        image = np.asarray(self.image, dtype=np.float32)
        blend = (1.0 - opacity) * image + opacity * self.color_mask().astype(np.float32)
        return np.clip(blend + 0.5, 0, 255).astype(np.uint8)

    def class_areas(self) -> dict[str, float]:
        """Share of the image (0-1) per class present, largest first."""
        counts = np.bincount(self.labels.ravel(), minlength=256)[: len(self.classes)]
        total = self.labels.size
        areas = {self.classes[i]: counts[i] / total for i in np.argsort(-counts) if counts[i]}
        return areas


class Segmenter:
    """Callable wrapper of an :class:`EMANet` for images of any kind.

    Args:
        model: the network (its weights loaded).
        classes, palette: class names and colours in trainId order.
        device: where to run (default: CUDA if available, else CPU); ``"cuda"`` is the current
            GPU (see :func:`emanet.runtime.device.resolve_device`).
        fast: run an eval copy with BatchNorm folded and channels_last (same labels); in
            bf16/fp16 its convolution weights are stored in that dtype, and on CUDA its 1x1
            convolutions are run as matrix products with fused bias (see
            :mod:`emanet.fast.fusion`).
        precision: ``"fp32"`` (:data:`DEFAULT_PRECISION`), ``"bf16"`` or ``"fp16"`` autocast
            (see :mod:`emanet.runtime.precision`); a precision the device cannot run is a
            ValueError.
        compile: run the network through ``torch.compile`` (the first call compiles, and says
            so in the log).
        test_scale: ``(long, short)`` scale images are fitted into (default: the preset's).
        backend: what runs the network: ``"torch"`` (:data:`~emanet.runtime.backends.
            DEFAULT_BACKEND`) or ``"onnxruntime"`` (the CPU; the network exported to ONNX on
            first use into a cache and reused, see :mod:`emanet.predict.ort`; precision
            ``"fp32"`` or ``"int8"``; needs the ``export`` extra). Both give the same labels,
            trace and options; ``fast`` and ``compile`` are the torch backend's.
        calibration: images of the model's domain that ``"int8"`` is calibrated on: a folder,
            or a :class:`~emanet.predict.int8.Calibration` (needed for int8).
    """

    def __init__(
        self,
        model: EMANet,
        classes=CLASSES,
        palette=PALETTE,
        device: str | torch.device | None = None,
        fast: bool = True,
        precision: str = DEFAULT_PRECISION,
        compile: bool = False,
        test_scale: Sequence[int] | None = None,
        backend: str = DEFAULT_BACKEND,
        calibration: str | os.PathLike[str] | Calibration | None = None,
    ) -> None:
        self.backend = backend
        self.device = resolve_device(
            "cpu" if device is None and backend == "onnxruntime" else device
        )
        self.precision = precision
        check_backend(backend, self.device, precision, compile)
        if backend == "torch":
            check_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.preset: ModelPreset = model.preset
        self.test_scale = tuple(test_scale or self.preset.test_scale)
        self.classes = tuple(classes)
        self.palette = tuple(tuple(int(v) for v in c) for c in palette)
        self.fast = fast and backend == "torch"
        self.compile = compile
        self._compile_announced = False
        if backend == "onnxruntime":
            import_onnxruntime()
            if isinstance(calibration, (str, os.PathLike)):
                calibration = folder_calibration(calibration)
            self._net = OnnxRuntimeNet(
                self.model, precision, calibration, self.preprocess, self.test_scale
            )
        else:
            self._net = self._torch_net()

    def _torch_net(self) -> EMANet:
        """The network the torch backend runs: ``model``, or a BN-folded copy (``fast``),
        compiled if asked."""
        if self.fast:
            # Half-precision weights where autocast would cast them at every call (same logits);
            # on CUDA, 1x1 convolutions as products with the bias in cuBLASLt's epilogue (see
            # emanet.fast.fusion), unless torch.compile fuses the bias passes itself.
            half = PRECISIONS[self.precision] if self.precision != "fp32" else None
            net = optimize_for_inference(
                self.model,
                autocast_dtype=half,
                pointwise_products=half is not None
                and self.device.type == "cuda"
                and not self.compile,
            )
        else:
            net = self.model
        if self.compile:
            # Compiled in place: a copy, so that the caller's model stays as it was.
            if net is self.model:
                net = copy.deepcopy(self.model)
            compile_module(net)
        return net

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] | None = None,
        preset: str | ModelPreset | None = None,
        device: str | torch.device | None = None,
        fast: bool = True,
        progress: bool = True,
        precision: str = DEFAULT_PRECISION,
        compile: bool = False,
        test_scale: Sequence[int] | None = None,
        backend: str = DEFAULT_BACKEND,
        calibration: str | os.PathLike[str] | Calibration | None = None,
    ) -> Segmenter:
        """Load a model by zoo name, URL, our checkpoint or an mmsegmentation checkpoint.

        ``None`` loads the bundled small model (offline). A zoo name (an mmsegmentation config
        name, see :data:`emanet.PRESETS`) downloads the official weights once into torch.hub's
        cache. For files, our format names its preset; for mmsegmentation files give
        ``preset`` (otherwise it is inferred from the depth, with the 512x1024 test settings).
        ``device``, ``fast``, ``precision``, ``compile``, ``backend`` and ``calibration`` are
        :class:`Segmenter`'s; int8 calibrates the bundled model on toy-city scenes
        (:func:`~emanet.predict.int8.toycity_calibration`) unless told otherwise. The file is
        read once; its class names and palette (checked when it is read) come with the model,
        else the Cityscapes ones, and so does its test scale: the one our checkpoints record
        (the scale their training validated at), else the preset's; ``test_scale`` overrides it.
        """
        options = dict(device=device, fast=fast, precision=precision, compile=compile)
        if name_or_path is None:
            if not BUNDLED_CHECKPOINT.is_file():
                raise CheckpointError(
                    f"the bundled model {BUNDLED_CHECKPOINT} is missing from this installation"
                )
            name_or_path = BUNDLED_CHECKPOINT
            calibration = calibration or toycity_calibration()
        options.update(backend=backend, calibration=calibration)
        if preset is None and str(name_or_path) in MODEL_ZOO:
            preset = str(name_or_path)
        checkpoint = read_checkpoint(resolve_checkpoint(name_or_path, progress=progress))
        model = build_model(
            get_preset(preset or checkpoint.preset or _infer_preset(checkpoint)),
            num_classes=checkpoint.num_classes,
        )
        checkpoint.load_into(model)
        test_scale = test_scale or checkpoint.test_scale
        classes_palette = _classes_palette(checkpoint, model.num_classes)
        return cls(model, *classes_palette, test_scale=test_scale, **options)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Upright RGB PIL image -> ``(1, 3, h, w)`` model input on the device.

        :func:`~emanet.data.transforms.preprocess_test_image` at :attr:`test_scale`, run on
        the device (the uint8 pixels travel, not floats).
        """
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        x = preprocess_test_image(pixels.to(self.device), self.test_scale).unsqueeze(0)
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def infer(self, x: torch.Tensor, **options) -> torch.Tensor:
        """The network on a :meth:`preprocess`-ed batch, in this segmenter's precision (and
        compiled, if asked): ``(B, 3, h, w) -> (B, classes, h, w)`` logits.

        ``options`` are :meth:`EMANet.inference`'s (``mode``, ``num_iterations``, ``trace``,
        ``aug_test``, ``inverse_temperature``).
        """
        if self.compile and not self._compile_announced:
            announce_compilation(f"{self.preset.name} for {self.device}")
            self._compile_announced = True
        if self.backend != "torch":  # onnxruntime runs its graph's own precision
            return self._net.inference(x, **options)
        with autocast(self.precision, self.device):
            return self._net.inference(x, **options)

    def _at_size(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(B, classes, h, w)`` logits resized to the image's ``size`` in float32, as the model
        resizes its own (the argmax of the result is the labels)."""
        return resize_logits(logits.float(), size, self.preset.align_corners)

    @torch.inference_mode()
    def __call__(
        self,
        image,
        trace: bool = False,
        num_iterations: int | None = None,
        aug_test: bool = False,
        mode: str | None = None,
        return_probabilities: bool = False,
        max_size: int | None = None,
        inverse_temperature: float | None = None,
    ) -> Prediction:
        """Segment one image (path, bytes, PIL image or array of any mode).

        Args:
            trace: record every EM iteration's responsibilities and bases.
            num_iterations: EM iterations at test time (default: the trained number).
            aug_test: multi-scale + flip test (the model card's ms+flip).
            mode: ``"whole"`` or ``"slide"`` (default: the preset's).
            max_size: shrink the image first so that its longer side is at most this.
            inverse_temperature: the EM unit's ``lambda`` for this call (default: the model's
                own; see :class:`emanet.EMAttention`).
        """
        picture = load_image(image)
        if max_size is not None and max(picture.size) > max_size:
            factor = max_size / max(picture.size)
            new = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
            picture = picture.resize(new, Image.BILINEAR)
        x = self.preprocess(picture)
        em_trace = EMTrace() if trace else None
        logits = self.infer(
            x,
            mode=mode,
            num_iterations=num_iterations,
            trace=em_trace,
            aug_test=aug_test,
            inverse_temperature=inverse_temperature,
        )
        logits = self._at_size(logits, (picture.height, picture.width))
        labels = class_labels(logits)[0]
        probabilities = None
        if return_probabilities:
            probabilities = logits.softmax(dim=1)[0].cpu().numpy()
        if em_trace is not None:
            em_trace = _trace_to_cpu(em_trace)
        return Prediction(
            image=picture,
            labels=labels,
            classes=self.classes,
            palette=self.palette,
            input_size=tuple(x.shape[-2:]),
            probabilities=probabilities,
            trace=em_trace,
        )

    @torch.inference_mode()
    def predict_batch(
        self,
        images,
        num_iterations: int | None = None,
        aug_test: bool = False,
        mode: str | None = None,
        inverse_temperature: float | None = None,
    ) -> list[Prediction]:
        """Segment several images of the same size in one forward pass.

        Same pipeline and options as :meth:`__call__` (without the trace); on a GPU a batch
        keeps the device busier than one image at a time, and each image's labels match
        :meth:`__call__`'s (batch members never interact).

        Args:
            images: a sequence of paths, bytes, PIL images or arrays, all of the same size
                once loaded (upright); an empty sequence gives ``[]``.

        Raises:
            ValueError: the images' sizes differ.
            ImageLoadError: an image cannot be loaded (the message names it).
        """
        pictures = [load_image(image) for image in images]
        if not pictures:
            return []
        sizes = sorted({picture.size for picture in pictures})
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h}" for w, h in sizes)
            raise ValueError(f"predict_batch needs images of one size, got {listed} (W x H)")
        x = torch.cat([self.preprocess(picture) for picture in pictures])
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.infer(
            x,
            mode=mode,
            num_iterations=num_iterations,
            aug_test=aug_test,
            inverse_temperature=inverse_temperature,
        )
        logits = self._at_size(logits, (pictures[0].height, pictures[0].width))
        labels = class_labels(logits)
        return [
            Prediction(
                image=picture,
                labels=labels[index],
                classes=self.classes,
                palette=self.palette,
                input_size=tuple(x.shape[-2:]),
            )
            for index, picture in enumerate(pictures)
        ]


def class_labels(logits: torch.Tensor) -> np.ndarray:
    """``(B, num_classes, H, W)`` logits -> ``(B, H, W)`` uint8 class ids: the index of each
    pixel's largest logit (the first one on a tie, as ``argmax``). ``max(dim=1)`` rather than
    ``argmax(dim=1)``: on a CPU, argmax over the strided class axis is several times slower than
    max's indices, which give the same ids."""
    return logits.max(dim=1).indices.to(torch.uint8).cpu().numpy()


def _trace_to_cpu(trace: EMTrace) -> EMTrace:
    def cpu(tensor):
        return None if tensor is None else tensor.float().cpu()

    return EMTrace(
        responsibilities=[cpu(r) for r in trace.responsibilities],
        bases=[cpu(b) for b in trace.bases],
        initial_bases=cpu(trace.initial_bases),
        features=cpu(trace.features),
    )


def _classes_palette(
    checkpoint: Checkpoint, num_classes: int
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The checkpoint's class names and palette where they fit its ``num_classes`` outputs
    (else the Cityscapes ones for 19, generic ones otherwise: see
    :func:`emanet.data.formats.class_names`)."""
    return class_names(num_classes, checkpoint.classes, checkpoint.palette, str(checkpoint.path))


def _infer_preset(checkpoint: Checkpoint) -> str:
    """The 512x1024 preset of the depth an mmsegmentation state dict was trained with."""
    path = checkpoint.path
    stage3 = {k.split(".")[2] for k in checkpoint.state_dict if k.startswith("backbone.layer3.")}
    depth = {6: 50, 23: 101}.get(len(stage3))
    name = f"emanet_r{depth}-d8_512x1024_80k_cityscapes"
    if name not in PRESETS:
        raise CheckpointError(
            f"{path}: cannot tell which preset this checkpoint needs; pass preset=... "
            f"(one of {', '.join(PRESETS)})"
        )
    log.info("%s: no preset recorded, using %s", path, name)
    return name
