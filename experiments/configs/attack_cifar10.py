"""BadNets (or any --config.attack) on full CIFAR-10: PreAct-ResNet-18 at width 1/4, 10% poisoning,
target 0, with the clean recipe of train_cifar10.py (15 epochs, lr 0.1, cosine, batch 128).

  python -m experiments.attack --config experiments/configs/attack_cifar10.py --config.attack=badnets \
      --config.out=~/runs/attack_cifar10_badnets

Each run takes over an hour on the CPU; for the attack table run one per attack
(badnets, blended, sig, wanet, ...), changing --config.attack and --config.out.
"""

from experiments.configs import attack_base, train_cifar10


def get_config():
    c = attack_base.get_config()
    clean = train_cifar10.get_config()
    c.dataset = clean.dataset
    c.model = clean.model
    c.width = clean.width
    c.train = clean.train
    c.out = "~/runs/attack_cifar10_preact18_w025"
    c.poison_ratio = 0.1
    c.target = 0
    return c
