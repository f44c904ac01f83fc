"""An independent functional forward of mmsegmentation's EMANet, driven by a state dict.

Written from mmsegmentation's configs (ResNetV1c-D8, EMAHead, FCNHead) with plain
``F.conv2d``/``F.batch_norm`` and the einsum EM of mmseg's EMAModule, so that it shares no code
with ``emanet``: our modules must give the same logits for the same weights.
"""

import torch
import torch.nn.functional as F


def bn(sd, prefix, x):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def conv_module(sd, prefix, x, padding=0, act=True, norm=True):
    x = F.conv2d(x, sd[f"{prefix}.conv.weight"], sd.get(f"{prefix}.conv.bias"), padding=padding)
    if norm:
        x = bn(sd, f"{prefix}.bn", x)
    return F.relu(x) if act else x


def bottleneck(sd, p, x, stride, dilation):
    out = F.relu(bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
    out = F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=dilation, dilation=dilation)
    out = F.relu(bn(sd, f"{p}.bn2", out))
    out = bn(sd, f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
    if f"{p}.downsample.0.weight" in sd:
        x = bn(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
    return F.relu(out + x)


def basic_block(sd, p, x, stride, dilation):
    out = F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=dilation, dilation=dilation)
    out = F.relu(bn(sd, f"{p}.bn1", out))
    out = bn(sd, f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1))
    if f"{p}.downsample.0.weight" in sd:
        x = bn(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
    return F.relu(out + x)


def backbone(sd, x):
    for i, stride in ((0, 2), (3, 1), (6, 1)):
        x = F.conv2d(x, sd[f"backbone.stem.{i}.weight"], stride=stride, padding=1)
        x = F.relu(bn(sd, f"backbone.stem.{i + 1}", x))
    x = F.max_pool2d(x, 3, 2, 1)
    outs = []
    block = bottleneck if "backbone.layer1.0.conv3.weight" in sd else basic_block
    for stage, (stride, dilation) in enumerate(((1, 1), (2, 1), (1, 2), (1, 4)), start=1):
        n = len({k.split(".")[2] for k in sd if k.startswith(f"backbone.layer{stage}.")})
        for j in range(n):
            # contract_dilation: the first block of a dilated stage uses half the dilation
            d = dilation // 2 if (j == 0 and dilation > 1) else dilation
            x = block(sd, f"backbone.layer{stage}.{j}", x, stride if j == 0 else 1, d)
        outs.append(x)
    return outs


def ema_module(bases, feats, stages):
    b, c, h, w = feats.shape
    feats = feats.view(b, c, h * w)
    mu = bases.repeat(b, 1, 1)
    for _ in range(stages):
        z = F.softmax(torch.einsum("bcn,bck->bnk", feats, mu), dim=2)
        mu = F.normalize(torch.einsum("bcn,bnk->bck", feats, F.normalize(z, dim=1, p=1)), dim=1)
    return torch.einsum("bck,bnk->bcn", mu, z).view(b, c, h, w)


def ema_head(sd, x, stages=3):
    p = "decode_head"
    feats = conv_module(sd, f"{p}.ema_in_conv", x, padding=1)
    identity = feats
    feats = conv_module(sd, f"{p}.ema_mid_conv", feats, act=False, norm=False)
    recon = F.relu(ema_module(sd[f"{p}.ema_module.bases"], feats, stages))
    recon = conv_module(sd, f"{p}.ema_out_conv", recon, act=False)
    out = F.relu(identity + recon)
    out = conv_module(sd, f"{p}.bottleneck", out, padding=1)
    out = conv_module(sd, f"{p}.conv_cat", torch.cat([x, out], dim=1), padding=1)
    return F.conv2d(out, sd[f"{p}.conv_seg.weight"], sd[f"{p}.conv_seg.bias"])


def encode_decode(sd, img, align_corners, stages=3):
    logits = ema_head(sd, backbone(sd, img)[3], stages)
    return F.interpolate(logits, img.shape[2:], mode="bilinear", align_corners=align_corners)


def slide(sd, img, crop, stride, num_classes, align_corners):
    h_crop, w_crop = crop
    h_stride, w_stride = stride
    b, _, h, w = img.shape
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((b, num_classes, h, w))
    count = img.new_zeros((b, 1, h, w))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * h_stride, wi * w_stride
            y2, x2 = min(y1 + h_crop, h), min(x1 + w_crop, w)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            out = encode_decode(sd, img[:, :, y1:y2, x1:x2], align_corners)
            preds += F.pad(out, (x1, w - x2, y1, h - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count
