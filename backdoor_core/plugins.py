"""What the registries (models, attacks, defenses) share to take entries from other packages.

An installed package declares its entries as Python entry points, one group per registry:
`backdoor_erasing.models`, `backdoor_erasing.attacks`, `backdoor_erasing.defenses`, each entry
`name = "module:attribute"` (docs/extending.md). Registries keep such entries as strings and
import them only when one is used (`resolve`), so a missing or broken module does not stop the
rest from loading.
"""

from __future__ import annotations

import importlib
import re
import warnings

from backdoor_core.errors import InputError

NAME = re.compile(r"[A-Za-z0-9_]+")


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
