"""The child side of ``vidfeat.decode.pool.DecodePool``: one process decoding one video at a time.

A worker decodes with ``vidfeat.decode``, applies the pool's ``frame_transform`` to each sampled
frame and streams the results back in chunks over its socket pair. Every message is stamped with
the time the worker started sending it, which the pool uses to tell decoding time from time spent
blocked on a slow consumer. This module is imported in every worker: keep it torch-free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import multiprocessing.connection as mp_connection
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

from vidfeat.errors import ConfigError, exception_chain
from vidfeat.location import is_url, local_copy, quiet_client_logs
from vidfeat.sampling import parse_fps
from vidfeat.signals import die_with_parent

if TYPE_CHECKING:
    from vidfeat.audio.decode import AudioExamples
    from vidfeat.audio.mel import LogMelParams

log = logging.getLogger(__name__)

FrameTransform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class WorkerSettings:
    """What every decode worker of a pool does; pickled once into each worker."""

    decoder: str
    fps: str
    max_frames: int | None
    frame_transform: FrameTransform | None
    chunk_frames: int
    extra_modules: tuple[str, ...]
    threads: int = 0  # decoding threads per video; 0: the decoder library's default
    # Also cut one log-mel example per sampled frame from the audio track (vidfeat.audio).
    audio: LogMelParams | None = None
    # The pool's environment when it was made. Workers fork from a server started earlier
    # (perhaps by another pool), which kept the environment of that moment: credentials or
    # endpoints set since then would otherwise never reach a worker. None: keep the server's.
    environ: tuple[tuple[str, str], ...] | None = None
    # The pool's logging level (-q, -v): a worker's warnings, and decoder libraries' own
    # chatter, follow the command's verbosity.
    log_level: int = logging.WARNING
    # Where a worker copies a URL's object (vidfeat.location.local_copy). The pool removes a
    # killed worker's copy there, and the folder when it closes: a worker killed mid-video
    # (timeout, Ctrl-C) never runs its own clean-up. None: the system's temporary folder.
    scratch: str | None = None


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))  # honours taskset and cgroup cpusets
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def checked_settings(
    num_workers: int,
    decoder: str,
    fps: Fraction | float | str,
    max_frames: int | None,
    frame_transform: FrameTransform | None,
    chunk_frames: int,
    extra: tuple[str, ...],
    decode_threads: int | None,
    audio: LogMelParams | None,
) -> WorkerSettings:
    """What every worker of a pool is started with, checked in the pool's process so that a
    bad value fails the caller instead of each worker."""
    if num_workers < 1:
        raise ConfigError(f"num_workers must be >= 1, got {num_workers}")
    if chunk_frames < 1:
        raise ConfigError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames must be >= 1 or None, got {max_frames}")
    for module in extra:  # registers extra decoders here too, so the name is checked now
        importlib.import_module(module)
    from vidfeat.decode import DECODERS

    DECODERS.get(decoder).check_available()
    if decode_threads is None:
        # Split the cores between the workers: the processes already decode in parallel,
        # and on 2 cores FFmpeg's own threads cost 8-23% more CPU per frame.
        decode_threads = max(1, usable_cpus() // num_workers)
    if decode_threads < 0:
        raise ConfigError(f"decode_threads must be >= 0, got {decode_threads}")
    return WorkerSettings(
        decoder,
        str(parse_fps(fps)),
        max_frames,
        frame_transform,
        chunk_frames,
        extra,
        decode_threads,
        audio,
        tuple(os.environ.items()),
        logging.getLogger().getEffectiveLevel(),
    )


def _set_environ(environ: dict[str, str]) -> None:
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)


def _send(conn: mp_connection.Connection, *message: object) -> None:
    conn.send((time.monotonic(), message))


def worker_main(conn: mp_connection.Connection, settings: WorkerSettings) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    if settings.environ is not None:
        _set_environ(dict(settings.environ))
    # The command's format (vidfeat_cli.core.setup_logging), so a worker's line reads like the
    # parent's, not as a bare message.
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    quiet_client_logs(settings.log_level)  # a worker fetching s3:// videos, as the command
    with contextlib.suppress(EOFError, OSError):  # the parent is gone: nobody to report to
        _serve(conn, settings)


def _serve(conn: mp_connection.Connection, settings: WorkerSettings) -> None:
    try:
        for module in settings.extra_modules:
            importlib.import_module(module)
        from vidfeat.decode import DECODERS

        DECODERS.get(settings.decoder)
    except Exception as e:
        _send(conn, "fatal", f"{type(e).__name__}: {e}")
        return
    # Several workers share the cores with the backbone: a worker's BLAS (the audio front
    # end's matmuls) must not start a thread per core, which on 2 cores made one small matmul
    # 25x slower through contention.
    threadpool_limits(1)
    if "torch" in sys.modules:  # loaded by the main script or frame_transform's module
        log.warning("torch is loaded in a decode worker: memory spent on a module it never uses")
    _send(conn, "ready")
    while (job := conn.recv()) is not None:
        _run_job(conn, settings, *job)


def _local(path: str, scratch: str | None) -> contextlib.AbstractContextManager[str]:
    """``path`` itself, or a temporary local copy of a URL's object (decord needs a file).

    The copy is made here, in the worker, so the pool's no-progress limit covers a stalled
    download as it covers a hung decoder.
    """
    return local_copy(path, directory=scratch) if is_url(path) else contextlib.nullcontext(path)


def _fetch_failure(exc: Exception) -> tuple[str, str]:
    """(status, reason) of a URL whose object could not be fetched."""
    # fsspec's HTTP filesystem reports a server it cannot reach as FileNotFoundError, with
    # the connection error as its cause: that object may well exist.
    unreachable = next(
        (c for c in exception_chain(exc) if isinstance(c, (ConnectionError, TimeoutError))), None
    )
    if unreachable is not None:
        return (
            "unreadable",
            f"could not reach the server: {type(unreachable).__name__}: {unreachable}",
        )
    if isinstance(exc, FileNotFoundError):
        return "missing", "the object does not exist"
    if isinstance(exc, IsADirectoryError):
        return "not_video", str(exc)
    # Anything else (refused access, missing credentials: botocore's errors are not OSErrors).
    return "unreadable", f"could not fetch the video: {type(exc).__name__}: {exc}"


def _run_job(conn: mp_connection.Connection, s: WorkerSettings, job_id: str, path: str) -> None:
    with contextlib.ExitStack() as stack:
        try:
            local = stack.enter_context(_local(path, s.scratch))
        except Exception as e:  # one URL that cannot be fetched must never take the worker down
            _send(conn, "failed", job_id, *_fetch_failure(e))
            return
        _send(conn, *_decode_job(conn, s, job_id, local))


def _decode_job(
    conn: mp_connection.Connection, s: WorkerSettings, job_id: str, local: str
) -> tuple[Any, ...]:
    """The message that ends the job of the local file ``local``: ("done", id, info, audio
    examples) or ("failed", id, status, reason), after its frames were sent."""
    from vidfeat.decode import open_video
    from vidfeat.errors import DecodeError

    try:
        with open_video(local, s.decoder, threads=s.threads) as video:
            times = _stream_frames(conn, s, job_id, video.sample(s.fps, s.max_frames))
            info = dataclasses.asdict(video.info)  # native_fps, width, height, codec, ...
            info["declared_duration_s"] = info.pop("duration_s")
            info["duration_s"] = video.decoded_duration_s or info["declared_duration_s"]
            info.update(n_frames=len(times), decoder=s.decoder)
        audio = None
        if s.audio is not None:
            audio = _audio_examples(str(local), times, s.audio)
            info["has_audio"] = audio.has_audio
    except DecodeError as e:
        return "failed", job_id, e.status, e.reason
    except OSError as e:  # open_video maps its own errors; a file that went meanwhile
        return "failed", job_id, *_fetch_failure(e)
    except Exception as e:  # one bad video must never take the worker down
        return "failed", job_id, "decode_error", f"{type(e).__name__}: {e}"
    return "done", job_id, info, None if audio is None else audio.examples


def _audio_examples(path: str, times: list[float], params: LogMelParams) -> AudioExamples:
    """The audio track's examples at the sampled frames' timestamps (after the video, so a
    video that fails costs no audio decoding)."""
    from vidfeat.audio.decode import decode_audio_examples

    return decode_audio_examples(path, times, params=params)


def _stream_frames(
    conn: mp_connection.Connection, s: WorkerSettings, job_id: str, frames: Iterable
) -> list[float]:
    """Transform and send frames in chunks; returns the timestamps of all frames sent."""
    buf: np.ndarray | None = None  # reused: send() has copied it out by the time it returns
    times: list[float] = []
    sent: list[float] = []

    def flush() -> None:
        if times:
            _send(conn, "chunk", job_id, np.asarray(times, np.float64), buf[: len(times)])
            sent.extend(times)
            times.clear()

    for sampled in frames:
        out = s.frame_transform(sampled.frame) if s.frame_transform else sampled.frame
        if buf is None or buf.shape[1:] != out.shape or buf.dtype != out.dtype:
            flush()  # frame size can change mid-stream without a transform
            buf = np.empty((s.chunk_frames, *out.shape), out.dtype)
        buf[len(times)] = out
        times.append(sampled.timestamp_s)
        if len(times) == s.chunk_frames:
            flush()
    flush()
    return sent
