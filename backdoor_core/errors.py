"""Errors raised for bad input.

Every check in the library raises `InputError` (a `ValueError`) with one message that names
the offending thing and what was expected, so that command-line entry points can print it
without a traceback from deep inside JAX.
"""


class InputError(ValueError):
    """Bad user input: an unknown name, a missing file, wrong shapes, dtypes or ranges."""


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
