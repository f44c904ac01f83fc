"""emanet.fast.loss.upsampled_cross_entropy against autograd through interpolate +
cross_entropy (an independent reference), and against the plain loss of emanet.models.loss."""

import pytest
import torch
import torch.nn.functional as F

from emanet import build_model
from emanet.fast.loss import upsampled_cross_entropy


def reference(logits, labels, ignore_index=255, align_corners=False, avg_non_ignore=False):
    """The loss as mmseg writes it, differentiated by autograd (and autocast where active):
    per-pixel cross-entropy (0 where ignored), summed, over all pixels or the counted ones."""
    size = labels.shape[-2:]
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
    # float64 stays float64 (an exact reference); half precision goes to float32 as autocast does
    compute = torch.promote_types(logits.dtype, torch.float32)
    per_pixel = F.cross_entropy(
        logits.to(compute), labels, ignore_index=ignore_index, reduction="none"
    )
    if avg_non_ignore:
        return per_pixel.sum() / (labels != ignore_index).sum()
    return per_pixel.mean()


def value_and_grad(loss_fn, logits, labels, **kw):
    logits = logits.detach().clone().requires_grad_()
    loss = loss_fn(logits, labels, **kw)
    (2.5 * loss).backward()  # an upstream gradient other than 1 reaches the backward pass
    return loss.detach(), logits.grad


def batch(seed=0, size=(24, 40), stride=8, classes=5, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    height, width = size
    logits = 3 * torch.randn(2, classes, height // stride, width // stride, generator=gen)
    labels = torch.randint(0, classes, (2, height, width), generator=gen)
    labels[0, :5] = 255  # ignored rows
    labels[1, :, -7:] = 255
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    return logits.double(), labels


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("stride", [8, 1])  # upsampled, and already at the label size
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_same_loss_and_gradient_as_autograd(align_corners, stride, channels_last, avg_non_ignore):
    logits, labels = batch(stride=stride, channels_last=channels_last)
    kw = dict(ignore_index=255, align_corners=align_corners, avg_non_ignore=avg_non_ignore)
    loss, grad = value_and_grad(upsampled_cross_entropy, logits.float(), labels, **kw)
    expected_loss, expected_grad = value_and_grad(reference, logits, labels, **kw)
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-8)
    assert grad.dtype == torch.float32


def test_ignored_pixels_get_no_gradient_and_count_as_mmseg_counts_them():
    logits, labels = batch(stride=1)
    loss, grad = value_and_grad(upsampled_cross_entropy, logits, labels)
    ignored = (labels == 255).unsqueeze(1).expand_as(grad)
    assert grad[ignored].abs().max() == 0
    # mmseg (avg_non_ignore=False): the sum of -log p(label) over counted pixels / all pixels;
    # with avg_non_ignore, / counted pixels (F.cross_entropy's mean).
    log_probs = logits.log_softmax(1)
    picked = -log_probs.gather(1, labels.clamp(max=4).unsqueeze(1)).squeeze(1)[labels != 255]
    torch.testing.assert_close(loss.double(), picked.sum() / labels.numel(), rtol=1e-6, atol=0)
    counted = upsampled_cross_entropy(logits, labels, avg_non_ignore=True)
    torch.testing.assert_close(counted.double(), picked.mean(), rtol=1e-6, atol=0)
    assert 0 < (labels == 255).sum() and loss < counted  # ignored pixels lower the average


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_a_batch_with_nothing_to_count_has_loss_zero(avg_non_ignore):
    # F.cross_entropy's mean gives NaN here, which the trainer would take for divergence.
    logits, labels = batch()
    labels = torch.full_like(labels, 255)
    loss, grad = value_and_grad(
        upsampled_cross_entropy, logits, labels, avg_non_ignore=avg_non_ignore
    )
    assert loss == 0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_match_autocast_cross_entropy(dtype):
    # Under autocast the heads give bf16/fp16 logits; the reference upsamples them in that
    # dtype and takes the softmax in float32, and so must this loss.
    logits, labels = batch(seed=1)
    logits = logits.to(dtype)
    loss, grad = value_and_grad(upsampled_cross_entropy, logits, labels)
    expected_loss, expected_grad = value_and_grad(reference, logits, labels)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=1e-2, atol=1e-6)


def test_keeps_only_the_low_resolution_logits_for_backward():
    logits, labels = batch()
    logits = logits.float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        upsampled_cross_entropy(logits, labels)
    float_bytes = sum(t.numel() * t.element_size() for t in saved if t.is_floating_point())
    assert float_bytes == logits.numel() * 4  # not the (B, K, H, W) log-probabilities
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        reference(logits, labels)
    assert max(t.numel() for t in saved) == 2 * 5 * 24 * 40  # what autograd kept before


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"labels \(B, H, W\)"):
        upsampled_cross_entropy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 8, 8, dtype=torch.long))


def test_the_model_losses_use_it_with_the_same_gradients():
    torch.manual_seed(0)
    model = build_model("emanet_r18-d8_toycity").train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 19, (2, 64, 64))
    labels[:, :8] = 255
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)  # the same dropout masks in both passes
    model.forward_train(images, labels)["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.load_state_dict(state)  # running statistics as before
    model.zero_grad()
    torch.manual_seed(1)
    feats = model.backbone(images)
    decode = reference(model.decode_head(feats[3]), labels)
    aux = reference(model.auxiliary_head(feats[2]), labels)
    (decode + 0.4 * aux).backward()
    for name, param in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6)


def test_compiles_into_one_graph():
    # The compiled training step traces this Function, forward and backward.
    logits, labels = batch(seed=2)
    logits = logits.float().requires_grad_()
    compiled = torch.compile(upsampled_cross_entropy, backend="aot_eager", fullgraph=True)
    loss = compiled(logits, labels)
    loss.backward()
    expected_loss, expected_grad = value_and_grad(upsampled_cross_entropy, logits, labels)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(logits.grad, expected_grad / 2.5)  # no upstream factor here


def test_a_training_step_runs_on_the_meta_device():
    # FLOP counters run models on the meta device (shapes only), where torch.autocast refuses
    # the device type: the loss's float32 section must not ask for it there.
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model("emanet_r18-d8_toycity").train()
        images = torch.randn(2, 3, 64, 128)
        labels = torch.zeros(2, 64, 128, dtype=torch.long)
    with FlopCounterMode(display=False) as forward:
        model.forward_train(images, labels)
    with FlopCounterMode(display=False) as step:
        loss = model.forward_train(images, labels)["loss"]
        loss.backward()
    assert loss.device.type == "meta" and loss.shape == ()
    # Backward costs twice the forward products (input and weight gradients), less the stem's
    # input gradient and the EM unit, which has none.
    assert 2.5 < step.get_total_flops() / forward.get_total_flops() < 3.0
