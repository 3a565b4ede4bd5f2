"""examples/python_api.py: the library's Python API end to end on an attack run (smoke sizes)."""

import importlib.util
from pathlib import Path

import pytest

from backdoor_core import rundir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"


def load_example():
    spec = importlib.util.spec_from_file_location("python_api_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_python_example_runs_every_step_on_an_attack_run(badnets_run, capsys):
    results = load_example().run_example(badnets_run, smoke=True)
    record = rundir.read_record(badnets_run)
    # The example's evaluation of the teacher is the attack run's own final evaluation.
    for metric in ("test_acc", "asr", "asr_strict", "ra"):
        assert results["teacher"][metric] == pytest.approx(record["metrics"][metric], abs=1e-6)
    target, concentration = results["detection"]
    assert 0 <= target < 10 and 0 < concentration <= 1
    for defense in ("dhbe", "pbe"):  # smoke sizes erase nothing; each step ran and was evaluated
        assert set(results[defense]) == set(results["teacher"]) and 0 <= results[defense]["test_acc"] <= 1
        assert results[defense] != results["teacher"]  # the model changed
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[-4:]] == ["teacher", "detection", "dhbe", "pbe"]


def test_evaluate_refuses_variables_of_another_model(badnets_run):
    import dataclasses

    import jax

    from backdoor_core.errors import InputError
    from backdoor_core.models import init_variables
    from experiments.defenses.common import load_attack_run

    run = load_attack_run(badnets_run)
    other = init_variables(dataclasses.replace(run.spec, width=run.spec.width * 2), jax.random.PRNGKey(0))
    with pytest.raises(InputError, match=r"evaluate: variables \(small_cnn\) do not fit .* differ in shape"):
        run.evaluate(other)
