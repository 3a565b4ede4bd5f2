"""PreAct-ResNet-18 at width 1/4 (16 base channels) on full CIFAR-10 (JPEG-q75 copy).

  python -m experiments.train --config experiments/configs/train_cifar10.py

BackdoorBench's recipe (SGD, cosine, batch 128, wd 5e-4, crop+flip) over a budget that
fits a CPU session: 15 epochs at lr 0.1 (BackdoorBench: 100 epochs at lr 0.01).
"""

from experiments.configs import train_base


def get_config():
    c = train_base.get_config()
    c.dataset = "../shared/data/cifar10.tar.gz"
    c.model = "preact_resnet18"
    c.width = 0.25
    c.out = "~/runs/clean_cifar10_preact18_w025"
    c.train.epochs = 15
    c.train.learning_rate = 0.1
    c.train.checkpoint_every_steps = 100
    return c
