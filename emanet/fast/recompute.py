"""Keep less for backward: BatchNorm -> ReLU outputs are recomputed instead of stored.

A training forward pass stores, for every ``conv -> BatchNorm -> ReLU -> conv`` in the
network, two full-size tensors: the BatchNorm's input (its backward needs it) and the ReLU's
output (the ReLU's backward and the next convolution's weight gradient need it). The second is
a cheap function of the first: ``relu(batch_norm(x))`` with the batch statistics of ``x``. In
R-50-D8 at a batch of two 512x1024 crops these outputs are 39 tensors, 203 million elements:
0.41 GB of the 2.5 GB a bf16 step keeps (the stem's three, the first two of every bottleneck's
three, the heads').

:class:`RecomputeNormReLU` stores a recipe in their place, through autograd's saved-tensor
hooks, and the backward pass recomputes each output once (one more pass over ``x``, elementwise
work, no convolution), when the first of its two users needs it. ``torch.compile`` makes this
trade itself, so the trainer uses this only in eager mode.

Only ``nn.BatchNorm2d`` in training mode qualifies: its batch statistics can be recomputed
from ``x`` alone, where SyncBatchNorm's would need another all-reduce. The ReLU must receive the
BatchNorm's output unmodified (so not the bottleneck's last ReLU, which follows the residual
addition); anything else is stored as usual.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RecomputeNormReLU"]


@dataclass(eq=False)
class _Recipe:
    """How to rebuild one ReLU output: ``relu(batch_norm(norm_input))``."""

    norm_input: torch.Tensor
    norm: nn.BatchNorm2d
    output: weakref.ref
    version: int
    uses: int = 0  # saved-tensor slots holding this recipe, released as backward reads them
    value: torch.Tensor | None = field(default=None, repr=False)

    def matches(self, tensor: torch.Tensor) -> bool:
        output = self.output()
        return (
            output is not None
            and tensor._version == self.version
            and tensor.shape == output.shape
            and tensor.stride() == output.stride()
            and tensor.storage_offset() == output.storage_offset()
            and tensor.dtype == output.dtype
        )

    def rebuild(self) -> torch.Tensor:
        if self.value is None:
            norm = self.norm
            # Batch statistics again (training=True, no running statistics to update).
            normed = F.batch_norm(
                self.norm_input, None, None, norm.weight, norm.bias, True, 0.0, norm.eps
            )
            self.value = F.relu_(normed)
        value = self.value
        self.uses -= 1
        if self.uses <= 0:
            self.value = None  # the last reader has it: free the recomputed tensor with it
        return value


class RecomputeNormReLU:
    """Context manager around a training forward pass of ``model``: the outputs of its
    ``BatchNorm2d -> ReLU`` pairs are recomputed in the backward pass instead of stored.

    Gradients are those of the plain forward pass (up to the rounding of recomputing the
    batch statistics); parameters, running statistics and outputs are untouched.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list = []
        self._saved_tensor_hooks = None
        self._last_norm: tuple[weakref.ref, int, torch.Tensor, nn.BatchNorm2d] | None = None
        self._pending: tuple[torch.Tensor, nn.BatchNorm2d] | None = None
        self._recipes: dict[int, _Recipe] = {}

    def __enter__(self) -> RecomputeNormReLU:
        for module in self.model.modules():
            if type(module) is nn.BatchNorm2d:  # not SyncBatchNorm (see the module docstring)
                self._handles.append(module.register_forward_hook(self._after_norm))
            elif isinstance(module, nn.ReLU):
                self._handles.append(module.register_forward_pre_hook(self._before_relu))
                self._handles.append(module.register_forward_hook(self._after_relu))
        self._saved_tensor_hooks = torch.autograd.graph.saved_tensors_hooks(
            self._pack, self._unpack
        )
        self._saved_tensor_hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._saved_tensor_hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        # Recipes stay alive through the graph's saved slots; the lookup tables go.
        self._recipes.clear()
        self._last_norm = self._pending = None

    def _after_norm(self, norm: nn.BatchNorm2d, args: tuple, output: torch.Tensor) -> None:
        if norm.training and torch.is_grad_enabled():
            self._last_norm = (weakref.ref(output), output._version, args[0], norm)
        else:
            self._last_norm = None

    def _before_relu(self, relu: nn.ReLU, args: tuple) -> None:
        self._pending = None
        if self._last_norm is None:
            return
        output, version, norm_input, norm = self._last_norm
        if output() is args[0] and args[0]._version == version:  # the BatchNorm's output as is
            self._pending = (norm_input, norm)

    def _after_relu(self, relu: nn.ReLU, args: tuple, output: torch.Tensor) -> None:
        # The ReLU saved its output while it ran (see _pack); later users (the convolution)
        # find the recipe by the output's storage.
        if self._pending is not None:
            recipe = self._recipe_for(output)
            self._recipes[output.untyped_storage().data_ptr()] = recipe
        self._pending = self._last_norm = None

    def _recipe_for(self, output: torch.Tensor) -> _Recipe:
        existing = self._recipes.get(output.untyped_storage().data_ptr())
        if existing is not None and existing.matches(output):
            return existing
        norm_input, norm = self._pending
        return _Recipe(norm_input, norm, weakref.ref(output), output._version)

    def _pack(self, tensor: torch.Tensor):
        if self._pending is not None:  # inside a qualifying ReLU: what it saves is its output
            recipe = self._recipe_for(tensor)
            self._recipes[tensor.untyped_storage().data_ptr()] = recipe
        elif not self._recipes:
            return tensor
        else:
            recipe = self._recipes.get(tensor.untyped_storage().data_ptr())
            if recipe is None or not recipe.matches(tensor):
                return tensor
        recipe.uses += 1
        return recipe

    @staticmethod
    def _unpack(packed):
        return packed.rebuild() if isinstance(packed, _Recipe) else packed
