"""Errors raised for bad input.

Every check in the library raises `InputError` (a `ValueError`) with one message that names
the offending thing and what was expected, so that command-line entry points can print it
without a traceback from deep inside JAX.
"""


class InputError(ValueError):
    """Bad user input: an unknown name, a missing file, wrong shapes, dtypes or ranges."""


class CheckpointError(InputError):
    """A checkpoint that is missing, corrupt, or written for another architecture."""
