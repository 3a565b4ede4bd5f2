"""Bad input to the Python API (the library functions a user calls without the command lines):
one InputError naming what was wrong and what was expected, before anything runs."""

import dataclasses

import flax
import jax
import numpy as np
import pytest

from backdoor_core.data import Split
from backdoor_core.errors import InputError
from backdoor_core.models import ModelSpec, build_model, check_variables_fit, init_variables
from baselines.clp import clp
from dhbe_jax import DHBEConfig
from dhbe_jax.erase import erase
from pbe_jax import AFTConfig, PBEConfig, detect
from pbe_jax.aft import aft
from pbe_jax.pbe import pbe

SPEC = ModelSpec("small_cnn", 10, (28, 28, 1), 0.5, (0.1,), (0.3,))
IMAGES = np.zeros((200, 28, 28, 1), np.uint8)
SPLIT = Split(IMAGES, np.arange(200, dtype=np.int32) % 10, tuple(map(str, range(10))), "zeros")


def test_variables_that_do_not_fit_the_model_are_named_before_any_defense_runs():
    """Variables of another width, without batch_stats, or not a variables dict are one InputError
    naming what differs, from the library function a Python user calls (each fails inside flax
    without the check); the model's own variables pass."""
    spec = SPEC
    module, variables = build_model(spec), init_variables(spec, jax.random.PRNGKey(0))
    wider = init_variables(dataclasses.replace(spec, width=1.0), jax.random.PRNGKey(0))
    check_variables_fit(module, variables, spec.image_shape)  # fits: no error
    check_variables_fit(module, flax.core.freeze(variables), spec.image_shape)  # a FrozenDict is a mapping too
    with pytest.raises(InputError, match=r"do not fit SmallCNN for \[N, 28, 28, 1\] images: \d+ differ in shape, "
                                         r"e.g. params/BatchNorm_0/bias \(32,\) \(expected \(16,\)\)"):
        check_variables_fit(module, wider, spec.image_shape)
    with pytest.raises(InputError, match=r"\d+ missing, e.g. batch_stats/.*a collection left out"):
        check_variables_fit(module, {"params": variables["params"]}, spec.image_shape)
    with pytest.raises(InputError, match="expected a dict with 'params'.*got list"):
        check_variables_fit(module, [variables], spec.image_shape)
    # images of another size reach a dense layer of another shape
    with pytest.raises(InputError, match=r"\[N, 32, 32, 1\] images: .*params/Dense_0/kernel"):
        check_variables_fit(module, variables, (32, 32, 1))

    images, split = IMAGES, SPLIT
    calls = {"detect": lambda: detect(module, wider, images),
             "PBE": lambda: pbe(module, wider, split, PBEConfig(batch_size=4)),
             "AFT": lambda: aft(module, wider, split, AFTConfig(batch_size=4)),
             "CLP": lambda: clp(module, wider, spec.image_shape),
             "DHBE": lambda: erase((spec, wider), DHBEConfig(batch_size=4), jax.random.PRNGKey(0))}
    for name, call in calls.items():
        with pytest.raises(InputError, match=f"{name}.*variables.* do not fit SmallCNN"):
            call()


def test_arguments_of_the_wrong_kind_are_named():
    """(images, labels) where a Split is expected, a dict for a config, a (module, variables)
    teacher or an int seed for DHBE's key: each failed as an AttributeError or TypeError inside."""
    module, variables = build_model(SPEC), init_variables(SPEC, jax.random.PRNGKey(0))
    calls = {
        "PBE: train is a tuple; expected a backdoor_core.data.Split": lambda: pbe(module, variables, (IMAGES, SPLIT.labels)),
        "PBE: config is a dict; expected a pbe_jax.PBEConfig": lambda: pbe(module, variables, SPLIT, {"batch_size": 4}),
        "AFT: clean is a tuple; expected a backdoor_core.data.Split": lambda: aft(module, variables, (IMAGES, SPLIT.labels)),
        "AFT: config is a dict": lambda: aft(module, variables, SPLIT, {}),
        "detect: config is a dict": lambda: detect(module, variables, IMAGES, {}),
        r"DHBE: teacher is \(SmallCNN, dict\); expected \(ModelSpec, variables\)":
            lambda: erase((module, variables), DHBEConfig(), jax.random.PRNGKey(0)),
        "DHBE: teacher is dict": lambda: erase(variables, DHBEConfig(), jax.random.PRNGKey(0)),
        "DHBE: config is a dict": lambda: erase((SPEC, variables), {}, jax.random.PRNGKey(0)),
        "DHBE: rng is 0; expected a PRNG key": lambda: erase((SPEC, variables), DHBEConfig(), 0),
    }
    for message, call in calls.items():
        with pytest.raises(InputError, match=message):
            call()
