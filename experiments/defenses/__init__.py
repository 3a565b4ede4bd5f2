"""Defenses runnable by `python -m experiments.erase --defense NAME` and by the matrix.

Each entry of DEFENSES maps a short name to "module:function" (or the function itself, for one
registered in-process); the function has the signature
`run(cfg, attack_run: AttackRun, out_dir: Path, mesh) -> dict` (see `common.py`): it purifies
`attack_run`'s model, writes its run directory under out_dir and returns the final metrics.
DEFENSE_CONFIGS names each defense's config module, whose `get_config(variant)` gives the
`paper` variant by default and whatever variants the matrices ask for (`cpu`, `smoke`).

Defenses from other packages (docs/extending.md): an installed package adds its own through the
entry-point group `backdoor_erasing.defenses` (`name = "module:function"`; the config is that
module's own `get_config`), or `register_defense` inside one Python process.
"""

from __future__ import annotations

from typing import Callable

from backdoor_core.errors import InputError
from backdoor_core.plugins import check_plugin_name, entry_point_plugins, resolve

DEFENSES: dict[str, "str | Callable"] = {
    "dhbe": "experiments.defenses.dhbe:run",
    "dfad": "experiments.defenses.dhbe:run_dfad",
    "pbe": "experiments.defenses.pbe:run_pbe",
    "aft": "experiments.defenses.pbe:run_aft",
    "ft": "experiments.defenses.pbe:run_aft",  # AFT's loop with no adversarial epochs (erase_ft.py)
    "clp": "experiments.defenses.clp:run",
}
DEFENSE_CONFIGS: dict[str, str] = {
    "dhbe": "experiments.configs.erase_dhbe",
    "dfad": "experiments.configs.erase_dhbe",  # DHBE's config; run_dfad sets lam = 0
    "pbe": "experiments.configs.erase_pbe",
    "aft": "experiments.configs.erase_aft",
    "ft": "experiments.configs.erase_ft",
    "clp": "experiments.configs.erase_clp",
}
BUILT_IN = frozenset(DEFENSES)
ENTRY_POINT_GROUP = "backdoor_erasing.defenses"


def register_defense(name: str, run: "str | Callable", config: str) -> None:
    """Makes a defense known as `name` to this process (`experiments.erase.erase_run`, the
    matrix): `run` is the function (or "module:function"), `config` the module whose
    `get_config(variant)` builds its config. A built-in name is refused."""
    check_plugin_name(name, BUILT_IN, "defense")
    if not (callable(run) or isinstance(run, str)) or not isinstance(config, str):
        raise InputError(f"register_defense({name!r}, ...): expected a function or 'module:function' and a "
                         "config module name")
    DEFENSES[name] = run
    DEFENSE_CONFIGS[name] = config


def defense_function(name: str) -> Callable:
    """The run function of defense `name`; InputError if unknown or not importable."""
    if name not in DEFENSES:
        raise InputError(f"unknown defense {name!r}; expected one of {', '.join(DEFENSES)}")
    entry = DEFENSES[name]
    return entry if callable(entry) else resolve(entry, f"defense {name!r}")


def config_module(name: str) -> str:
    """The module whose get_config(variant) builds defense `name`'s config."""
    if name not in DEFENSE_CONFIGS:
        raise InputError(f"unknown defense {name!r}; expected one of {', '.join(DEFENSES)}")
    return DEFENSE_CONFIGS[name]


for _name, _value in entry_point_plugins(ENTRY_POINT_GROUP, BUILT_IN, "defense").items():
    DEFENSES[_name], DEFENSE_CONFIGS[_name] = _value, _value.partition(":")[0]
