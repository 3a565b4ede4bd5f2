"""Backdoor attacks: the attack interface, the registry, triggers, poisoning and backdoored training.

Attack modules (badnets, blended, sig, wanet, ...) are imported lazily through
`attacks.registry.get_attack(name)`.
"""

from attacks.base import MODES, Attack, AttackConfig, BackdoorJob, TrainedModel, poison_target
from attacks.registry import ATTACKS, available_attacks, get_attack
from attacks.triggers import Trigger, load_trigger, save_trigger

__all__ = ["ATTACKS", "MODES", "Attack", "AttackConfig", "BackdoorJob", "TrainedModel", "Trigger",
           "available_attacks", "get_attack", "load_trigger", "poison_target", "save_trigger"]
