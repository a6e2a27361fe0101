"""What a file is before decoding: header facts, container checks and typed failures.

Shared by the decoders in ``vidfeat.decode``. The header is informational only: sampling never
trusts its frame count or duration, but truncation is judged against the declared duration.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidfeat.errors import DecodeError
from vidfeat.sampling import num_samples

# Decoded coverage may fall short of the header by this much before we call it truncated:
# audio often outlasts video by a fraction of a second, and headers round.
TRUNCATION_TOLERANCE_S = 1.0
TRUNCATION_TOLERANCE_FRACTION = 0.05
# Formats FFmpeg opens that are not videos: still images and plain text ("tty").
_NOT_VIDEO_FORMATS = ("image2", "image2pipe", "tty")
# Animated image formats: decord cannot read them (it needs a container duration), so both
# decoders refuse them by name rather than one decoding what the other calls corrupt.
_IMAGE_SEQUENCE_FORMATS = {"gif": "GIF", "apng": "APNG", "webp": "WebP"}
# What a path that is not a regular file is, for messages (opening a FIFO would block).
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
# Magic bytes of video containers: a file starting like this that will not open is
# "unreadable" (damaged video), anything else is "not_video".
_CONTAINER_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (8, b"AVI "),
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)


@dataclass(frozen=True)
class VideoInfo:
    """What the container header declares. Informational only: sampling never trusts it."""

    duration_s: float | None
    native_fps: float | None
    width: int
    height: int
    codec: str
    n_frames_header: int | None


def not_a_file(mode: int) -> str | None:
    """What a non-regular file is ("a directory", "a FIFO (named pipe)", ...); None if regular."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def check_file(path: Path) -> None:
    """Refuse what cannot be a video before FFmpeg opens it: missing, special or empty files."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DecodeError(f"file does not exist: {path}", "missing") from None
    except OSError as e:
        raise DecodeError(f"cannot access {path}: {e.strerror}", "unreadable") from None
    kind = not_a_file(info.st_mode)
    if kind is not None:
        raise DecodeError(f"{path} is {kind}, not a video file", "not_video")
    if info.st_size == 0:
        raise DecodeError("file is empty (0 bytes)", "empty")


def looks_like_container(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(16)
    return any(head[off : off + len(magic)] == magic for off, magic in _CONTAINER_MAGIC)


def open_container(path: Path) -> av.container.InputContainer:
    check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        if looks_like_container(path):
            raise DecodeError(f"cannot open video container: {first_line(e)}", "unreadable") from e
        raise DecodeError(f"not a video file: {first_line(e)}", "not_video") from e
    name = container.format.name
    if name in _NOT_VIDEO_FORMATS or name.endswith("_pipe") or name in _IMAGE_SEQUENCE_FORMATS:
        container.close()
        if name in _IMAGE_SEQUENCE_FORMATS:
            raise DecodeError(
                f"{_IMAGE_SEQUENCE_FORMATS[name]} is an animated image format, not a supported "
                "video; convert it first (e.g. ffmpeg -i in.gif out.mp4)",
                "not_video",
            )
        raise DecodeError(f"not a video file (format {name})", "not_video")
    return container


def video_streams(container: av.container.InputContainer) -> list[av.VideoStream]:
    """The file's video tracks, in file order; cover art (an attached picture) is not one."""
    return [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]


def video_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The track both decoders read: the first video track."""
    streams = video_streams(container)
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise DecodeError(f"no video stream (streams: {', '.join(kinds)})", "no_video_stream")
    if streams[0].codec_context is None:
        raise DecodeError("video codec is not supported by this FFmpeg build", "decode_error")
    return streams[0]


# Matroska's per-track DURATION tag: "HH:MM:SS.nnnnnnnnn", the track's end time.
_TAG_DURATION = re.compile(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def declared_duration_s(
    container: av.container.InputContainer, stream: av.VideoStream
) -> float | None:
    """How long the video stream says it lasts, from its first frame: what sampling and the
    truncation check measure decoded frames against.

    The stream's own duration where the container has one (MP4). Matroska has none; its track
    DURATION tag and the container's duration are end times, counted from 0 rather than from
    the first frame, and the container's covers every stream: a video starting at 2.5 s, or
    audio outlasting the picture, would otherwise look like frames missing at the end.
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
    tag = _TAG_DURATION.match(str(stream.metadata.get("DURATION", "")).strip())
    if tag:
        end = int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3])
    elif container.duration:
        # Where a container's duration already counts from its start, this understates it by
        # the start: truncation is then judged leniently, never falsely.
        end = container.duration / av.time_base
        if start is None and container.start_time is not None:
            start = container.start_time / av.time_base
    else:
        return None
    return max(0.0, end - max(0.0, start or 0.0))


def header_info(container: av.container.InputContainer, stream: av.VideoStream) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(
        duration_s=declared_duration_s(container, stream),
        native_fps=float(rate) if rate else None,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        codec=stream.codec_context.name,
        n_frames_header=stream.frames or None,
    )


def quarter_turns(rotation: float) -> int:
    """Counterclockwise quarter turns for a display-matrix angle, rounded as FFmpeg does."""
    return round(rotation / 90) % 4


def display_quarter_turns(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Quarter turns the display matrix asks for, read from the first decoded frame."""
    try:
        for frame in container.decode(stream):
            return quarter_turns(frame.rotation)
    except av.error.FFmpegError:
        pass  # a damaged start: the decoding pass reports what is wrong
    return 0


# decord prefixes messages with "[12:00:00] /path/to/source.cc:123: "
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def first_line(e: BaseException) -> str:
    """A short, path-free message: FFmpeg's strerror, or the first line without decord's noise."""
    if isinstance(e, av.error.FFmpegError) and e.strerror:
        return e.strerror
    text = _DECORD_PREFIX.sub("", str(e)).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def no_frames_error() -> DecodeError:
    return DecodeError("no frame could be decoded", "no_frames")


def shortfall(declared_s: float | None, covered_s: float) -> bool:
    if not declared_s or not math.isfinite(declared_s):
        return False
    tolerance = max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRACTION * declared_s)
    return covered_s < declared_s - tolerance


def truncated_error(covered_s: float, declared_s: float) -> DecodeError:
    return DecodeError(f"decoded {covered_s:.1f} s of declared {declared_s:.1f} s", "truncated")


def check_truncation(
    info: VideoInfo, decoded_s: float, fps: Fraction, max_frames: int | None
) -> None:
    """Raise ``truncated`` if decoding ended clearly before the declared end.

    Only when the shortfall cost frames: if the decoded part already holds ``max_frames``
    grid points, the missing tail would never have been sampled.
    """
    if max_frames is not None and num_samples(decoded_s, fps) >= max_frames:
        return
    if shortfall(info.duration_s, decoded_s):
        raise truncated_error(decoded_s, info.duration_s)


def packet_pts(path: Path) -> tuple[np.ndarray, int | None]:
    """Every intact packet's pts in the video track, sorted (presentation order), and where the
    last one ends (pts + duration; None when the packets carry no durations), from one demux
    pass of a container of its own, from the start (no decoding). No pts at all when a packet
    has none: then there is no exact order to give."""
    pts, end = [], None
    with open_container(path) as container:
        try:
            for packet in container.demux(video_stream(container)):
                if not packet.size or packet.is_corrupt:
                    continue
                if packet.pts is None:
                    return np.empty(0, np.int64), None
                pts.append(packet.pts)
                if packet.duration:
                    last = packet.pts + packet.duration
                    end = last if end is None else max(end, last)
        except av.error.FFmpegError:
            pass  # the file breaks off: what was read so far is what there is
    ordered = np.sort(np.asarray(pts, np.int64))
    return ordered, (end if end is not None and len(ordered) and end > ordered[-1] else None)


def demux_scan(path: Path) -> tuple[int, float] | None:
    """(intact video packets, seconds they span) actually present in the file."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = video_stream(container)
            n, first, end = 0, None, None
            try:
                for packet in container.demux(stream):
                    pts = packet.pts if packet.pts is not None else packet.dts
                    if pts is None or not packet.size or packet.is_corrupt:
                        continue
                    n += 1
                    first = pts if first is None else min(first, pts)
                    end = max(end or pts, pts + (packet.duration or 0))
            except av.error.FFmpegError:
                pass  # the file breaks off: what was read so far is what there is
            return n, 0.0 if first is None else float((end - first) * stream.time_base)
    except (av.error.FFmpegError, DecodeError, OSError):
        return None
