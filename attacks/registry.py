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

import importlib
import re
import warnings

from attacks.base import Attack
from backdoor_core.errors import InputError

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
NAME = re.compile(r"[A-Za-z0-9_]+")


def check_plugin_name(name: str, built_in, what: str) -> None:
    """InputError unless `name` can name a new `what` (letters, digits, underscores; not built in)."""
    if not NAME.fullmatch(name):
        raise InputError(f"{what} name {name!r}: expected letters, digits and underscores only "
                         "(it becomes part of run-directory names)")
    if name in built_in:
        raise InputError(f"{what} name {name!r} is built in; expected a new name for another {what}")


def entry_point_plugins(group: str, built_in, what: str) -> dict[str, str]:
    """{name: "module:attribute"} of the installed packages' entry points in `group`; a name that
    check_plugin_name refuses is left out with a warning (one bad package must not stop every
    command)."""
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group=group):
        try:
            check_plugin_name(ep.name, built_in, what)
        except InputError as e:
            warnings.warn(f"entry point {ep.value!r} of group {group} is left out: {e}", stacklevel=2)
            continue
        found[ep.name] = ep.value
    return found


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
