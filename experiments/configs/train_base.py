"""Base config for `python -m experiments.train`: a clean classifier on any dataset source.

  python -m experiments.train --config experiments/configs/train_base.py \
      --config.dataset=../shared/data/cifar10.tar.gz --config.out=~/runs/clean_cifar10
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.dataset = "data/mnist_subset.npz"  # tfds name, image folder, .tar.gz or .npz
    c.model = "small_cnn"
    c.width = 1.0
    c.out = "~/runs/clean"
    c.num_devices = ml_collections.config_dict.placeholder(int)  # None: all devices
    c.stop_after_steps = ml_collections.config_dict.placeholder(int)  # time-boxed sessions
    c.train = ml_collections.ConfigDict(dict(
        epochs=3, batch_size=128, learning_rate=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
        schedule="cosine", milestones=(0.5, 0.75), gamma=0.1, warmup_epochs=0.0,
        crop_padding=ml_collections.config_dict.placeholder(int),
        hflip=ml_collections.config_dict.placeholder(bool),
        augmentation="crop_flip",  # or the official "wanet" / "iad" recipes (backdoor_core.augment)
        seed=0, checkpoint_every_steps=0, max_to_keep=2))
    return c
