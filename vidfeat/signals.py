"""Signal handling shared by long jobs: SIGTERM as Ctrl-C, and commits that signals wait for."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def raise_on_sigterm(
    make_error: Callable[[int], BaseException], *, stand_aside: bool = False
) -> Callable[[], None]:
    """Make SIGTERM raise ``make_error(signum)`` in the main thread; returns the undo function.

    Raising (instead of dying) unwinds ``with`` blocks, so finished work is committed and worker
    processes are reaped. ``stand_aside``: leave an already installed handler alone (a component
    used inside a job that handles SIGTERM itself). Outside the main thread nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if stand_aside and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise make_error(signum)

    previous = signal.signal(signal.SIGTERM, handler)

    def undo() -> None:
        # Only undo our own handler: someone may have replaced it since.
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return undo


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs.

    Batch schedulers send SIGTERM; raising KeyboardInterrupt runs the same cleanup (commit
    finished work, stop workers) as Ctrl-C.
    """
    undo = raise_on_sigterm(lambda signum: KeyboardInterrupt())
    try:
        yield
    finally:
        undo()


@contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM until the block ends, so a commit is never cut in two by them.

    SIGKILL cannot be held; the store's own commit protocol covers it.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError):  # no pthreads, or not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
