"""What this installation knows: the models, attacks and defenses by name, built-in and from
plugins (docs/extending.md), with where each comes from and its settings (and, for models, whether
PyTorch weights of their layout import: `backdoor_core/models/torch_import.py`).

  python -m experiments.list

A plugin whose module fails to import is listed as unavailable, with the reason, instead of
stopping the listing: the first thing to run after installing one.
"""

from __future__ import annotations

import dataclasses
import importlib

from backdoor_core.errors import InputError


def _origin(entry, built_in: bool) -> str:
    """'built-in', or the plugin's "module:attribute" (or object name, if registered in-process)."""
    if built_in:
        return "built-in"
    return f"plugin {entry}" if isinstance(entry, str) else f"plugin {getattr(entry, '__module__', '?')}"


def registry_listing() -> dict[str, list[dict]]:
    """{'models' | 'attacks' | 'defenses': [{'name', 'origin', ...}]} of the three registries;
    an entry that cannot be loaded has 'error' instead of its details."""
    from attacks import registry as attacks
    from attacks.base import AttackConfig
    from backdoor_core import models
    from backdoor_core.models.torch_import import STAGE_SIZES
    from experiments import defenses

    out = {"models": [], "attacks": [], "defenses": []}
    for name, entry in models.MODELS.items():
        row = {"name": name, "origin": _origin(entry, name in models.BUILT_IN), "torch_layout": name in STAGE_SIZES}
        try:
            models.model_constructor(name)
        except InputError as e:
            row["error"] = str(e)
        out["models"].append(row)
    for name, entry in attacks.ATTACKS.items():
        row = {"name": name, "origin": _origin(entry, name in attacks.BUILT_IN)}
        try:
            attack = attacks.get_attack(name)
        except InputError as e:
            row["error"] = str(e)
        else:
            row["kind"] = [flag for flag in ("clean_label", "needs_clean_model", "on_the_fly", "custom_training")
                           if getattr(attack, flag)]
            row["params"] = dataclasses.asdict(attack.params(AttackConfig(name=name)))
        out["attacks"].append(row)
    for name, entry in defenses.DEFENSES.items():
        row = {"name": name, "origin": _origin(entry, name in defenses.BUILT_IN),
               "config": defenses.config_module(name)}
        try:
            defenses.defense_function(name)
            variants = getattr(importlib.import_module(row["config"]), "VARIANTS", None)
        except (InputError, ImportError) as e:
            row["error"] = str(e)
        else:
            row["variants"] = sorted(variants) if variants is not None else []
        out["defenses"].append(row)
    return out


def format_listing(listing: dict[str, list[dict]]) -> str:
    """The listing as text, one line per entry under a heading per registry."""
    lines = []
    for section, rows in listing.items():
        lines.append(f"{section} ({len(rows)}):")
        for r in rows:
            if "error" in r:
                detail = f"UNAVAILABLE: {r['error']}"
            elif section == "attacks":
                detail = " ".join([", ".join(r["kind"]) or "static dirty-label",
                                   " ".join(f"{k}={v}" for k, v in r["params"].items())]).strip()
            elif section == "defenses":
                detail = f"config {r['config']}" + (f" (variants: {', '.join(r['variants'])})" if r["variants"] else "")
            else:
                detail = "PyTorch weights: experiments.import_model / export_model" if r.get("torch_layout") else ""
            lines.append(f"  {r['name']:18s} {r['origin']:12s} {detail}".rstrip())
    return "\n".join(lines)


def main(argv=None):
    import argparse

    from experiments.common import run_cli

    # No options: --help prints this module's docstring, anything else is refused by argparse.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    run_cli(lambda: print(format_listing(registry_listing())))


if __name__ == "__main__":
    main()
