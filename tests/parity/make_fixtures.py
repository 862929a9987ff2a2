#!/usr/bin/env python3
"""Write the PyTorch parity fixtures that tests/unit/test_parity.c reproduces in C.

Run with Debian's python3-torch (1.13):  /usr/bin/python3 tests/parity/make_fixtures.py
It writes, under tests/fixtures/parity/:

moco_step.safetensors — two MoCo v2 steps of a tiny model, exactly as ../shared/peers/moco_torch.py
  (and the original MoCo) computes them: ResNet-18, base width 4, CIFAR stem, 3 input channels,
  16x16 views, batch 8, MLP head 32-32-16, queue K = 64, key momentum m = 0.99, tau = 0.2, 2 key-BN
  groups, SGD lr 0.06 momentum 0.9 weight decay 5e-4.
    q0.<name>, k0.<name>   both encoders before step 1 (k0 = q0 + noise so the momentum update shows)
    q0.<bn>.running_*      the query encoder's running statistics before step 1
    queue0                 (K, dim): row j is key j (the peer keeps its transpose, (dim, K))
    step<s>.im_q, im_k     (N, H, W, C) f32, already normalised
    step<s>.perm           i64 (N): the key batch is im_k[perm]
    step<s>.logits, loss   the InfoNCE logits (N, 1+K) and the mean cross-entropy
    step1.grad.<name>      every query parameter's gradient in step 1
    final.q.<name>         query parameters and running statistics after step 2
    final.k.<name>         key parameters after step 2
    final.mom.<name>       SGD momentum buffers after step 2
    final.queue            (K, dim) after step 2
  Key-encoder running statistics are not compared: with G > 1 the peer's split BN does not track
  them (the key encoder always runs in training mode, so they are never used).

linear_step.safetensors — two SGD steps of the supervised linear classifier (moco-linear):
  features (8, 16), labels, Linear(16, 5) weights before and after, logits and loss per step;
  lr 0.5, momentum 0.9, weight decay 1e-4.

resnet50_forward.safetensors — a ResNet-50 forward in evaluation mode, batch 1, 224x224x3, fc 1000.
  The weights and the input are not stored: both sides compute them from the formula in
  `formula()` (an integer hash, exact in Python and in C), so the fixture stays a few kilobytes.
  Stored: pooled (1, 2048) and logits (1, 1000).

Tensors are written with a small safetensors writer (no safetensors package in Debian).
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "parity")


def save(path, tensors):
    """safetensors: 8-byte header length, JSON header, data; tensors in the order given."""
    header, blobs, off = {}, [], 0
    codes = {np.float32: "F32", np.int64: "I64"}
    for name, t in tensors.items():
        a = np.ascontiguousarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t)
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        b = a.tobytes()
        header[name] = {"dtype": codes[a.dtype.type], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class WideResNet(torchvision.models.ResNet):
    """torchvision's ResNet with a chosen base width, input channels and stem (same names)."""

    def __init__(self, block, layers, width, in_channels, num_classes, cifar_stem):
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def split_bn_forward(bn, groups):
    """The peer's SplitBN: batch norm over `groups` interleaved slices (sample s in group s % G)."""

    def forward(x):
        n, c, h, w = x.shape
        y = F.batch_norm(x.reshape(n // groups, c * groups, h, w), None, None,
                         bn.weight.repeat(groups), bn.bias.repeat(groups), True, bn.momentum, bn.eps)
        return y.reshape(n, c, h, w)

    return forward


def nhwc(x):
    return x.permute(0, 2, 3, 1).contiguous()


def moco_step_fixture():
    torch.manual_seed(0)
    width, dim, K, m, T, G, N, S = 4, 16, 64, 0.99, 0.2, 2, 8, 16
    q = WideResNet(BasicBlock, [2, 2, 2, 2], width, 3, dim, True)
    hid = q.fc.weight.shape[1]
    q.fc = nn.Sequential(nn.Linear(hid, hid), nn.ReLU(), q.fc)
    with torch.no_grad():  # non-trivial BN state, so its gradients and updates are all exercised
        for mod in q.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    k = WideResNet(BasicBlock, [2, 2, 2, 2], width, 3, dim, True)
    k.fc = nn.Sequential(nn.Linear(hid, hid), nn.ReLU(), k.fc)
    k.load_state_dict(q.state_dict())
    with torch.no_grad():
        for p in k.parameters():
            p.add_(torch.randn_like(p) * 0.01)
            p.requires_grad = False
    for mod in k.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.forward = split_bn_forward(mod, G)
    queue = F.normalize(torch.randn(dim, K), dim=0)
    ptr = 0
    opt = torch.optim.SGD(q.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)

    out = {}
    for name, t in q.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            out["q0." + name] = t.clone()
    for name, p in k.named_parameters():
        out["k0." + name] = p.clone()
    out["queue0"] = queue.T.clone()

    q.train()
    k.train()
    for s in (1, 2):
        im_q = torch.randn(N, 3, S, S)
        im_k = torch.randn(N, 3, S, S)
        perm = torch.randperm(N)
        qf = F.normalize(q(im_q), dim=1)
        with torch.no_grad():
            for pq, pk in zip(q.parameters(), k.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)
            kf = F.normalize(k(im_k[perm]), dim=1)[torch.argsort(perm)]
        logits = torch.cat([(qf * kf).sum(1, keepdim=True), qf @ queue], 1) / T
        loss = F.cross_entropy(logits, torch.zeros(N, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        if s == 1:
            for name, p in q.named_parameters():
                out["step1.grad." + name] = p.grad.clone()
        opt.step()
        with torch.no_grad():
            queue[:, ptr:ptr + N] = kf.T
            ptr = (ptr + N) % K
        out[f"step{s}.im_q"] = nhwc(im_q)
        out[f"step{s}.im_k"] = nhwc(im_k)
        out[f"step{s}.perm"] = perm
        out[f"step{s}.logits"] = logits.detach()
        out[f"step{s}.loss"] = loss.detach().reshape(1)
    for name, t in q.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            out["final.q." + name] = t.clone()
    for name, p in k.named_parameters():
        out["final.k." + name] = p.clone()
    for name, p in q.named_parameters():
        out["final.mom." + name] = opt.state[p]["momentum_buffer"].clone()
    out["final.queue"] = queue.T.clone()
    save(os.path.join(OUT, "moco_step.safetensors"), out)


def linear_step_fixture():
    torch.manual_seed(1)
    feats = torch.randn(8, 16)
    labels = torch.randint(0, 5, (8,))
    fc = nn.Linear(16, 5)
    out = {"features": feats, "labels": labels, "weight0": fc.weight.clone(), "bias0": fc.bias.clone()}
    opt = torch.optim.SGD(fc.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    for s in (1, 2):
        logits = fc(feats)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out[f"step{s}.logits"] = logits.detach()
        out[f"step{s}.loss"] = loss.detach().reshape(1)
    out["weight"], out["bias"] = fc.weight.detach(), fc.bias.detach()
    save(os.path.join(OUT, "linear_step.safetensors"), out)


def formula(tensor_index, n):
    """u in [0, 1) from an integer hash of (tensor, element): the C side (resnet_fill_formula in
    tests/unit/test_parity.c) computes the same uint32 arithmetic."""
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(tensor_index) * np.uint64(40503)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
    return h.astype(np.float64) / 4294967296.0


def formula_value(name, shape, tensor_index):
    n = int(np.prod(shape)) if shape else 1
    u = formula(tensor_index, n)
    if name.endswith("running_mean"):
        v = 0.1 * (2 * u - 1)
    elif name.endswith("running_var"):
        v = 0.5 + u
    elif ".bn" in name or name.startswith("bn") or ".downsample.1." in name:
        v = 0.8 + 0.4 * u if name.endswith("weight") else 0.2 * (2 * u - 1)
    elif name.endswith("bias"):  # fc.bias
        v = 0.1 * (2 * u - 1)
    else:  # conv and fc weights: uniform with variance 2 / fan_in
        fan_in = int(np.prod(shape[1:]))
        v = (2 * u - 1) * math.sqrt(6.0 / fan_in)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def resnet50_fixture():
    net = torchvision.models.resnet50()
    sd = net.state_dict()
    t = 0
    with torch.no_grad():
        for name, p in sd.items():
            if name.endswith("num_batches_tracked"):
                continue
            p.copy_(formula_value(name, list(p.shape), t))
            t += 1
    net.eval()
    x = torch.from_numpy(((2 * formula(999, 224 * 224 * 3) - 1) * 2).astype(np.float32).reshape(1, 224, 224, 3))
    x = x.permute(0, 3, 1, 2).contiguous()  # the formula fills NHWC order
    with torch.no_grad():
        feats = torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(
            net.maxpool(net.relu(net.bn1(net.conv1(x))))))))), 1)
        logits = net.fc(feats)
    save(os.path.join(OUT, "resnet50_forward.safetensors"), {"pooled": feats, "logits": logits})


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    moco_step_fixture()
    linear_step_fixture()
    resnet50_fixture()


if __name__ == "__main__":
    main()
