"""What a model costs: parameters and FLOPs at a preset's test setting, the EM unit on its own,
what non-local attention would cost in its place, and the FLOPs of a training iteration.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which sees every matrix
product and convolution a pass runs, backward too (2 FLOPs per multiply-accumulate; element-wise
work such as BatchNorm, ReLU, softmax and normalisation is not counted, and neither is a bias).
Models are built and run on the ``meta`` device: shapes only, no memory and no arithmetic, so an
R-101 at 1025x2049 with eight slide windows is counted in seconds on a laptop.

The EM unit with ``K`` bases, ``T`` iterations, ``C`` channels and ``N`` pixels costs
``(4T + 2)·N·C·K``: each iteration two ``N×C×K`` products (E-step ``Xᵀ mu``, M-step ``X Z``), and
the reconstruction ``mu Zᵀ`` one more. Non-local attention on the same ``(C, N)`` feature map,
``softmax(XᵀX) X`` (the embedded-Gaussian form without its 1x1 projections, as in the first
tutorial) costs ``4·N²·C``: quadratic in the pixels where EM is linear.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from emanet.data.transforms import test_input_size
from emanet.models.presets import ModelPreset, get_preset
from emanet.models.segmentor import build_model, slide_windows

__all__ = [
    "FlopCount",
    "ModelCost",
    "count_flops",
    "format_costs",
    "model_cost",
    "non_local_attention",
    "training_flops",
]


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call.

    Attributes:
        total: every counted FLOP of the call.
        by_module: FLOPs inside each submodule of the root module, keyed by the names of
            ``named_modules()`` (the root is ``""``); a module called several times (slide
            windows) holds the sum of its calls.
    """

    total: int
    by_module: dict[str, int]


def count_flops(fn: Callable[..., object], *args, root: nn.Module | None = None, **kwargs):
    """Run ``fn(*args, **kwargs)`` under ``FlopCounterMode`` and return a :class:`FlopCount`.

    ``fn`` is a module or any callable (e.g. ``model.inference``); ``root`` is the module whose
    submodule names key ``by_module`` (default: ``fn`` itself when it is a module, else
    ``fn.__self__``).
    """
    if root is None:
        root = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args, **kwargs)
    by_module = {}
    if isinstance(root, nn.Module):
        # FlopCounterMode names a module "<RootClass>.<dotted path>"; drop the class prefix.
        prefix = type(root).__name__
        counts = counter.get_flop_counts()
        for name, _ in root.named_modules():
            key = f"{prefix}.{name}" if name else prefix
            if key in counts:
                by_module[name] = int(sum(counts[key].values()))
    return FlopCount(total=int(counter.get_total_flops()), by_module=by_module)


def non_local_attention(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, H, W)``: ``softmax(XᵀX) X``, the ``N × N`` attention of non-local
    networks on the pixels of ``x`` (no 1x1 projections)."""
    batch, channels, height, width = x.shape
    flat = x.reshape(batch, channels, height * width)
    attention = torch.softmax(flat.transpose(1, 2) @ flat, dim=-1)  # (B, N, N)
    return (flat @ attention.transpose(1, 2)).reshape(batch, channels, height, width)


@dataclass(frozen=True)
class ModelCost:
    """Cost of one image at a preset's test setting (see :func:`model_cost`).

    Attributes:
        preset: the preset's name.
        input_size: ``(H, W)`` the image is run at (after the test resize).
        mode: ``"whole"`` or ``"slide"``.
        windows: forward passes per image (1 in whole mode).
        feature_size: ``(h, w)`` of the EM unit's feature map in one forward pass (the last
            window's in slide mode).
        parameters: parameters of the network that runs at test time (the auxiliary head,
            used in training only, excluded).
        flops: every counted FLOP of the image, EM unit included.
        em_flops: the EM unit's share of ``flops``.
        non_local_flops: non-local attention on the same feature maps (as many windows).
    """

    preset: str
    input_size: tuple[int, int]
    mode: str
    windows: int
    feature_size: tuple[int, int]
    parameters: int
    flops: int
    em_flops: int
    non_local_flops: int


def model_cost(
    preset: str | ModelPreset,
    image_size: tuple[int, int] | None = None,
    mode: str | None = None,
) -> ModelCost:
    """Parameters and FLOPs of a preset for one image, counted on the ``meta`` device.

    Args:
        preset: a preset or its name.
        image_size: ``(H, W)`` the model is run at; default
            :func:`~emanet.data.transforms.test_input_size` of the preset's test scale (a
            Cityscapes frame after the test resize).
        mode: ``"whole"`` or ``"slide"``; default the preset's test mode.
    """
    preset = get_preset(preset)
    mode = mode or preset.test_mode
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    height, width = image_size or test_input_size(preset.test_scale)
    # Slide mode runs the network once per window and adds up logits (no counted FLOPs), so
    # each distinct window size is counted once and multiplied: the same total as counting
    # model.inference(mode="slide"), several times faster.
    if mode == "slide":
        sizes = [(y2 - y1, x2 - x1) for y1, y2, x1, x2 in _windows(preset, height, width)]
    else:
        sizes = [(height, width)]
    with torch.device("meta"):
        model = build_model(preset).eval()
    flops, em_flops, non_local, feature_size = _count_passes(model, Counter(sizes))
    test_parameters = sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith("auxiliary_head.")
    )
    return ModelCost(
        preset=preset.name,
        input_size=(height, width),
        mode=mode,
        windows=len(sizes),
        feature_size=feature_size,
        parameters=test_parameters,
        flops=flops,
        em_flops=em_flops,
        non_local_flops=non_local,
    )


def _count_passes(model: nn.Module, passes: Counter) -> tuple[int, int, int, tuple[int, int]]:
    """FLOPs of ``model``'s forward passes (``passes``: input ``(h, w)`` -> how many times):
    ``(all, EM unit, non-local attention in its place, the unit's last feature size)``."""
    unit = model.em_unit
    unit_name = next(name for name, module in model.named_modules() if module is unit)
    unit_inputs: list[torch.Size] = []
    hook = unit.register_forward_pre_hook(lambda _, args: unit_inputs.append(args[0].shape))
    flops = em_flops = non_local = 0
    try:
        for (height, width), times in passes.items():
            counted = count_flops(model, torch.empty(1, 3, height, width, device="meta"))
            flops += times * counted.total
            em_flops += times * counted.by_module.get(unit_name, 0)
            feats = torch.empty(unit_inputs[-1], device="meta")
            non_local += times * count_flops(non_local_attention, feats).total
    finally:
        hook.remove()
    return flops, em_flops, non_local, tuple(unit_inputs[-1][-2:])


def training_flops(
    preset: str | ModelPreset, batch_size: int = 2, crop_size: tuple[int, int] | None = None
) -> int:
    """FLOPs of one training iteration: ``forward_train`` (both heads and their losses) and its
    backward pass, on ``batch_size`` crops of ``crop_size`` (default: the preset's, mmseg's
    training crop), counted on the ``meta`` device. The SGD update (elementwise) is not counted.
    """
    preset = get_preset(preset)
    height, width = crop_size or preset.crop_size
    with torch.device("meta"):
        model = build_model(preset).train()
        images = torch.empty(batch_size, 3, height, width)
        labels = torch.zeros(batch_size, height, width, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        model.forward_train(images, labels)["loss"].backward()
    return int(counter.get_total_flops())


def _windows(preset: ModelPreset, height: int, width: int):
    return slide_windows(height, width, preset.crop_size, preset.slide_stride)


def format_costs(costs: list[ModelCost]) -> str:
    """A text table of :class:`ModelCost` rows (parameters in millions, GFLOPs = 1e9 FLOPs)."""
    header = (
        f"{'preset':40s} {'input':>9s} {'mode':>5s} {'win':>3s} {'feat':>7s} "
        f"{'params(M)':>9s} {'GFLOPs':>8s} {'EM unit':>8s} {'non-local':>10s}"
    )
    lines = [header, "-" * len(header)]
    for c in costs:
        lines.append(
            f"{c.preset:40s} {c.input_size[0]:>4d}x{c.input_size[1]:<4d} {c.mode:>5s} "
            f"{c.windows:>3d} {c.feature_size[0]:>3d}x{c.feature_size[1]:<3d} "
            f"{c.parameters / 1e6:9.2f} {c.flops / 1e9:8.1f} {c.em_flops / 1e9:8.2f} "
            f"{c.non_local_flops / 1e9:10.1f}"
        )
    lines.append(
        "GFLOPs: one image at the test setting (2 FLOPs per multiply-add), EM unit included; "
        "'EM unit': its share; 'non-local': softmax(X^T X) X on the same feature maps instead."
    )
    return "\n".join(lines)
