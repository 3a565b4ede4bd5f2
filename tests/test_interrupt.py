"""Graceful stop: the first SIGINT/SIGTERM only requests a stop, a second SIGINT interrupts, and
the command line exits with 128 + the signal's number after saying how to resume."""

import os
import signal

import pytest

from backdoor_core.interrupt import stop_on_signals, stop_requested
from experiments.common import run_cli


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_requests_a_stop_and_a_second_sigint_interrupts(sig):
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as requested:
        assert requested() is None
        os.kill(os.getpid(), sig)  # the handler runs before the next line
        assert requested() == stop_requested() == signal.Signals(sig).name
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert stop_requested() is None and signal.getsignal(signal.SIGINT) is before


def test_outside_the_block_ctrl_c_is_a_keyboard_interrupt():
    # Python's own Ctrl-C handler, set here: a process started in the background by a
    # non-interactive shell (nohup, `cmd &` in a script) inherits SIGINT ignored and lacks it.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stop_on_signals():
            pass
        with pytest.raises(KeyboardInterrupt):  # the block gave the handler back
            os.kill(os.getpid(), signal.SIGINT)
        assert stop_requested() is None
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_says_how_to_resume_and_exits_with_the_signal_status(sig, status, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: os.kill(os.getpid(), sig))
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(sig).name}" in err and "run the same command again to resume" in err
    assert "Traceback" not in err


def test_cli_second_ctrl_c_is_one_line_not_a_traceback(capsys):
    def twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(SystemExit) as exit_info:
        run_cli(twice)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted: the work since the run's last checkpoint is lost" in err and "Traceback" not in err
