"""PyTorch references for `experiments.bench` (optional dependency: torch, torchattacks; CPU build).

`TorchCifarResNet` mirrors the registry's `resnet18` / `preact_resnet18` layer for layer
(normalisation first, bias-free 3x3 convolutions with padding 1, BN eps 1e-5, global average
pooling, linear head), and `load_flax_variables` copies our parameters and batch statistics
into it, so both frameworks run the same function on the same weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, preact: bool):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin if preact else cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        self.shortcut_bn = nn.BatchNorm2d(cout) if self.shortcut is not None and not preact else None

    def forward(self, x):
        if self.preact:
            out = F.relu(self.bn1(x))
            shortcut = self.shortcut(out) if self.shortcut is not None else x
            out = self.conv2(F.relu(self.bn2(self.conv1(out))))
            return out + shortcut
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = self.shortcut_bn(self.shortcut(x)) if self.shortcut is not None else x
        return F.relu(out + shortcut)


class TorchCifarResNet(nn.Module):
    """CIFAR ResNet-18 (basic or pre-activation blocks) at a width multiplier, input NCHW in [0, 1]."""

    def __init__(self, num_classes: int, width: float, preact: bool, mean, std, in_channels: int = 3):
        super().__init__()
        widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.preact = preact
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = None if preact else nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for b in range(2):
                blocks.append(_Basic(cin, cout, 2 if stage > 0 and b == 0 else 1, preact))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem((x - self.mean) / self.std)
        if self.stem_bn is not None:
            x = F.relu(self.stem_bn(x))
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.mean((2, 3)))


def _bn(dst: nn.BatchNorm2d, params: dict, stats: dict) -> None:
    dst.weight.data = torch.from_numpy(np.asarray(params["scale"]).copy())
    dst.bias.data = torch.from_numpy(np.asarray(params["bias"]).copy())
    dst.running_mean.data = torch.from_numpy(np.asarray(stats["mean"]).copy())
    dst.running_var.data = torch.from_numpy(np.asarray(stats["var"]).copy())


def _conv(dst: nn.Conv2d, params: dict) -> None:
    dst.weight.data = torch.from_numpy(np.asarray(params["kernel"]).transpose(3, 2, 0, 1).copy())


def load_flax_variables(model: TorchCifarResNet, variables: dict) -> TorchCifarResNet:
    """Copies our {'params', 'batch_stats'} (registry resnet18/preact_resnet18) into `model`."""
    p, s = variables["params"], variables["batch_stats"]
    _conv(model.stem, p["stem"])
    if model.stem_bn is not None:
        _bn(model.stem_bn, p["stem_bn"], s["stem_bn"])
    prefix = "PreActBlock" if model.preact else "BasicBlock"
    for i, block in enumerate(model.blocks):
        bp, bs = p[f"{prefix}_{i}"], s[f"{prefix}_{i}"]
        _conv(block.conv1, bp["Conv_0"])
        _conv(block.conv2, bp["Conv_1"])
        _bn(block.bn1, bp["BatchNorm_0"], bs["BatchNorm_0"])
        _bn(block.bn2, bp["BatchNorm_1"], bs["BatchNorm_1"])
        if block.shortcut is not None:
            _conv(block.shortcut, bp["shortcut" if model.preact else "shortcut_conv"])
        if block.shortcut_bn is not None:
            _bn(block.shortcut_bn, bp["shortcut_bn"], bs["shortcut_bn"])
    model.classifier.weight.data = torch.from_numpy(np.asarray(p["classifier"]["kernel"]).T.copy())
    model.classifier.bias.data = torch.from_numpy(np.asarray(p["classifier"]["bias"]).copy())
    return model


def sgd_step_fn(model: nn.Module, lr: float = 0.1):
    """One eager SGD step (momentum 0.9, wd 5e-4, cross-entropy, train mode) on (x NCHW, y)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def pgd_fn(model: nn.Module, eps: float, alpha: float, steps: int):
    """torchattacks' PGD (eval mode, no random start) when installed, else the same loop written here."""
    model.eval()
    try:
        import torchattacks

        attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
        return lambda x, y: attack(x, y), "torchattacks.PGD"
    except ImportError:
        def attack(x, y):
            adv = x.clone().detach()
            for _ in range(steps):
                adv.requires_grad_(True)
                grad, = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
                adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
            return adv
        return attack, "PGD loop (torchattacks not installed)"


class DFADGenerator(nn.Module):
    """The official DHBE/DFAD sample generator (Linear, BN, 2 x [up, conv, BN, LeakyReLU], conv, tanh, BN)."""

    def __init__(self, nz: int = 256, ngf: int = 64, channels: int = 3, size: int = 32):
        super().__init__()
        self.init_size = size // 4
        self.l1 = nn.Linear(nz, 2 * ngf * self.init_size ** 2)
        self.bn0 = nn.BatchNorm2d(2 * ngf)
        self.conv1, self.bn1 = nn.Conv2d(2 * ngf, 2 * ngf, 3, 1, 1), nn.BatchNorm2d(2 * ngf)
        self.conv2, self.bn2 = nn.Conv2d(2 * ngf, ngf, 3, 1, 1), nn.BatchNorm2d(ngf)
        self.conv3, self.bn3 = nn.Conv2d(ngf, channels, 3, 1, 1), nn.BatchNorm2d(channels, affine=False)

    def forward(self, z):
        x = self.bn0(self.l1(z).view(z.shape[0], -1, self.init_size, self.init_size))
        x = F.leaky_relu(self.bn1(self.conv1(F.interpolate(x, scale_factor=2))), 0.2)
        x = F.leaky_relu(self.bn2(self.conv2(F.interpolate(x, scale_factor=2))), 0.2)
        return self.bn3(torch.tanh(self.conv3(x)))


class PatchGenerator(nn.Module):
    """The official trigger generator: Linear, BN, conv, BN (no affine), tanh -> [B, C, P, P]."""

    def __init__(self, nz: int = 256, patch: int = 5, channels: int = 3):
        super().__init__()
        self.patch = patch
        self.l1, self.bn0 = nn.Linear(nz, 64 * patch * patch), nn.BatchNorm2d(64)
        self.conv, self.bn1 = nn.Conv2d(64, channels, 3, 1, 1), nn.BatchNorm2d(channels, affine=False)

    def forward(self, z):
        x = self.bn0(self.l1(z).view(z.shape[0], 64, self.patch, self.patch))
        return torch.tanh(self.bn1(self.conv(x)))


def dhbe_iteration_fn(teacher: nn.Module, student: nn.Module, batch: int, nz: int = 256, lam: float = 0.1,
                      student_steps: int = 5, size: int = 32, device: str = "cpu"):
    """One DHBE iteration the official way: 5 student steps, one G step, one G_p step, eagerly.

    As in the official code, the generator steps backpropagate through the teacher's and the
    student's weights too (their gradients are computed and never used), the teacher is in eval
    mode and the student in train mode, and one patch position is drawn per batch. The noise and
    the generators live on `device` (the networks passed in must already be there); reading the
    returned loss waits for the device.
    """
    gen, trig = DFADGenerator(nz).to(device), PatchGenerator(nz).to(device)
    opt_s = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_g, opt_p = torch.optim.Adam(gen.parameters(), lr=1e-3), torch.optim.Adam(trig.parameters(), lr=1e-3)
    teacher.eval()
    student.train()

    def add_patch(x, p):
        i, j = np.random.randint(0, size - p.shape[-1] + 1, size=2)
        return x + F.pad(p, (j, size - j - p.shape[-1], i, size - i - p.shape[-2]))

    def iteration():
        for _ in range(student_steps):
            fake = gen(torch.randn(batch, nz, device=device)).detach()
            pattern = trig(torch.randn(batch, nz, device=device)).detach()
            t_logit, s_logit = teacher(fake).detach(), student(fake)
            s_p = student(add_patch(fake, pattern))
            loss = F.l1_loss(s_logit, t_logit) + lam * F.l1_loss(s_p, s_logit.detach())
            opt_s.zero_grad()
            loss.backward()
            opt_s.step()
        fake = gen(torch.randn(batch, nz, device=device))
        loss_g = -F.l1_loss(student(fake), teacher(fake))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        fake = gen(torch.randn(batch, nz, device=device)).detach()
        loss_p = -F.l1_loss(student(add_patch(fake, trig(torch.randn(batch, nz, device=device)))), student(fake).detach())
        opt_p.zero_grad()
        loss_p.backward()
        opt_p.step()
        return float(loss_p.detach())

    return iteration
