"""Errors raised for bad input.

Every check in the library raises `InputError` (a `ValueError`) with one message that names
the offending thing and what was expected, so that command-line entry points can print it
without a traceback from deep inside JAX.
"""

import numbers


class InputError(ValueError):
    """Bad user input: an unknown name, a missing file, wrong shapes, dtypes or ranges."""


def is_seed(value) -> bool:
    """True for a non-negative integer (Python or NumPy; not a bool): what NumPy's seeding accepts."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def check_run_counts(what: str, **counts) -> None:
    """InputError unless each of `counts` is a valid loop count of a run: names starting with
    'stop_after' None or a non-negative integer (0 stops before the first step), the others
    (log / evaluation / checkpoint intervals) integers >= 1. A 0 interval used to raise
    ZeroDivisionError mid-run, a negative stop to leave a run stopped before it began."""
    for name, value in counts.items():
        if name.startswith("stop_after"):
            if value is not None and not is_seed(value):
                raise InputError(f"{what}: {name} = {value!r}; expected None (run to the end) or an integer >= 0")
        elif not (is_seed(value) and value >= 1):
            raise InputError(f"{what}: {name} = {value!r}; expected an integer >= 1")


def check_argument(what: str, name: str, value, expected_type, expected: str) -> None:
    """InputError unless `value` is an instance of `expected_type`: for the Python API's arguments
    ('PBE: train is a tuple; expected a backdoor_core.data.Split ...'), which otherwise fail as an
    AttributeError on some attribute deep inside."""
    if not isinstance(value, expected_type):
        raise InputError(f"{what}: {name} is a {type(value).__name__}; expected {expected}")


class CheckpointError(InputError):
    """A checkpoint that is missing, corrupt, or written for another architecture."""


def check_settings(what: str, settings, checks, values: dict | None = None) -> None:
    """Raises InputError "<what>: <name> = <value>; expected <expected>" for the first failed check.

    checks: (ok, name, expected) triples in order; the value shown is `values[name]` if given,
    else `getattr(settings, name)` (e.g. a config dataclass's field).
    """
    for ok, name, expected in checks:
        if not ok:
            value = values[name] if values and name in values else getattr(settings, name)
            raise InputError(f"{what}: {name} = {value!r}; expected {expected}")
