"""Graceful stop: Ctrl-C (SIGINT) or SIGTERM ends a long run at its next checkpoint, resumable.

The long loops (training, DHBE iterations, PBE rounds, AFT epochs, the matrix's cells) ask
`stop_requested()` at each of their checkpoint boundaries; when it answers, they save a checkpoint
and return unfinished, exactly as with their `stop_after` settings. Only code running inside
`stop_on_signals()` (the command-line entry points) sees a request; elsewhere (a notebook, the
library called directly) Ctrl-C raises KeyboardInterrupt as usual.

Without this, an interrupted run lost everything since its last periodic checkpoint, and one
interrupted before its first checkpoint had its directory removed (a failed start leaves nothing
behind): a 4,000-iteration DHBE run stopped at iteration 3,017 by a time limit left no trace.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

_requested: str | None = None


def stop_requested() -> str | None:
    """The name of the signal that asked the current run to stop ('SIGINT', 'SIGTERM'), else None."""
    return _requested


def _handler(signum, frame) -> None:
    global _requested
    if _requested is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # the second Ctrl-C: stop now, losing the work since the last checkpoint
    _requested = signal.Signals(signum).name
    print(f"\n{_requested}: stopping at the next checkpoint, resumable by running the same command again "
          "(Ctrl-C again: stop now, losing the work since the last checkpoint)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Within the block, the first of `signals` requests a stop (see the module docstring) instead
    of killing the process; a second SIGINT raises KeyboardInterrupt. On exit the previous
    handlers come back and the request is cleared. Yields a function returning the request (the
    signal's name or None). Outside the main thread (where handlers cannot be set) it only yields.
    """
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield stop_requested
        return
    previous = {s: signal.signal(s, _handler) for s in signals}
    _requested = None
    try:
        yield stop_requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested = None
