"""The heads' building blocks: the convolution of a concatenation computed without it."""

import torch

from emanet.fast.fusion import fold_batchnorm
from emanet.models.heads import ConvModule
from tests.models.test_segmentor import randomise_bn


def test_conv_of_a_concatenation_without_building_it():

    torch.manual_seed(0)
    module = randomise_bn(ConvModule(12, 8, 3, padding=1)).double().train()
    parts = [
        torch.randn(2, channels, 6, 7, dtype=torch.float64, requires_grad=True)
        for channels in (10, 2)
    ]
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = module.forward_concat(parts)
    expected = module(torch.cat(parts, dim=1))
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
    assert (2, 12, 6, 7) not in saved  # the concatenated input is never stored for backward
    # the same gradients for the weights and for each part
    grads = torch.autograd.grad(result.square().sum(), [module.conv.weight, *parts])
    grads_expected = torch.autograd.grad(expected.square().sum(), [module.conv.weight, *parts])
    for a, b in zip(grads, grads_expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # after BatchNorm folding (the eval copies of emanet.fast.fusion) the bias is added once

    folded = fold_batchnorm(module.eval())
    with torch.no_grad():
        torch.testing.assert_close(
            folded.forward_concat(parts), folded(torch.cat(parts, dim=1)), rtol=1e-10, atol=1e-10
        )
