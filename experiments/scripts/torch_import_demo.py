"""A backdoored model trained with PyTorch, imported and measured here: the check that
`experiments.import_model` reads a real PyTorch training's weights as PyTorch evaluates them.

  PYTHONPATH=. python experiments/scripts/torch_import_demo.py OUT [--epochs 3] [--width 0.25]

1. BadNets on CIFAR-10 (`../shared/data/cifar10.tar.gz`), poisoned here in numpy: a white 3x3
   square in the bottom-right corner on 10% of the training set, drawn from non-target images,
   relabelled 0 (our `badnets` defaults);
2. trains the kuangliu/BackdoorBench PreActResNet18 layout (`tests/torch_reference.py`) at the
   given width in PyTorch: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, random crop
   (pad 4) and flip, BackdoorBench's normalisation; saves OUT/model.pt (its state_dict);
3. measures C-Acc and ASR (non-target test images) in PyTorch;
4. imports OUT/model.pt with `experiments.import_model` into OUT/imported and prints both
   measurements side by side (they should agree to the image).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backdoor_core.data import load_dataset
from tests.torch_reference import MEAN, STD, torch_models

DATA = "../shared/data/cifar10.tar.gz"


def add_square(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC images with a white 3x3 square in the bottom-right corner."""
    out = images.copy()
    out[:, -3:, -3:, :] = 255
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with 4 px zero padding (in normalised space, as torchvision after Normalize
    would not; close enough for a demo) and a horizontal flip, per image."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    i, j = torch.randint(0, 9, (2, n), generator=gen)
    out = torch.stack([padded[k, :, i[k]:i[k] + 32, j[k]:j[k] + 32] for k in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def predict(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(to_tensor(images[i:i + 500])).argmax(1).numpy()
                               for i in range(0, len(images), 500)])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=False)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, test = load_dataset(DATA)
    rng = np.random.default_rng(0)
    candidates = np.nonzero(train.labels != 0)[0]
    poisoned = np.sort(rng.choice(candidates, len(train.labels) // 10, replace=False))
    images, labels = train.images.copy(), train.labels.copy()
    images[poisoned] = add_square(images[poisoned])
    labels[poisoned] = 0
    model = torch_models()["preact_resnet18"](num_classes=10, width=args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(labels))
        for b in range(0, len(order) - 127, 128):
            idx = order[b:b + 128]
            x = augment(to_tensor(images[idx]), gen)
            loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()
    torch.save(model.state_dict(), out / "model.pt")
    nontarget = test.labels != 0
    torch_metrics = {"test_acc": float((predict(model, test.images) == test.labels).mean()),
                     "asr": float((predict(model, add_square(test.images[nontarget])) == 0).mean())}
    cmd = [sys.executable, "-m", "experiments.import_model", f"--config.weights={out / 'model.pt'}",
           f"--config.dataset={DATA}", f"--config.mean={MEAN}", f"--config.std={STD}",
           f"--config.out={out / 'imported'}", "--config.attack=badnets"]
    subprocess.run(cmd, check=True)
    imported = json.loads((out / "imported" / "record.json").read_text())["metrics"]
    summary = {"torch": torch_metrics, "imported": {k: imported[k] for k in torch_metrics},
               "epochs": args.epochs, "width": args.width, "train_seconds": round(time.time() - start)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
