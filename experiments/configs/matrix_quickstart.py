"""The quickstart matrix (the README's main command): on the shipped MNIST subset, train a
BadNets and a low-frequency (LF) backdoored small CNN (width 0.5, 3 epochs; LF crafts its trigger
on a clean model, trained too), erase each with DHBE, PBE and CLP at small settings, and print
the before/after table. About 7 minutes on a 2-core CPU (6m25s measured in a fresh clone; 15m27s on a
2x slower 2-core machine, 2026-12-07).

  python -m experiments.run --config experiments/configs/matrix_quickstart.py [--config.out=DIR]

Settings, and why:
- DHBE: the `smoke` variant for 100 iterations of batch 64 (the paper runs 15,000 of 256): it
  shows the loop, not an erasure; on this model DHBE erased neither attack in the runs made
  (BadNets: up to 300 iterations under several settings; LF: 200; README, "Measured so far").
- PBE: the `cpu` variant (round 0: 10 adversarial epochs on a random 5%, as the paper; rounds
  1-3: 4 epochs instead of 10) with PGD at eps 32/255 (alpha 6.4/255, 7 steps) instead of the
  official 6/255, a CIFAR-10 budget: MNIST's near-binary digits need a larger one (adversarial
  training on MNIST conventionally uses 0.3 = 76/255). At 6/255 PBE left LF's ASR at 99.9%; at
  32/255 round 0 brings it to about 1% (1.4% with the random start drawn since 2026-12-06). BadNets survives both (its selection keeps the poisoned
  images, as on CIFAR-10).
- CLP: its only setting, u = 3.
"""

import ml_collections

EPS = 32 / 255


def get_config():
    c = ml_collections.ConfigDict()
    c.out = "~/runs/quickstart"
    c.datasets = ml_collections.ConfigDict({
        "mnist_subset": dict(source="data/mnist_subset.npz", attack_config="experiments.configs.attack_base",
                             overrides=dict(train=dict(epochs=3, learning_rate=0.05, batch_size=64)))})
    c.models = (ml_collections.ConfigDict(dict(name="small_cnn", width=0.5)),)
    c.attacks = ("badnets", "lf")
    c.defenses = ("dhbe", "pbe", "clp")
    c.seeds = (0,)
    c.variant = "smoke"  # each defense config's variant, unless defense_variants names another
    c.defense_variants = ml_collections.ConfigDict({"pbe": "cpu"})
    c.reuse_only = False  # True: only tabulate cells that already finished
    c.plots = True  # False: the tables only, no PNGs (plots/ is left as it was)
    c.archive = ""  # a folder: copy finished cells there (no checkpoints) and count archived cells as finished
    c.archive_weights = True  # with an archive: a teacher whose defense cells are unfinished is archived with its weights
    c.release_weights = False  # True: drop them once every cell of this config on the teacher has finished
    c.attack_overrides = ml_collections.ConfigDict()
    pgd = dict(eps=EPS, alpha=EPS / 5, steps=7)
    c.defense_overrides = ml_collections.ConfigDict({
        "dhbe": dict(dhbe=dict(iterations=100, batch_size=64)),
        "pbe": dict(pgd=pgd, detect=pgd)})
    return c
