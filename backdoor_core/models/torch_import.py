"""Weights of PyTorch CIFAR ResNets, as the field's code saves them, in this library's models.

Researchers who already have backdoored models trained with the PyTorch toolboxes can erase
their backdoors here without training them again. Supported layouts (state_dict key names):

  preact_resnet18  the kuangliu / BackdoorBench / PBE `PreActResNet18`: conv1, layer{1-4}.{b}.
                   {bn1, conv1, bn2, conv2, shortcut.0}, linear; layer4's output is pooled directly
                   (a state_dict with a final `bn.*` is another architecture and is refused).
  resnet18/34      the kuangliu / DFAD / DHBE CIFAR `ResNet18` (`resnet_8x`): conv1, bn1,
                   layer{1-4}.{b}.{conv1, bn1, conv2, bn2, shortcut.0, shortcut.1}, linear.
  wrn16_1 ... 40_2 the DFAD / DHBE `WideResNet` (`wresnet.py`, no dropout at inference): conv1,
                   block{1-3}.layer.{b}.{bn1, conv1, bn2, conv2, convShortcut}, bn1, fc.

`export_state_dict` goes the other way, for a purified model evaluated in PyTorch code.

Steps of `convert_state_dict`:
  1. read the arrays (`read_state_dict`: a .npz of numpy arrays, or a torch file when torch is
     installed; a `module.` prefix of DataParallel and a wrapping {'model' | 'state_dict': ...}
     are removed);
  2. infer the width multiplier (stem channels / 64, WRN: / 16) and the number of classes (the
     classifier's rows);
  3. map each tensor to its parameter: conv [O, I, kh, kw] -> kernel [kh, kw, I, O], linear
     [out, in] -> kernel [in, out], BatchNorm weight/bias -> scale/bias and running_mean/var ->
     batch_stats mean/var (num_batches_tracked is dropped);
  4. check that every parameter of the model got a tensor of its shape and every tensor was used.

The PyTorch models take normalised inputs; ours normalise in their first layer, so the mean and
std the PyTorch training used must be given (BackdoorBench's CIFAR-10: mean (0.4914, 0.4822,
0.4465), std (0.247, 0.243, 0.261)). The convolutions pad like PyTorch's (1 pixel each side), so
the logits agree to float rounding (tests/test_torch_import.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from backdoor_core.errors import InputError
from backdoor_core.models import ModelSpec, init_variables

STAGE_SIZES = {"preact_resnet18": (2, 2, 2, 2), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3),
               **{f"wrn{d}_{k}": (((d - 4) // 6),) * 3 for d, k in ((16, 1), (16, 2), (16, 4), (40, 1), (40, 2))}}


def is_wrn(name: str) -> bool:
    return name.startswith("wrn")


def base_channels(name: str) -> int:
    """Stem channels at width 1 (the width multiplier is the stem's channels over this)."""
    return 16 if is_wrn(name) else 64


def classifier_key(name: str) -> str:
    return "fc" if is_wrn(name) else "linear"


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Step 1: {torch key: float32 array} from a .npz, or a .pt/.pth/.pth.tar/.bin torch file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist; expected a PyTorch state_dict (.pt/.pth) or an .npz")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                state = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise InputError(f"weights file {path} is not a readable .npz ({e})") from None
    else:
        state = _read_torch_file(path)
    for wrapper in ("state_dict", "model", "net"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    arrays = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        arrays[key] = value.astype(np.float32) if value.dtype.kind == "f" else value
    return arrays


def _read_torch_file(path: Path) -> dict:
    """A torch-saved dict (weights only); InputError if torch is missing or the file is not one."""
    try:
        import torch
    except ImportError:
        raise InputError(f"{path} is not an .npz, and reading it as a PyTorch file needs torch, which is not "
                         "installed; install torch, or save the state_dict as an .npz: "
                         "np.savez(out, **{k: v.numpy() for k, v in sd.items()})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (pickle, zip, unpickling refused)
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split(". ")[0].strip()  # torch's text has ANSI codes
        raise InputError(f"{path} could not be read as a PyTorch state_dict ({type(e).__name__}: {first}); "
                         "only tensors are loaded (weights_only): "
                         "save the state_dict alone, e.g. torch.save(result['model'], 'model.pt') for "
                         "BackdoorBench's attack_result.pt") from None
    if not isinstance(state, dict):
        raise InputError(f"{path} holds a {type(state).__name__}, not a state_dict; save model.state_dict()")
    return state


def infer_architecture(state: dict[str, np.ndarray], name: str) -> tuple[float, int]:
    """Step 2: (width multiplier, number of classes) of a state_dict of architecture `name`."""
    head = f"{classifier_key(name)}.weight"
    for key in ("conv1.weight", head):
        if key not in state:
            raise InputError(f"the state_dict has no {key!r}; expected the {name} layout of "
                             f"backdoor_core/models/torch_import.py; found {_sample(state)}")
    return state["conv1.weight"].shape[0] / base_channels(name), int(state[head].shape[0])


def _sample(state: dict, n: int = 6) -> str:
    keys = sorted(state)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "")


def _bn(flax_path: tuple[str, ...], torch_prefix: str) -> list[tuple[str, tuple, str, str]]:
    """The four (collection, flax path, torch key, transform) rows of one BatchNorm."""
    return [("params", (*flax_path, "scale"), f"{torch_prefix}.weight", "copy"),
            ("params", (*flax_path, "bias"), f"{torch_prefix}.bias", "copy"),
            ("batch_stats", (*flax_path, "mean"), f"{torch_prefix}.running_mean", "copy"),
            ("batch_stats", (*flax_path, "var"), f"{torch_prefix}.running_var", "copy")]


def _block_rows(flax_block: str, torch_block: str) -> list[tuple[str, tuple, str, str]]:
    """The rows of a basic block's two 3x3 convolutions and two BatchNorms (conv1/bn1 and
    conv2/bn2 there are Conv_0/BatchNorm_0 and Conv_1/BatchNorm_1 here, in every layout)."""
    return [("params", (flax_block, "Conv_0", "kernel"), f"{torch_block}.conv1.weight", "conv"),
            ("params", (flax_block, "Conv_1", "kernel"), f"{torch_block}.conv2.weight", "conv"),
            *_bn((flax_block, "BatchNorm_0"), f"{torch_block}.bn1"),
            *_bn((flax_block, "BatchNorm_1"), f"{torch_block}.bn2")]


def _post_activation(name: str) -> bool:
    """Whether `name` is the post-activation ResNet (BasicBlock, BN after the stem and in shortcuts)."""
    return not (name.startswith("preact") or is_wrn(name))


def _blocks(name: str) -> list[tuple[str, str]]:
    """(flax block name, torch block prefix) of every residual block of `name`, in order: the
    kuangliu ResNets' `layerS.B` and the DFAD/DHBE WideResNet's `blockG.layer.B`; the WideResNet's
    blocks are our PreActBlock (the projection shortcut reads relu(bn1(x)) in both)."""
    flax_name = "BasicBlock" if _post_activation(name) else "PreActBlock"
    torch_name = (lambda s, b: f"block{s + 1}.layer.{b}") if is_wrn(name) else (lambda s, b: f"layer{s + 1}.{b}")
    torch_blocks = [torch_name(stage, b) for stage, blocks in enumerate(STAGE_SIZES[name]) for b in range(blocks)]
    return [(f"{flax_name}_{index}", torch_block) for index, torch_block in enumerate(torch_blocks)]


def _shortcut_blocks(flat: dict) -> set[str]:
    """Names of the blocks with a projection shortcut among the flattened {(collection, *path): leaf}
    variables of one of our models."""
    return {path[1] for path in flat if path[0] == "params" and len(path) > 3 and path[2] in ("shortcut", "shortcut_conv")}


def _shortcut_rows(name: str, flax_block: str, torch_block: str) -> list[tuple[str, tuple, str, str]]:
    """The rows of one block's projection shortcut: a 1x1 convolution (`convShortcut` in the
    WideResNet, `shortcut.0` in the kuangliu ResNets), followed by a BatchNorm in the post-activation ResNet."""
    if is_wrn(name):
        return [("params", (flax_block, "shortcut", "kernel"), f"{torch_block}.convShortcut.weight", "conv")]
    if name.startswith("preact"):
        return [("params", (flax_block, "shortcut", "kernel"), f"{torch_block}.shortcut.0.weight", "conv")]
    return [("params", (flax_block, "shortcut_conv", "kernel"), f"{torch_block}.shortcut.0.weight", "conv"),
            *_bn((flax_block, "shortcut_bn"), f"{torch_block}.shortcut.1")]


def layout(name: str, shortcut_blocks: set[str]) -> list[tuple[str, tuple, str, str]]:
    """Step 3's table for architecture `name`: (collection, flax path, torch key, transform) rows;
    `shortcut_blocks` names the (flax) blocks with a projection shortcut. The post-activation
    ResNet has a BatchNorm after its stem (`bn1`), the WideResNet one before its head (also `bn1`)."""
    if name not in STAGE_SIZES:
        raise InputError(f"no PyTorch layout for model {name!r}; expected one of {', '.join(STAGE_SIZES)}")
    wrn = is_wrn(name)
    rows = [("params", ("stem", "kernel"), "conv1.weight", "conv")]
    if _post_activation(name):
        rows += _bn(("stem_bn",), "bn1")
    for flax_block, torch_block in _blocks(name):
        rows += _block_rows(flax_block, torch_block)
        if flax_block in shortcut_blocks:
            rows += _shortcut_rows(name, flax_block, torch_block)
    if wrn:
        rows += _bn(("final_bn",), "bn1")
    head = "fc" if wrn else "linear"
    return rows + [("params", ("classifier", "kernel"), f"{head}.weight", "linear"),
                   ("params", ("classifier", "bias"), f"{head}.bias", "copy")]


TRANSFORMS = {"copy": lambda a: a, "conv": lambda a: a.transpose(2, 3, 1, 0), "linear": lambda a: a.T}
INVERSE = {"copy": lambda a: a, "conv": lambda a: a.transpose(3, 2, 0, 1), "linear": lambda a: a.T}


def convert_state_dict(state: dict[str, np.ndarray], name: str, image_shape: tuple[int, int, int],
                       mean, std) -> tuple[ModelSpec, dict]:
    """Steps 2-4: (spec, {'params', 'batch_stats'}) of model `name` holding the PyTorch weights
    `state`, for inputs of `image_shape` normalised by (mean, std) in the PyTorch training."""
    width, num_classes = infer_architecture(state, name)
    spec = ModelSpec(name, num_classes, tuple(int(s) for s in image_shape), width,
                     tuple(float(m) for m in mean), tuple(float(s) for s in std))
    like = jax.eval_shape(lambda: init_variables(spec, jax.random.PRNGKey(0)))
    flat = {(collection, *path): leaf for collection in like for path, leaf in
            traverse_util.flatten_dict(like[collection]).items()}
    rows = layout(name, _shortcut_blocks(flat))
    used, values = set(), {}
    for collection, path, key, transform in rows:
        if key not in state:
            raise InputError(f"the {name} state_dict has no {key!r} (for {'/'.join(path)}); "
                             f"expected the layout of backdoor_core/models/torch_import.py; found {_sample(state)}")
        value = TRANSFORMS[transform](np.asarray(state[key], np.float32))
        expected = flat.get((collection, *path))
        if expected is None or tuple(value.shape) != tuple(expected.shape):
            raise InputError(f"{key} has shape {tuple(state[key].shape)}; {name} at width {width:g} with "
                             f"{num_classes} classes expects {None if expected is None else expected.shape} "
                             f"for {'/'.join(path)} (after {transform}): another architecture or input size?")
        values[(collection, *path)] = np.ascontiguousarray(value)
        used.add(key)
    missing = sorted("/".join(p) for p in set(flat) - set(values))
    if missing:
        raise InputError(f"no tensor of the state_dict fills {', '.join(missing[:5])}; another architecture?")
    unused = sorted(k for k in set(state) - used if not k.endswith("num_batches_tracked"))
    if unused:
        raise InputError(f"the state_dict has tensors {name} has no place for: {', '.join(unused[:6])}"
                         f"{' ...' if len(unused) > 6 else ''}; another architecture (e.g. a final BN)?")
    variables = {collection: traverse_util.unflatten_dict({p[1:]: v for p, v in values.items() if p[0] == collection})
                 for collection in like}
    return spec, variables


def export_state_dict(variables: dict, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The inverse of `convert_state_dict`: {torch key: array} of a model of a supported
    architecture, for the PyTorch module of the same layout (`model.load_state_dict` with
    `torch.from_numpy` of each array; BatchNorm's num_batches_tracked are 0). The model's
    normalisation (spec.mean/std) is not in a state_dict: the PyTorch side applies it to its inputs."""
    flat = {(collection, *path): np.asarray(leaf) for collection in ("params", "batch_stats")
            for path, leaf in traverse_util.flatten_dict(variables.get(collection, {})).items()}
    state = {}
    for collection, path, key, transform in layout(spec.name, _shortcut_blocks(flat)):
        state[key] = np.ascontiguousarray(INVERSE[transform](flat[(collection, *path)]), np.float32)
        if key.endswith(".running_var"):
            state[key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return state
