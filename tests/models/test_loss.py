"""The plain segmentation loss against an independent reference, and the switch between it and
the memory-saving loss the trainer runs."""

import pytest
import torch

from emanet import build_model
from emanet.fast.loss import upsampled_cross_entropy
from emanet.models.loss import segmentation_loss
from tests.fast.test_loss import batch, reference, value_and_grad


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_plain_loss_is_mmsegs_loss(align_corners, avg_non_ignore):
    logits, labels = batch(seed=4)
    options = dict(align_corners=align_corners, avg_non_ignore=avg_non_ignore)
    loss, grad = value_and_grad(segmentation_loss, logits, labels, **options)
    expected_loss, expected_grad = value_and_grad(reference, logits, labels, **options)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    # the memory-saving loss computes the same value and gradient (its softmax in float32)
    fast_loss, fast_grad = value_and_grad(upsampled_cross_entropy, logits, labels, **options)
    torch.testing.assert_close(fast_loss.double(), loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fast_grad, grad, rtol=1e-5, atol=1e-8)


def test_nothing_to_count_is_loss_zero():
    logits, labels = batch(seed=5)
    labels.fill_(255)
    for average in (False, True):
        assert segmentation_loss(logits, labels, avg_non_ignore=average).item() == 0.0


def test_the_model_switches_between_the_two_losses_with_the_same_gradients():
    torch.manual_seed(0)
    model = build_model("emanet_r18-d8_toycity").double().train()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    labels = torch.randint(0, 19, (2, 64, 64))
    labels[:, :8] = 255
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {}
    for memory_saving in (True, False):
        model.load_state_dict(state)
        model.zero_grad()
        model.memory_saving_loss = memory_saving
        torch.manual_seed(1)  # the same dropout masks
        model.forward_train(images, labels)["loss"].backward()
        grads[memory_saving] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[True].items():
        torch.testing.assert_close(grad, grads[False][name], rtol=1e-5, atol=1e-8)
