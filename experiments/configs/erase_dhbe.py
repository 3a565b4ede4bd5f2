"""DHBE (and DFAD, its lam = 0 ablation) on a backdoored run directory.

  python -m experiments.erase --defense dhbe --run ~/runs/badnets_cifar10 \
      --config experiments/configs/erase_dhbe.py:cpu [--config.dhbe.iterations=N]

Variants (the part after ':'):
  paper  the official code's schedule (CIFAR-10, ResNet-18): 15,000 iterations of batch 256,
         student SGD 0.1, G/G_p Adam 1e-3, all x0.1 at 60% and 80%. For GPUs.
  cpu    a budget for this 2-core CPU (about an hour at PreAct-ResNet-18 width 1/4), each
         change measured on CIFAR-10 (docs/results_cifar10.md):
         - 600 iterations of batch 64, ngf 32 (the paper: 15,000 of 256, ngf 64; ngf 64 here
           took 1.4x the time for no C-Acc: BadNets 78.8 / 5.9 against 77.3 / 8.1 and 78.8 / 5.0);
         - student lr 0.01 with a 20-iteration warm-up (0.1: the copied teacher first loses
           most of its accuracy and needs thousands of iterations to recover, methods/DHBE.md);
         - the teacher's batch-norm statistics kept in the student (student_bn_train=False):
           with the official updates on synthetic data DFAD kept BadNets' ASR at 86% but
           DHBE's C-Acc fell further;
         - G warmed up for 200 steps and a class-balance term (weight 1) in G's loss: without
           them a teacher with a noise trigger (Blended) pulls G into its trigger region and
           student, DHBE and DFAD alike, collapse to 10% C-Acc / 100% ASR within 50 iterations.
         Everything else is the paper's.
  smoke  a few iterations of a tiny configuration, for tests and the quickstart.
"""

import ml_collections

from dhbe_jax import DHBEConfig

VARIANTS = {
    "paper": {},
    "cpu": dict(iterations=600, batch_size=64, ngf=32, student_lr=0.01, student_warmup=20, student_bn_train=False,
                generator_warmup=200, balance_weight=1.0),
    "smoke": dict(iterations=40, batch_size=32, ngf=16, nz=64, nz_trigger=64, student_lr=0.01, patch_size=3),
}


def get_config(variant: str = "paper"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown DHBE config variant {variant!r}; expected one of {sorted(VARIANTS)}")
    settings = {**DHBEConfig().__dict__, **VARIANTS[variant]}
    c = ml_collections.ConfigDict()
    c.defense = "dhbe"
    c.variant = variant
    c.seed = 0
    c.eval_every = 50 if variant != "smoke" else 20
    c.log_every = 10
    c.checkpoint_every = 50 if variant != "smoke" else 20
    c.stop_after = ml_collections.config_dict.placeholder(int)  # time-boxed sessions: resume later
    c.num_devices = ml_collections.config_dict.placeholder(int)
    c.dhbe = ml_collections.ConfigDict({k: v for k, v in settings.items() if v is not None})
    c.dhbe.full_sigma = ml_collections.config_dict.placeholder(float)  # None: 0.12 * H * W
    c.dhbe.average_start = ml_collections.config_dict.placeholder(float)  # None: the last student
    c.dhbe.trigger_lr_milestones = ml_collections.config_dict.placeholder(tuple)  # None: lr_milestones
    return c
