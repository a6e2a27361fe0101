"""signals_held defers SIGINT and SIGTERM to the end of the block, whichever thread takes them."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from vidfeat.signals import signals_held, sigterm_as_interrupt


def test_a_sigint_inside_the_block_is_raised_after_it():
    steps = []
    with pytest.raises(KeyboardInterrupt), signals_held():
        signal.raise_signal(signal.SIGINT)
        steps.append("commit finished")
    assert steps == ["commit finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigterm_taken_by_another_thread_waits_for_the_block():
    # A thread started before the block (as zarr's event loop is) does not block the signal,
    # so the kernel may hand it the signal while the main thread is committing.
    go, sent = threading.Event(), threading.Event()

    def sender() -> None:
        go.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        sent.set()

    thread = threading.Thread(target=sender)
    thread.start()
    steps = []
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt), signals_held():
        go.set()
        sent.wait()
        for _ in range(1000):  # Python code runs: a pending handler would run here
            steps.append(len(steps))
        steps.append("commit finished")
    thread.join()
    assert steps[-1] == "commit finished"


def test_no_signal_leaves_handlers_as_they_were():
    before = signal.getsignal(signal.SIGTERM)
    with signals_held():
        pass
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
