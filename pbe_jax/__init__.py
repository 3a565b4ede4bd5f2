"""PBE and AFT: backdoor erasing by adversarial fine-tuning (Mu et al., CVPR 2023), and detection.

`pbe(model, variables, poisoned_train, PBEConfig())` purifies a model with its poisoned training
set and no clean data; `aft(model, variables, clean_set, AFTConfig())` with a clean set;
`detect(model, variables, images)` names the class untargeted adversarial examples pile into.
"""

from backdoor_core.augment import rotate  # PBE's rotation, shared with the training recipes
from pbe_jax.aft import AFTConfig, aft, clean_subset
from pbe_jax.detect import DetectConfig, Detection, detect
from pbe_jax.finetune import AdversarialSchedule, AugmentConfig, FinetuneConfig, make_trainer, pbe_augment
from pbe_jax.pbe import PBEConfig, pbe
from pbe_jax.selection import consistency_scores, random_subset, select_clean_subset

__all__ = ["AFTConfig", "AdversarialSchedule", "AugmentConfig", "DetectConfig", "Detection", "FinetuneConfig",
           "PBEConfig", "aft", "clean_subset", "consistency_scores", "detect", "make_trainer", "pbe", "pbe_augment",
           "random_subset", "rotate", "select_clean_subset"]
