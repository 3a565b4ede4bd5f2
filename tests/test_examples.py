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


def test_the_python_example_runs_every_step_on_an_attack_run(badnets_run, capsys, mesh1):
    from test_dhbe import TINY as DHBE_TINY
    from test_pbe import DETECT, PBE_TINY

    example = load_example()
    # The other tests' tiny configs on one device, so that this test reuses the programs they
    # compile (the same architecture and shapes): with the example's --smoke configs on the default
    # mesh it compiled its own, ~30 s of its ~55 s in a test session on the 2-core CPU.
    results = example.run_example(badnets_run, {"dhbe": DHBE_TINY, "pbe": PBE_TINY, "detect": DETECT}, mesh1)
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
    # --smoke's and the full settings are valid configs of each step (what main() passes).
    for configs in (example.SMOKE, example.FULL):
        assert [type(configs[k]) for k in ("dhbe", "pbe", "detect")] == [type(DHBE_TINY), type(PBE_TINY), type(DETECT)]
        configs["dhbe"].validate((28, 28, 1))
        configs["pbe"].validate(3000)
        configs["detect"].validate()
    # --smoke: one PBE epoch in every round, round 0 too (it inherited the cpu config's 10 until 2026-12-07)
    assert [len(example.SMOKE["pbe"].round_epochs(r)) for r in range(example.SMOKE["pbe"].rounds)] == [1, 1]


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
