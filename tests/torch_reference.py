"""PyTorch reference models in the layouts `backdoor_core.models.torch_import` reads, written
here after the kuangliu CIFAR code that BackdoorBench, PBE and DFAD/DHBE build on (same module
names, so the same state_dict keys), with a width multiplier to keep them small.

  python tests/torch_reference.py   # (torch needed) rewrites tests/data/torch_<arch>.npz

Each fixture holds a randomly initialised model's state_dict (BatchNorm statistics randomised
too, so they are exercised) as `sd/<key>` arrays, `mean`, `std`, a batch of `images` (NHWC in
[0, 1]) and the model's `logits` on them in eval mode: what the tests compare our import to
without torch installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "data"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)  # BackdoorBench's CIFAR-10 normalisation


def torch_models():
    """{'preact_resnet18': cls, 'resnet18': cls}: torch modules (num_classes, width) -> model."""
    import torch.nn as nn
    import torch.nn.functional as F

    class PreActBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

        def forward(self, x):
            out = F.relu(self.bn1(x))
            shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
            out = self.conv1(out)
            out = self.conv2(F.relu(self.bn2(out)))
            return out + shortcut

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class CifarResNet(nn.Module):
        def __init__(self, block, preact, num_classes=10, width=1.0):
            super().__init__()
            widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
            self.preact = preact
            self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            if not preact:
                self.bn1 = nn.BatchNorm2d(widths[0])
            cin = widths[0]
            for stage, cout in enumerate(widths):
                layers = []
                for b in range(2):
                    layers.append(block(cin, cout, 2 if stage > 0 and b == 0 else 1))
                    cin = cout
                setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            self.linear = nn.Linear(cin, num_classes)

        def forward(self, x):
            out = self.conv1(x)
            if not self.preact:
                out = F.relu(self.bn1(out))
            for stage in range(4):
                out = getattr(self, f"layer{stage + 1}")(out)
            return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    class WideBlock(nn.Module):  # DFAD's wresnet BasicBlock, without dropout
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.equal = cin == cout and stride == 1
            self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

        def forward(self, x):
            act = F.relu(self.bn1(x))
            out = self.conv2(F.relu(self.bn2(self.conv1(act))))
            return out + (x if self.equal else self.convShortcut(act))

    class NetworkBlock(nn.Module):
        def __init__(self, n, cin, cout, stride):
            super().__init__()
            self.layer = nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                         for i in range(n)])

        def forward(self, x):
            return self.layer(x)

    class WideResNet(nn.Module):
        def __init__(self, depth, widen, num_classes=10, width=1.0):
            super().__init__()
            n = (depth - 4) // 6
            c = [max(1, int(round(ch * width))) for ch in (16, 16 * widen, 32 * widen, 64 * widen)]
            self.conv1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
            self.block1 = NetworkBlock(n, c[0], c[1], 1)
            self.block2 = NetworkBlock(n, c[1], c[2], 2)
            self.block3 = NetworkBlock(n, c[2], c[3], 2)
            self.bn1 = nn.BatchNorm2d(c[3])
            self.fc = nn.Linear(c[3], num_classes)

        def forward(self, x):
            out = self.block3(self.block2(self.block1(self.conv1(x))))
            return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1))

    return {"preact_resnet18": lambda **kw: CifarResNet(PreActBlock, True, **kw),
            "resnet18": lambda **kw: CifarResNet(BasicBlock, False, **kw),
            "wrn16_2": lambda **kw: WideResNet(16, 2, **kw)}


WIDTHS = {"preact_resnet18": 1 / 16, "resnet18": 1 / 16, "wrn16_2": 0.25}  # small fixtures


def randomised_model(arch: str, num_classes: int = 10, width: float | None = None, seed: int = 0):
    """An eval-mode torch model of `arch` with random weights and random BatchNorm statistics."""
    import torch

    torch.manual_seed(seed)
    model = torch_models()[arch](num_classes=num_classes, width=WIDTHS[arch] if width is None else width)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def torch_logits(model, images: np.ndarray, mean=MEAN, std=STD) -> np.ndarray:
    """The torch model's logits on NHWC images in [0, 1], normalised as its training did."""
    import torch

    x = (torch.from_numpy(images).permute(0, 3, 1, 2) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x.float()).numpy()


def write_fixture(arch: str, path: Path) -> None:
    """Saves the fixture described in the module docstring for `arch` to `path`."""
    model = randomised_model(arch)
    images = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    arrays = {f"sd/{k}": v.numpy() for k, v in model.state_dict().items()}
    np.savez_compressed(path, images=images, logits=torch_logits(model, images), mean=np.asarray(MEAN),
                        std=np.asarray(STD), **arrays)


if __name__ == "__main__":
    FIXTURES.mkdir(exist_ok=True)
    for name in WIDTHS:
        write_fixture(name, FIXTURES / f"torch_{name}.npz")
        print(FIXTURES / f"torch_{name}.npz")
