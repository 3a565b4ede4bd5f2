"""Short names -> backdoor attacks, resolved lazily.

Each entry is a "module:attribute" string naming an `attacks.base.Attack` instance; the module
is imported only when the attack is looked up, so an attack whose module is missing or broken
does not stop the others from loading.
"""

from __future__ import annotations

import importlib

from attacks.base import Attack
from backdoor_core.errors import InputError

ATTACKS: dict[str, str] = {
    "badnets": "attacks.badnets:BADNETS",
    "badnets_checker": "attacks.badnets:BADNETS_CHECKER",
    "blended": "attacks.blended:BLENDED",
    "sig": "attacks.sig:SIG",
    "wanet": "attacks.wanet:WANET",
    "lf": "attacks.low_frequency:LOW_FREQUENCY",
    "trojannn": "attacks.trojannn:TROJANNN",
    "lc": "attacks.label_consistent:LABEL_CONSISTENT",
    "iad": "attacks.iad:IAD",
}


def resolve(path: str, what: str):
    """The object named by "module:attribute"; InputError naming `what` if it cannot be imported."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise InputError(f"{what} is registered but its module {module_name} is not available") from None
    except AttributeError:
        raise InputError(f"{what} is registered as {path}, but {module_name} has no {attr}") from None


def get_attack(name: str) -> Attack:
    """The attack registered as `name`; InputError listing the known names if there is none."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
    return resolve(ATTACKS[name], f"attack {name!r}")


def available_attacks() -> list[str]:
    """Registered names whose module imports (for listings and configs)."""
    names = []
    for name in ATTACKS:
        try:
            get_attack(name)
        except InputError:
            continue
        names.append(name)
    return names


def default_params(names=None) -> dict:
    """{attack name: its parameters' default values as a dict} for the importable attacks."""
    import dataclasses

    from attacks.base import AttackConfig

    out = {}
    for name in names or available_attacks():
        attack = get_attack(name)
        out[name] = dataclasses.asdict(attack.params(AttackConfig(name=name)))
    return out
