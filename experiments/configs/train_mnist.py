"""Small CNN on full MNIST: >= 99% test accuracy in 3 epochs.

  python -m experiments.train --config experiments/configs/train_mnist.py
"""

from experiments.configs import train_base


def get_config():
    c = train_base.get_config()
    c.dataset = "../shared/data/mnist.tar.gz"
    c.model = "small_cnn"
    c.out = "~/runs/clean_mnist_small_cnn"
    c.train.epochs = 3
    c.train.learning_rate = 0.05
    return c
