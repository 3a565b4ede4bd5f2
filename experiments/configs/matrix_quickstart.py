"""The quickstart matrix (the README's main command): on the shipped MNIST subset, train a
BadNets model (small CNN, width 0.5, 3 epochs), erase it with DHBE, PBE and CLP at small
settings, and print the before/after table. About 10 minutes on a 2-core CPU.

  python -m experiments.run --config experiments/configs/matrix_quickstart.py [--config.out=DIR]
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.out = "~/runs/quickstart"
    c.datasets = ml_collections.ConfigDict({
        "mnist_subset": dict(source="data/mnist_subset.npz", attack_config="experiments.configs.attack_base",
                             overrides=dict(train=dict(epochs=3, learning_rate=0.05, batch_size=64)))})
    c.models = (ml_collections.ConfigDict(dict(name="small_cnn", width=0.5)),)
    c.attacks = ("badnets",)
    c.defenses = ("dhbe", "pbe", "clp")
    c.seeds = (0,)
    c.variant = "smoke"  # each defense config's variant
    c.reuse_only = False  # True: only tabulate cells that already finished
    c.attack_overrides = ml_collections.ConfigDict()
    c.defense_overrides = ml_collections.ConfigDict({"dhbe": dict(dhbe=dict(iterations=200, batch_size=64))})
    return c
