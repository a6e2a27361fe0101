"""Decode videos in worker processes, so a decoder hang or crash costs one video, not the job.

A worker (``vidfeat.decode.worker``) decodes one video at a time with ``vidfeat.decode``,
applies ``frame_transform`` to each sampled frame and streams results back in chunks of
``chunk_frames`` over its own socket pair. That holds a few hundred kilobytes, so a worker
blocks as soon as the consumer falls behind: about one chunk per worker is ever in flight,
never a whole video.

Timeout rule: a video gets ``timeout_s`` seconds of *worker time*, i.e. wall time since it was
handed out minus the time the worker spent blocked handing chunks to a consumer that was not
reading. Workers stamp each message when they start sending it and the pool subtracts
(received - stamped), which over-counts blocking, so a slow consumer can delay a timeout but
never cause one. It is checked only while no unread message waits. A worker over budget is
SIGKILLed (decord can spin in native code holding the GIL, where nothing softer works) and its
video reported as ``timeout``; a worker that dies (e.g. SIGSEGV in FFmpeg) reports ``crashed``.
Either way a fresh worker takes the slot.

``FramesChunk`` events are provisional until their job's ``VideoDone``: a ``VideoFailed``
(truncation is only known at the end) means the job's chunks must be dropped.

Workers come from "forkserver" (or "spawn"), never from forking the parent, which may run
torch threads. They import ``vidfeat.decode.worker``, ``vidfeat.decode``, ``extra_modules``,
the module defining ``frame_transform`` and (as multiprocessing always does) the main script:
keep those torch-free. The pool is not thread-safe.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import signal
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vidfeat.decode.base import DEFAULT_DECODER
from vidfeat.decode.worker import FrameTransform, checked_settings, worker_main
from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.location import new_copy_folder, remove_copies, remove_copy_folder
from vidfeat.signals import raise_on_sigterm

if TYPE_CHECKING:
    from vidfeat.audio.mel import LogMelParams

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 120.0  # spawn + imports; generous for loaded machines
_MAX_STARTUP_FAILURES = 3  # consecutive workers dying before "ready": give up
_MAX_WAIT_S = 5.0  # re-check liveness at least this often


@dataclass(frozen=True)
class FramesChunk:
    """Consecutive sampled frames of one video, after ``frame_transform``."""

    job_id: str
    timestamps_s: np.ndarray  # (n,) float64, pts from the first frame
    frames: np.ndarray  # (n, ...) e.g. (n, 299, 299, 3) float32


@dataclass(frozen=True)
class VideoDone:
    """All chunks of the video were delivered. ``info``: n_frames, duration_s (decoded, else
    declared), native_fps, decoder, declared_duration_s, width, height, codec, n_frames_header,
    and with ``audio`` settings has_audio.

    ``audio_examples``: with ``audio`` settings, (n_frames, 96, 64) float32 log-mel examples,
    one per frame in timestamp order (silence where there is no audio); else None."""

    job_id: str
    info: dict[str, object]
    audio_examples: np.ndarray | None = None


@dataclass(frozen=True)
class VideoFailed:
    """The video failed; drop its chunks. ``status``: a decode status, "timeout" or "crashed"."""

    job_id: str
    status: str
    reason: str


PoolEvent = FramesChunk | VideoDone | VideoFailed


class WorkerStartupError(VidfeatError, RuntimeError):
    """Decode workers cannot start (e.g. an ``extra_modules`` import fails)."""


# --------------------------------------------------------------------------- pool side


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: mp_connection.Connection
    started_at: float
    ready: bool = False
    job: tuple[str, str] | None = None
    dispatched_at: float = 0.0
    blocked_s: float = 0.0  # time this job's worker spent waiting on the consumer

    def worker_time_s(self, now: float) -> float:
        return now - self.dispatched_at - self.blocked_s


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class DecodePool:
    """Decode videos in ``num_workers`` isolated processes; iterate ``events()`` for results.

    >>> with DecodePool(2, decoder="pyav", fps=1, max_frames=300) as pool:
    ...     pool.submit("clip-1", "clip-1.mp4")
    ...     for event in pool.events():
    ...         ...  # FramesChunk* then VideoDone, or VideoFailed, per job

    ``timeout_s`` is the per-video budget of worker time (see module docstring).
    ``extra_modules`` are imported in every worker (and here) before decoding, e.g. a module
    registering another decoder. ``map`` submits lazily from an iterable of (job_id, path).
    ``audio`` (a ``vidfeat.audio.LogMelParams``): also cut one log-mel example per sampled
    frame from the audio track, in the same worker under the same time limit.
    """

    def __init__(
        self,
        num_workers: int = 1,
        decoder: str = DEFAULT_DECODER,
        fps: Fraction | float | str = 1,
        max_frames: int | None = 300,
        frame_transform: FrameTransform | None = None,
        timeout_s: float = 300.0,
        *,
        chunk_frames: int = 4,
        extra_modules: Iterable[str] = (),
        start_method: str | None = None,
        decode_threads: int | None = None,
        audio: LogMelParams | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        self._settings = checked_settings(
            num_workers,
            decoder,
            fps,
            max_frames,
            frame_transform,
            chunk_frames,
            tuple(extra_modules),
            decode_threads,
            audio,
        )
        self.timeout_s = float(timeout_s)
        self._ctx = _context(start_method)
        self._pending: collections.deque[tuple[str, str]] = collections.deque()
        self._startup_failures = 0
        self._closed = False
        self._workers: list[_Worker] = []
        # Used on its own, SIGTERM unwinds like Ctrl-C so `with DecodePool(...)` reaps workers;
        # inside a job that handles SIGTERM already, the pool stands aside.
        self._undo_sigterm = raise_on_sigterm(
            lambda signum: SystemExit(128 + signum), stand_aside=True
        )
        # Where workers copy URL videos; its finalizer kills the workers and removes their
        # copies even if close() is never called.
        self._scratch = new_copy_folder()
        self._settings = dataclasses.replace(self._settings, scratch=self._scratch)
        self._finalizer = weakref.finalize(self, _shut_down, self._workers, self._scratch)
        for _ in range(num_workers):
            self._workers.append(self._start_worker())

    # ---------------------------------------------------------------- public API

    def submit(self, job_id: str, path: str | Path) -> None:
        """Queue one video; its events arrive from ``events()``."""
        if self._closed:
            raise RuntimeError("DecodePool is closed")
        self._pending.append((str(job_id), str(path)))

    @property
    def unfinished(self) -> int:
        """Jobs submitted whose VideoDone / VideoFailed has not been yielded yet."""
        return len(self._pending) + sum(w.job is not None for w in self._workers)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (they change when one is replaced)."""
        return [w.process.pid for w in self._workers]

    def events(self) -> Iterator[PoolEvent]:
        """Yield events until every submitted job has finished (more may be submitted meanwhile)."""
        yield from self.map(())

    def map(
        self,
        jobs: Iterable[tuple[str, str | Path]],
        max_queued: int | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> Iterator[PoolEvent]:
        """Submit ``jobs`` lazily, keeping at most ``max_queued`` waiting, and yield all events.

        ``on_idle`` is called whenever a wait (at most ``_MAX_WAIT_S``) brought nothing: the
        consumer's chance to act on time while every worker is busy on long videos."""
        source = iter(jobs)
        limit = max_queued or 2 * len(self._workers)
        exhausted = False
        while True:
            while not exhausted and len(self._pending) < limit:
                job = next(source, None)
                if job is None:
                    exhausted = True
                else:
                    self.submit(*job)
            if exhausted and not self.unfinished:
                return
            self._dispatch()
            events = self._poll()
            if not events and on_idle is not None:
                on_idle()
            yield from events

    def close(self) -> None:
        """Stop idle workers, kill busy ones, reap all. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            if w.job is None:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
        deadline = time.monotonic() + 1.0
        for w in self._workers:
            if w.job is None:
                w.process.join(max(0.0, deadline - time.monotonic()))
        _shut_down(self._workers, self._scratch)
        self._workers.clear()
        self._undo_sigterm()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self._settings),
            name="vidfeat-decode",
            daemon=True,
        )
        process.start()
        child_conn.close()  # so the parent sees EOF when the worker dies
        return _Worker(process, parent_conn, started_at=time.monotonic())

    def _dispatch(self) -> None:
        for w in self._workers:
            if not self._pending:
                return
            if w.ready and w.job is None:
                job = self._pending.popleft()
                try:
                    w.conn.send(job)
                except OSError:
                    self._pending.appendleft(job)  # died while idle; reaped on the next poll
                    continue
                w.job, w.dispatched_at, w.blocked_s = job, time.monotonic(), 0.0

    def _poll(self) -> list[PoolEvent]:
        """Wait for at most one message per worker (bounded memory), then enforce timeouts."""
        waitables = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        ready = set(mp_connection.wait(waitables, self._wait_timeout()))
        events: list[PoolEvent] = []
        for w in list(self._workers):
            if w.conn in ready or w.process.sentinel in ready:
                events.extend(self._read(w))
        events.extend(self._enforce_deadlines())
        return events

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        left = [_MAX_WAIT_S]
        for w in self._workers:
            if w.job is not None:
                left.append(self.timeout_s - w.worker_time_s(now))
            elif not w.ready:
                left.append(w.started_at + _STARTUP_TIMEOUT_S - now)
        return max(0.0, min(left))

    def _read(self, w: _Worker) -> list[PoolEvent]:
        if not w.conn.poll():
            return self._reap(w, status="crashed", how=None)
        try:
            sent_at, message = w.conn.recv()
        except (EOFError, OSError):
            return self._reap(w, status="crashed", how=None)
        w.blocked_s += max(0.0, time.monotonic() - sent_at)
        kind, *body = message
        if kind == "ready":
            w.ready, self._startup_failures = True, 0
            return []
        if kind == "fatal":
            self.close()
            raise WorkerStartupError(f"decode worker cannot start: {body[0]}")
        if kind == "chunk":
            return [FramesChunk(*body)]
        w.job = None
        return [VideoDone(*body) if kind == "done" else VideoFailed(*body)]

    def _enforce_deadlines(self) -> list[PoolEvent]:
        events: list[PoolEvent] = []
        now = time.monotonic()
        for w in list(self._workers):
            if w.job is not None and w.worker_time_s(now) > self.timeout_s and not w.conn.poll():
                reason = f"no result after {self.timeout_s:g} s of decoding; worker killed"
                events.extend(self._reap(w, status="timeout", how=reason))
            elif not w.ready and now - w.started_at > _STARTUP_TIMEOUT_S:
                events.extend(self._reap(w, status="crashed", how="did not start"))
        return events

    def _reap(self, w: _Worker, status: str, how: str | None) -> list[PoolEvent]:
        """Kill and reap ``w``, put a fresh worker in its slot, report its job as failed."""
        if w.process.is_alive():
            w.process.kill()
        w.process.join()
        w.conn.close()
        remove_copies(self._scratch, w.process.pid)
        reason = how or f"decode worker {_describe_exit(w.process.exitcode)}"
        self._workers[self._workers.index(w)] = self._start_worker()
        if w.job is not None:
            log.warning("%s: %s (%s)", w.job[1], status, reason)
            return [VideoFailed(w.job[0], status, reason)]
        if not w.ready:
            self._startup_failures += 1
            if self._startup_failures >= _MAX_STARTUP_FAILURES:
                self.close()
                raise WorkerStartupError(f"decode workers keep dying on startup: {reason}")
        return []


def _context(start_method: str | None) -> mp.context.BaseContext:
    """forkserver where available, else spawn: never fork a parent that may run torch threads."""
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        # Workers fork from a clean server that imported the decoders (and, as multiprocessing
        # always does, the main module) once, so a replacement starts in milliseconds.
        ctx.set_forkserver_preload(["__main__", "vidfeat.decode", "vidfeat.decode.worker"])
    return ctx


def start_fork_server() -> None:
    """Start the process that workers fork from now, instead of with the first pool.

    That process imports PyAV, numpy and the decoders as it starts. Started before the caller's
    own slow imports (``vidfeat extract`` imports torch to parse its options), it does so on
    another core meanwhile, and the first workers fork at once.
    """
    ctx = _context(None)
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _shut_down(workers: list[_Worker], scratch: str) -> None:
    _kill_all(workers)
    remove_copy_folder(scratch)


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        if w.process.is_alive():
            w.process.kill()
        w.process.join()
        w.conn.close()
