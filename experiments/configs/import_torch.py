"""Config for `python -m experiments.import_model`: a PyTorch-trained backdoored CIFAR ResNet as
an attack run directory, ready for `python -m experiments.erase`.

  python -m experiments.import_model --config experiments/configs/import_torch.py \
      --config.weights=attack_result.pt --config.model=preact_resnet18 \
      --config.dataset=../shared/data/cifar10.tar.gz --config.attack=badnets \
      "--config.mean=(0.4914, 0.4822, 0.4465)" "--config.std=(0.247, 0.243, 0.261)" \
      --config.out=~/runs/imported_badnets

`mean`/`std`: the normalisation the PyTorch training applied to [0, 1] pixels (above:
BackdoorBench's CIFAR-10). The attack settings (`attack`, `target`, `mode`, `params.<attack>`)
describe the backdoor the model was trained with: they build the trigger used to measure ASR
(`poisoning=per_batch` for a model trained as the official PBE code trains its teachers).
Triggers that cannot be rebuilt from settings alone (WaNet's grid and Blended's noise, drawn from
a seed; TrojanNN, LC and LF, made with a clean model; IAD's generator) come from `trigger_from`, a
run directory (or folder) holding trigger.json and trigger.npz.
"""

import ml_collections

from experiments.configs import attack_base


def get_config():
    base = attack_base.get_config()
    c = ml_collections.ConfigDict()
    c.weights = ml_collections.config_dict.placeholder(str)  # .pt/.pth (torch installed) or .npz state_dict
    c.model = "preact_resnet18"  # preact_resnet18 | resnet18 | resnet34 | wrn16_1 ... wrn40_2 (torch_import.py)
    c.dataset = "../shared/data/cifar10.tar.gz"
    c.mean = ml_collections.config_dict.placeholder(tuple)  # the PyTorch training's normalisation
    c.std = ml_collections.config_dict.placeholder(tuple)
    c.out = "~/runs/imported"
    for key in ("attack", "target", "mode", "poison_ratio", "ratio_of", "seed", "params", "poisoning",
                "num_devices", "num_examples"):
        c[key] = base[key]
    c.trigger_from = ml_collections.config_dict.placeholder(str)  # a folder with trigger.json + trigger.npz
    return c
