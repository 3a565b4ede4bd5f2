"""Short names -> backdoor attacks, resolved lazily.

Each entry is a "module:attribute" string naming an `attacks.base.Attack` instance (or the
instance itself, for one registered in-process); the module is imported only when the attack is
looked up, so an attack whose module is missing or broken does not stop the others from loading.

Attacks from other packages (docs/extending.md): an installed package adds its own through the
entry-point group `backdoor_erasing.attacks` (`name = "module:ATTRIBUTE"` in its pyproject's
`[project.entry-points."backdoor_erasing.attacks"]`), which every command line and matrix then
knows by name; `register_attack` does the same inside one Python process. A name must be
letters, digits and underscores (it becomes part of run-directory names) and may not replace a
built-in attack.
"""

from __future__ import annotations

from attacks.base import Attack
from backdoor_core.errors import InputError
from backdoor_core.plugins import check_plugin_name, entry_point_plugins, resolve

ATTACKS: dict[str, "str | Attack"] = {
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
BUILT_IN = frozenset(ATTACKS)
ENTRY_POINT_GROUP = "backdoor_erasing.attacks"


def register_attack(name: str, attack: "str | Attack") -> None:
    """Makes `attack` (an Attack instance, or "module:attribute" naming one) known as `name` to
    this process: `get_attack`, the attack CLI's functions and `experiments.run.Matrix`.
    Registering the same name again replaces the earlier plugin; a built-in name is refused."""
    check_plugin_name(name, BUILT_IN, "attack")
    if not isinstance(attack, (str, Attack)):
        raise InputError(f"register_attack({name!r}, ...): expected an attacks.base.Attack instance or a "
                         f"'module:attribute' string, got {type(attack).__name__}")
    ATTACKS[name] = attack


ATTACKS.update(entry_point_plugins(ENTRY_POINT_GROUP, BUILT_IN, "attack"))


def get_attack(name: str) -> Attack:
    """The attack registered as `name`; InputError listing the known names if there is none."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
    entry = ATTACKS[name]
    attack = entry if isinstance(entry, Attack) else resolve(entry, f"attack {name!r}")
    if not isinstance(attack, Attack):
        raise InputError(f"attack {name!r} is registered as {entry!r}, which is a {type(attack).__name__}; "
                         "expected an attacks.base.Attack instance")
    return attack


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
