"""emanet.fast.recompute: BatchNorm -> ReLU outputs are rebuilt in backward, not stored."""

import contextlib
import weakref

import pytest
import torch
from torch import nn

from emanet import build_model
from emanet.data.transforms import TrainTransform
from emanet.fast.recompute import RecomputeNormReLU
from emanet.training.config import TrainConfig
from emanet.training.loop import TrainStep, train_step, wrap_for_training
from emanet.training.run import Run


def toy_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=gen)
    labels = torch.randint(0, 19, (2, 64, 64), generator=gen)
    labels[:, :6] = 255
    return images, labels


def losses_grads_state(model, context, precision="fp32"):
    torch.manual_seed(1)  # the heads' dropout masks
    images, labels = toy_batch()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with context, autocast:
        loss = model.forward_train(images, labels)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return loss.detach(), grads, state


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_loss_gradients_and_statistics(precision, channels_last):
    torch.manual_seed(0)
    model = build_model("emanet_r18-d8_toycity").train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    plain = losses_grads_state(model, contextlib.nullcontext(), precision)
    model.load_state_dict(start)
    model.zero_grad()
    recomputed = losses_grads_state(model, RecomputeNormReLU(model), precision)
    torch.testing.assert_close(recomputed[0], plain[0], rtol=0, atol=0)
    assert recomputed[1].keys() == plain[1].keys()
    for name, grad in plain[1].items():
        torch.testing.assert_close(recomputed[1][name], grad, rtol=1e-5, atol=1e-7)
    for key, value in plain[2].items():  # running statistics updated once, as usual
        assert torch.equal(recomputed[2][key], value), key


def relu_outputs(model):
    """Weak references to every ReLU output of a forward pass, with the ReLU's position
    (after a BatchNorm as is, or after the residual addition)."""
    outputs = []

    def keep(module, args, output):
        outputs.append(weakref.ref(output))

    handles = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.ReLU)]
    return outputs, handles


def test_the_graph_no_longer_keeps_norm_relu_outputs_alive():
    torch.manual_seed(0)
    model = build_model("emanet_r18-d8_toycity").train()
    images, labels = toy_batch()
    alive = {}
    for name, context in [("plain", contextlib.nullcontext()), ("recompute", None)]:
        outputs, handles = relu_outputs(model)
        with context if context is not None else RecomputeNormReLU(model):
            loss = model.forward_train(images, labels)["loss"]
        for handle in handles:
            handle.remove()
        alive[name] = sum(ref() is not None for ref in outputs)
        assert loss.grad_fn is not None
        loss.backward()
        del loss
    # With it, the only ReLU outputs stored are the residual blocks' last (after the addition,
    # not a BatchNorm's output as is); the stem's three, the blocks' first and the heads' go.
    blocks = sum(1 for m in model.backbone.modules() if type(m).__name__.endswith("BasicBlock"))
    assert alive["plain"] >= 2 * blocks + 3
    assert alive["recompute"] == blocks


def test_rebuilt_once_for_its_two_readers():
    torch.manual_seed(0)
    norm, relu, conv = nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 3, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm, relu, conv)
    x = torch.randn(2, 2, 8, 8)
    calls = []
    real = torch.nn.functional.batch_norm

    def counting_batch_norm(*args, **kwargs):
        calls.append(args[1] is None)  # the rebuild passes no running statistics
        return real(*args, **kwargs)

    with RecomputeNormReLU(net):
        out = net(x).square().sum()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "batch_norm", counting_batch_norm)
        out.backward()
    assert calls == [True]  # one rebuild, read by conv's and the ReLU's backward


def test_eval_mode_norms_and_no_grad_are_left_alone():
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4).eval()  # frozen statistics: not a batch-statistics recipe
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(4, 3, 1))
    outputs, handles = relu_outputs(net)
    with RecomputeNormReLU(net):
        out = net(torch.randn(2, 2, 8, 8)).sum()
    assert outputs[0]() is not None  # stored as usual
    out.backward()
    with RecomputeNormReLU(net.train()), torch.no_grad():
        net(torch.randn(2, 2, 8, 8))  # nothing to store, nothing to do
    for handle in handles:
        handle.remove()
    assert not net[1]._forward_hooks and not net[2]._forward_pre_hooks  # hooks removed


def test_train_step_recomputes_only_in_eager_runs():
    model = build_model("emanet_r18-d8_toycity")
    run = Run(rank=0, world=1, device=torch.device("cpu"), precision="fp32")
    base = dict(preset="emanet_r18-d8_toycity", data_root="", work_dir="")
    assert wrap_for_training(model, TrainConfig(**base), run).recompute_norm_relu
    off = TrainConfig(**base, recompute_norm_relu=False)
    assert not wrap_for_training(model, off, run).recompute_norm_relu


def test_two_train_steps_are_the_same_with_and_without():
    cfg = TrainConfig(preset="emanet_r18-d8_toycity", data_root="", work_dir="", iters=10)
    run = Run(rank=0, world=1, device=torch.device("cpu"), precision="fp32")
    images, labels = toy_batch()
    batch = (images, labels.to(torch.uint8), torch.zeros(2, 1))
    states = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = build_model("emanet_r18-d8_toycity").train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for iteration in range(2):
            net = TrainStep(model, recompute_norm_relu=recompute)
            train_step(net, optimizer, TrainTransform(), batch, iteration, cfg, run)
        states.append(model.state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=1e-5, atol=1e-7)
