"""Defenses runnable by `python -m experiments.erase --defense NAME`.

Each entry maps a short name to "module:function"; the function has the signature
`run(cfg, attack_run: AttackRun, out_dir: Path, mesh) -> dict` (see `common.py`): it purifies
`attack_run`'s model, writes its run directory under out_dir and returns the final metrics.
"""

DEFENSES = {
    "dhbe": "experiments.defenses.dhbe:run",
    "dfad": "experiments.defenses.dhbe:run_dfad",
    "pbe": "experiments.defenses.pbe:run_pbe",
    "aft": "experiments.defenses.pbe:run_aft",
    "ft": "experiments.defenses.pbe:run_aft",  # AFT's loop with no adversarial epochs (erase_ft.py)
    "clp": "experiments.defenses.clp:run",
}
