"""Models, attacks and defenses from other packages: the example plugin (examples/plugin),
installed the way pip installs it (a dist-info folder with its declared entry points), is known
by name to the attack and erase command lines; in-process registration; names that would break
run directories or replace a built-in are refused."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from backdoor_core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"


def install_plugin(site: Path) -> None:
    """What `pip install examples/plugin` leaves for importlib.metadata: a dist-info folder with
    METADATA and the entry points pyproject.toml declares (the module itself is on PYTHONPATH)."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    sections = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
                for group, eps in project["entry-points"].items()]
    (info / "entry_points.txt").write_text("\n".join(sections))


def run(args, site: Path, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN), str(ROOT), os.environ["PYTHONPATH"]])}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_an_installed_plugins_attack_and_defense_run_from_the_command_lines(tmp_path, mnist_subset):
    train, test = mnist_subset
    pick = np.random.default_rng(0).permutation(len(train))[:2000]
    data = tmp_path / "digits.npz"
    np.savez(data, x_train=train.images[pick], y_train=train.labels[pick], x_test=test.images[:300],
             y_test=test.labels[:300])
    site = tmp_path / "site"
    install_plugin(site)

    teacher = tmp_path / "corner"
    proc = run(["experiments.attack", "--attack", "corner_dot", "--dataset", str(data), "--model", "lenet_bn",
                "--width", "1", "--out", str(teacher), "--config.params.corner_dot.size=3",
                "--config.train.epochs=2", "--config.train.batch_size=64", "--config.train.learning_rate=0.05",
                "--config.train.hflip=False", "--config.num_devices=1", "--config.num_examples=0"], site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((teacher / "record.json").read_text())
    assert record["attack"]["name"] == "corner_dot" and record["attack"]["params"] == {"size": 3, "color": 1.0}
    assert record["model"]["name"] == "lenet_bn"
    trigger = json.loads((teacher / "trigger.json").read_text())
    assert trigger["kind"] == "masked_pattern"  # reloads without the plugin
    mask = np.load(teacher / "trigger.npz")["mask"][..., 0]
    assert mask[:3, :3].all() and mask.sum() == 9
    assert record["metrics"]["asr"] > 0.5  # the plugin's trigger was learnt through the library's training

    out = tmp_path / "corner-clp_u2"
    proc = run(["experiments.erase", "--defense", "clp_u2", "--run", str(teacher), "--out", str(out)], site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    purified = json.loads((out / "record.json").read_text())
    assert purified["status"] == "complete" and purified["defense"] == "clp_u2"
    assert purified["config"]["defense"]["clp"] == {"u": 2.0} and {"asr", "test_acc", "der"} <= set(purified["metrics"])
    assert purified["pruned_channels"] > 0  # CLP found the plugin model's conv -> BN pairs

    proc = run(["experiments.erase", "--defense", "clp_u3", "--run", str(teacher)], site)
    assert proc.returncode == 2 and "unknown defense 'clp_u3'; expected one of dhbe" in proc.stderr
    assert "clp_u2" in proc.stderr and "Traceback" not in proc.stderr


def test_in_process_registration_and_refused_names(monkeypatch):
    from attacks import registry
    from attacks.badnets import BADNETS
    from backdoor_core import models
    from backdoor_core.models.small_cnn import SmallCNN
    from experiments import defenses
    from experiments.run import load_config

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register_model("my_cnn", SmallCNN)
    models.register_model("my_cnn_by_path", "backdoor_core.models.small_cnn:SmallCNN")
    spec = models.ModelSpec("my_cnn_by_path", 10, (28, 28, 1), 0.5)
    assert isinstance(models.build_model(spec), SmallCNN) and models.model_constructor("my_cnn") is SmallCNN
    with pytest.raises(InputError, match="'small_cnn' is built in"):
        models.register_model("small_cnn", SmallCNN)

    monkeypatch.setattr(registry, "ATTACKS", dict(registry.ATTACKS))
    monkeypatch.setattr(defenses, "DEFENSES", dict(defenses.DEFENSES))
    monkeypatch.setattr(defenses, "DEFENSE_CONFIGS", dict(defenses.DEFENSE_CONFIGS))

    registry.register_attack("my_badnets", BADNETS)
    assert registry.get_attack("my_badnets") is BADNETS
    registry.register_attack("my_blended", "attacks.blended:BLENDED")
    assert registry.get_attack("my_blended").name == "blended"
    registry.register_attack("not_an_attack", "attacks.blended:BlendedParams")
    with pytest.raises(InputError, match="expected an attacks.base.Attack instance"):
        registry.get_attack("not_an_attack")
    with pytest.raises(InputError, match="'badnets' is built in"):
        registry.register_attack("badnets", BADNETS)
    with pytest.raises(InputError, match="letters, digits and underscores"):
        registry.register_attack("my-attack", BADNETS)

    def noop(cfg, attack_run, out_dir, mesh):
        return {}

    defenses.register_defense("noop", noop, "experiments.configs.erase_clp")
    assert defenses.defense_function("noop") is noop
    assert load_config(defenses.config_module("noop"), "cpu").defense == "clp"
    with pytest.raises(InputError, match="'dhbe' is built in"):
        defenses.register_defense("dhbe", noop, "experiments.configs.erase_clp")
    with pytest.raises(InputError, match="unknown defense 'nope'"):
        defenses.defense_function("nope")


def test_a_plugin_with_a_bad_name_is_left_out_with_a_warning(tmp_path):
    info = tmp_path / "bad_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[backdoor_erasing.attacks]\nbadnets = x:Y\nok_name = attacks.badnets:BADNETS\n")
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from attacks.registry import ATTACKS, get_attack\n"
            "print(ATTACKS['badnets'], get_attack('ok_name').name)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["attacks.badnets:BADNETS", "badnets"]
    assert "'badnets' is built in" in proc.stderr


def test_the_listing_shows_every_registry_and_a_broken_plugin_as_unavailable(monkeypatch):
    """`python -m experiments.list`: built-ins and plugins with their origin and settings; a plugin
    whose module is missing is listed as unavailable with the reason, and the rest still listed."""
    from attacks import registry
    from backdoor_core import models
    from experiments import defenses
    from experiments.list import format_listing, registry_listing

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(registry, "ATTACKS", dict(registry.ATTACKS))
    monkeypatch.setattr(defenses, "DEFENSES", dict(defenses.DEFENSES))
    monkeypatch.setattr(defenses, "DEFENSE_CONFIGS", dict(defenses.DEFENSE_CONFIGS))
    registry.register_attack("gone", "no_such_module:ATTACK")
    registry.register_attack("my_blended", "attacks.blended:BLENDED")
    defenses.register_defense("my_clp", "experiments.defenses.clp:run", "experiments.configs.erase_clp")
    models.register_model("gone_model", "no_such_module:Net")

    listing = registry_listing()
    attacks = {r["name"]: r for r in listing["attacks"]}
    assert attacks["badnets"]["origin"] == "built-in" and attacks["badnets"]["params"]["size"] == 3
    assert attacks["lc"]["kind"] == ["clean_label", "needs_clean_model"]
    assert attacks["my_blended"]["origin"] == "plugin attacks.blended:BLENDED"
    assert "no_such_module is not available" in attacks["gone"]["error"]
    defense = {r["name"]: r for r in listing["defenses"]}["my_clp"]
    assert defense["config"] == "experiments.configs.erase_clp" and defense["variants"] == ["cpu", "paper", "smoke"]
    listed_models = {r["name"]: r for r in listing["models"]}
    assert "error" in listed_models["gone_model"]
    assert listed_models["wrn16_2"]["torch_layout"] and not listed_models["small_cnn"]["torch_layout"]
    text = format_listing(listing)
    assert "attacks (11):" in text and "UNAVAILABLE: attack 'gone' is registered but its module" in text
    assert "  my_clp " in text and "(variants: cpu, paper, smoke)" in text
    assert "PyTorch weights: experiments.import_model" in text
