"""PyTorch weights in our models: the converted model gives the torch model's logits, other
layouts are refused by name, and the import command writes an attack run the defenses read."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from backdoor_core.errors import InputError
from backdoor_core.models import build_model
from backdoor_core.models.torch_import import convert_state_dict, export_state_dict, read_state_dict
from tests.torch_reference import FIXTURES, MEAN, STD, WIDTHS

ARCHS = tuple(WIDTHS)


def fixture(arch):
    """(state_dict, images, torch logits) of tests/data/torch_<arch>.npz (tests/torch_reference.py)."""
    with np.load(FIXTURES / f"torch_{arch}.npz") as f:
        state = {k[len("sd/"):]: f[k] for k in f.files if k.startswith("sd/")}
        return state, f["images"], f["logits"]


@pytest.mark.parametrize("arch", ARCHS)
def test_imported_weights_give_the_torch_models_logits(arch):
    state, images, logits = fixture(arch)
    spec, variables = convert_state_dict(state, arch, (32, 32, 3), MEAN, STD)
    assert (spec.width, spec.num_classes) == (WIDTHS[arch], 10)
    ours = np.asarray(build_model(spec).apply(variables, images, train=False))
    np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-5 * np.abs(logits).max())
    # The BatchNorm statistics matter: without them the logits are other ones.
    zeroed = jax.tree_util.tree_map(np.zeros_like, variables["batch_stats"])
    other = np.asarray(build_model(spec).apply({**variables, "batch_stats": zeroed}, images, train=False))
    assert np.abs(other - logits).max() > 100 * np.abs(ours - logits).max()


@pytest.mark.parametrize("arch", ARCHS)
def test_export_gives_back_the_state_dict_it_was_imported_from(arch):
    state, _, _ = fixture(arch)  # an untrained torch model: its num_batches_tracked are 0
    spec, variables = convert_state_dict(state, arch, (32, 32, 3), MEAN, STD)
    exported = export_state_dict(variables, spec)
    assert sorted(exported) == sorted(state)
    assert all(exported[k].dtype == state[k].dtype and np.array_equal(exported[k], state[k]) for k in state)


def test_an_exported_model_gives_our_logits_in_torch():
    torch = pytest.importorskip("torch")
    from tests.torch_reference import randomised_model, torch_logits

    state, images, _ = fixture("preact_resnet18")
    spec, variables = convert_state_dict(state, "preact_resnet18", (32, 32, 3), MEAN, STD)
    variables = jax.tree_util.tree_map(lambda a: a * 1.1, variables)  # another model than the fixture's
    model = randomised_model("preact_resnet18", seed=1)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in export_state_dict(variables, spec).items()})
    ours = np.asarray(build_model(spec).apply(variables, images, train=False))
    np.testing.assert_allclose(torch_logits(model, images), ours, rtol=1e-4, atol=1e-5 * np.abs(ours).max())


def test_a_wrapped_prefixed_state_dict_reads_the_same(tmp_path):
    state, _, _ = fixture("preact_resnet18")
    np.savez(tmp_path / "sd.npz", **{f"module.{k}": v for k, v in state.items()})
    read = read_state_dict(tmp_path / "sd.npz")
    assert sorted(read) == sorted(state) and all(np.array_equal(read[k], state[k]) for k in state)


def test_a_torch_file_is_read_when_torch_is_installed(tmp_path):
    torch = pytest.importorskip("torch")
    state, _, _ = fixture("resnet18")
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}}, tmp_path / "m.pt")
    read = read_state_dict(tmp_path / "m.pt")
    assert sorted(read) == sorted(state) and all(np.array_equal(read[k], state[k]) for k in state)
    torch.save({"model": {}, "bd_train": InputError("an object")}, tmp_path / "result.pt")  # not tensors only
    with pytest.raises(InputError, match=r"Weights only load failed\); .*save the state_dict alone"):
        read_state_dict(tmp_path / "result.pt")


def test_other_layouts_are_refused_by_name(tmp_path):
    state, _, _ = fixture("preact_resnet18")
    with pytest.raises(InputError, match=r"no 'bn1.weight' \(for stem_bn/scale\)"):
        convert_state_dict(state, "resnet18", (32, 32, 3), MEAN, STD)  # a PreAct state_dict as a ResNet
    with pytest.raises(InputError, match="no place for: bn.bias, bn.weight"):  # a PreAct-ResNet with a final BN
        convert_state_dict({**state, "bn.weight": np.ones(32), "bn.bias": np.zeros(32)}, "preact_resnet18",
                           (32, 32, 3), MEAN, STD)
    with pytest.raises(InputError, match=r"conv1.weight has shape \(4, 3, 3, 3\).*expects \(3, 3, 1, 4\)"):
        convert_state_dict(state, "preact_resnet18", (28, 28, 1), (0.5,), (0.5,))  # grey inputs
    with pytest.raises(InputError, match="has no 'linear.weight'"):
        convert_state_dict({k: v for k, v in state.items() if not k.startswith("linear")}, "preact_resnet18",
                           (32, 32, 3), MEAN, STD)
    wrn, _, _ = fixture("wrn16_2")
    with pytest.raises(InputError, match=r"block1.layer.0.conv1.weight has shape \(8, 4, 3, 3\).*expects \(3, 3, 4, 4\)"):
        convert_state_dict(wrn, "wrn16_1", (32, 32, 3), MEAN, STD)  # WRN-16-2 weights as WRN-16-1
    with pytest.raises(InputError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "bad.npz").write_text("not an npz")
    with pytest.raises(InputError, match="not a readable .npz"):
        read_state_dict(tmp_path / "bad.npz")


@pytest.fixture
def digits_rgb(tmp_path, mnist_subset):
    """The shipped digits padded to 32x32 and repeated over 3 channels (an .npz dataset)."""
    train, test = mnist_subset
    rng = np.random.default_rng(0)
    a, b = rng.permutation(len(train))[:600], rng.permutation(len(test))[:200]
    rgb = lambda x: np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
    path = tmp_path / "digits_rgb.npz"
    np.savez(path, x_train=rgb(train.images[a]), y_train=train.labels[a], x_test=rgb(test.images[b]),
             y_test=test.labels[b])
    return path


def import_cmd(weights, dataset, out, *extra, mean=True):
    norm = [f"--config.mean={MEAN}", f"--config.std={STD}"] if mean else []
    return [sys.executable, "-m", "experiments.import_model", f"--config.weights={weights}",
            f"--config.dataset={dataset}", f"--config.out={out}", *norm, *extra]


def test_the_import_command_writes_an_attack_run_the_defenses_read(tmp_path, digits_rgb):
    from experiments.defenses.common import load_attack_run
    from experiments.erase import erase_run

    state, _, _ = fixture("preact_resnet18")
    weights = tmp_path / "model.npz"
    np.savez(weights, **state)
    run = tmp_path / "imported"
    done = subprocess.run(import_cmd(weights, digits_rgb, run, "--config.attack=badnets"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir()) == ["examples.png", "model", "record.json", "trigger.json",
                                                      "trigger.npz"]
    record = json.loads((run / "record.json").read_text())
    assert record["kind"] == "attack" and record["status"] == "complete"
    assert record["model"]["width"] == 1 / 16 and record["model"]["mean"] == list(MEAN)
    assert len(record["imported_from"]["sha256"]) == 64 and record["attack"]["params"]["size"] == 3
    loaded = load_attack_run(run)  # what every defense reads
    assert loaded.evaluate(loaded.variables) == record["metrics"]
    # The trigger is BadNets' white 3x3 square in the bottom-right corner, and nothing else.
    changed = np.any(loaded.triggered.images != loaded.triggered.clean_images, axis=(0, 3))
    assert set(zip(*np.nonzero(changed))) <= {(i, j) for i in range(29, 32) for j in range(29, 32)}
    purified = tmp_path / "clp"
    erase_run("clp", str(run), None, str(purified))
    assert json.loads((purified / "record.json").read_text())["teacher_metrics"] == record["metrics"]

    # ... and the purified model goes back to PyTorch's layout: the teacher's tensors, pruned.
    export = [sys.executable, "-m", "experiments.export_model", f"--run={purified}", f"--out={tmp_path / 'p.npz'}"]
    done = subprocess.run(export, capture_output=True, text=True)
    assert done.returncode == 0 and "normalise its inputs with mean [0.4914" in done.stdout, done.stderr[-2000:]
    with np.load(tmp_path / "p.npz") as f:
        exported = {k: f[k] for k in f.files}
    assert sorted(exported) == sorted(state)
    changed = [k for k in state if not np.array_equal(exported[k], state[k])]
    assert changed and all(".bn" in k for k in changed)  # CLP zeroes BN channels only
    again = subprocess.run(export, capture_output=True, text=True)
    assert again.returncode == 2 and "nothing is overwritten" in again.stderr


@pytest.mark.parametrize("extra, mean, message", [
    ((), False, "--config.mean and --config.std are not set"),
    (("--config.attack=wanet",), True, "trigger is drawn at random when the attack ran"),
    (("--config.attack=lc",), True, "made with a clean model"),
    (("--config.model=resnet18",), True, "has no 'bn1.weight'"),
])
def test_bad_imports_stop_with_one_line_and_write_nothing(tmp_path, digits_rgb, extra, mean, message):
    state, _, _ = fixture("preact_resnet18")
    np.savez(tmp_path / "model.npz", **state)
    out = tmp_path / "imported"
    done = subprocess.run(import_cmd(tmp_path / "model.npz", digits_rgb, out, *extra, mean=mean),
                          capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_an_existing_output_is_never_overwritten(tmp_path, digits_rgb):
    state, _, _ = fixture("preact_resnet18")
    np.savez(tmp_path / "model.npz", **state)
    out = tmp_path / "imported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = subprocess.run(import_cmd(tmp_path / "model.npz", digits_rgb, out), capture_output=True, text=True)
    assert done.returncode == 2 and "nothing is overwritten" in done.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
