"""Signal handling shared by long jobs: SIGTERM as Ctrl-C, commits that signals wait for, and
whether a process still runs (signal 0)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
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

    The signals are recorded by a handler and handed to the previous handlers when the block
    ends. A signal mask would not do: blocked in the main thread, a process-directed signal is
    delivered to another thread (zarr's event loop, BLAS workers), and Python then raises it in
    the main thread anyway, mid-commit, possibly while it waits on that event loop.

    SIGKILL cannot be held; the store's own commit protocol covers it. Outside the main thread
    nothing is installed (signal handlers live there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            _deliver(received[0], previous[received[0]])


def _deliver(signum: int, handler: object) -> None:
    """What ``signum`` would have done without the block: call the handler, or the default."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (signal 0 tests it without sending one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def die_with_parent() -> None:
    """Have the kernel SIGKILL this worker process if its parent dies, even mid-hang (Linux
    only): a parent killed with SIGKILL runs no cleanup, and its workers would live on.

    Under forkserver the parent is the server, which exits once every holder of its "alive"
    pipe is gone. Forked children inherit that pipe; dropping it here means the main
    process's death stops the server, and so (by the death signal) this worker.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(alive_fd)
        server._forkserver_alive_fd = None
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent is already gone
            os._exit(1)
