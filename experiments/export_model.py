"""Exports the model of any run directory (a teacher, a purified model) as a PyTorch state_dict.

  python -m experiments.export_model --run RUN_DIR --out model.pt    # torch installed
  python -m experiments.export_model --run RUN_DIR --out model.npz   # no torch needed

For the PyTorch module of the same layout (`backdoor_core/models/torch_import.py`: kuangliu /
BackdoorBench PreActResNet18, CIFAR ResNet18/34, DFAD's WideResNets), e.g. to evaluate a purified
model with another toolbox: `model.load_state_dict(torch.load("model.pt"))`, or from the .npz
`{k: torch.from_numpy(v) for k, v in np.load("model.npz").items()}`. Our models normalise their
input in their first layer; the PyTorch module does not, so its inputs must be normalised with the
mean and std this command prints. An existing --out is never overwritten.
"""

from __future__ import annotations

import json

from absl import app, flags

from backdoor_core import rundir
from backdoor_core.errors import InputError
from backdoor_core.models.torch_import import STAGE_SIZES, export_state_dict
from experiments.common import output_dir, run_cli


def export_model(run: str, out: str) -> dict:
    """Writes the state_dict of run's model to out (.pt or .npz); returns the arrays written."""
    import numpy as np

    target = output_dir(out)
    if target.suffix not in (".pt", ".pth", ".npz"):
        raise InputError(f"--out {out}: expected a .pt, .pth or .npz file name")
    if target.exists():
        raise InputError(f"{target} exists; nothing is overwritten: choose a new --out")
    spec, _, variables = rundir.load_model(output_dir(run))
    if spec.name not in STAGE_SIZES:
        raise InputError(f"{run} holds a {spec.name}; PyTorch layouts exist for {', '.join(STAGE_SIZES)}")
    state = export_state_dict(variables, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".npz":
        np.savez(target, **state)
    else:
        try:
            import torch
        except ImportError:
            raise InputError(f"--out {out} is a torch file and torch is not installed; use an .npz") from None
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, target)
    print(f"exported {spec.name} (width {spec.width:g}, {spec.num_classes} classes) to {target}; "
          f"normalise its inputs with mean {json.dumps(list(spec.mean))} and std {json.dumps(list(spec.std))}")
    return state


def main():
    run = flags.DEFINE_string("run", None, "run directory whose model/ to export")
    out = flags.DEFINE_string("out", None, "output file: .pt/.pth (needs torch) or .npz")
    flags.mark_flags_as_required(["run", "out"])
    app.run(lambda argv: run_cli(lambda: export_model(run.value, out.value)))


if __name__ == "__main__":
    main()
