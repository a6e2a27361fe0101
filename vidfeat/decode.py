"""Open videos and sample frames by presentation timestamp, with typed failures.

Two decoders sit behind ``DECODERS``: "decord" (default, fast random access) and "pyav"
(streams in pts order and stops as soon as ``max_frames`` are picked). Both choose frames
with the rule in ``vidfeat.sampling`` from per-frame timestamps, never from a header frame
count or an index stride, and both raise ``DecodeError(reason, status)`` with one of:

- ``empty``: the file is missing or has zero bytes
- ``not_video``: not a media container at all (text, image, ...)
- ``no_video_stream``: a media file without a video track (audio only)
- ``unreadable``: looks like a video container but cannot be opened (e.g. MP4 without moov)
- ``decode_error``: corrupt coded data or a decoder failure
- ``truncated``: the decoded frames cover clearly less than the declared duration
- ``no_frames``: a video stream from which no frame could be decoded

Decoding runs in the caller's process; ``vidfeat.workers`` isolates it against hangs and crashes.
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from vidfeat.errors import ConfigError, DecodeError
from vidfeat.registry import Registry
from vidfeat.sampling import (
    FrameSelector,
    Selected,
    num_samples,
    parse_fps,
    select_tick_indices,
)

log = logging.getLogger(__name__)

# Decoded coverage may fall short of the header by this much before we call it truncated:
# audio often outlasts video by a fraction of a second, and headers round.
TRUNCATION_TOLERANCE_S = 1.0
TRUNCATION_TOLERANCE_FRACTION = 0.05
_DECORD_BATCH = 8  # frames per get_batch call; bounds memory on long, large videos
# Formats FFmpeg opens that are not videos: still images and plain text ("tty").
_NOT_VIDEO_FORMATS = ("image2", "image2pipe", "tty")
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


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its pts relative to the first frame, and (H, W, 3) uint8 RGB pixels."""

    timestamp_s: float
    frame: np.ndarray


class VideoDecoder(ABC):
    """An open video. Use as a context manager; ``sample`` may be iterated once.

    After ``sample`` is exhausted, ``decoded_duration_s`` is the duration covered by decoded
    frames (None if decoding stopped early) and ``frames_decoded`` counts frames the codec
    produced (a stop-early check for tests and benchmarks).
    """

    name: str = ""

    @classmethod  # noqa: B027 - optional hook
    def check_available(cls) -> None:
        """Raise ``ConfigError`` if this decoder cannot run here (e.g. a missing package)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.info: VideoInfo
        self.frames_decoded = 0
        self.decoded_duration_s: float | None = None
        self._sampled = False

    def sample(self, fps: Fraction | float | str, max_frames: int | None) -> Iterator[SampledFrame]:
        """Frames on screen at t_k = k / fps from the first frame (see ``vidfeat.sampling``)."""
        if self._sampled:
            raise RuntimeError("sample() can run once per opened video")
        self._sampled = True
        return self._sample(parse_fps(fps), max_frames)

    @abstractmethod
    def _sample(self, fps: Fraction, max_frames: int | None) -> Iterator[SampledFrame]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources; safe to call twice."""

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


DECODERS: Registry[VideoDecoder] = Registry("decoder")


def open_video(path: str | Path, decoder: str = "decord") -> VideoDecoder:
    """Open ``path`` with a registered decoder; raises ``DecodeError`` for unusable files."""
    factory = DECODERS.get(decoder)
    return factory(path=Path(path))


# --------------------------------------------------------------------------- header probing


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DecodeError(f"file does not exist: {path}", "empty")
    if path.stat().st_size == 0:
        raise DecodeError("file is empty (0 bytes)", "empty")


def _looks_like_container(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(16)
    return any(head[off : off + len(magic)] == magic for off, magic in _CONTAINER_MAGIC)


def _open_container(path: Path) -> av.container.InputContainer:
    _check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        if _looks_like_container(path):
            raise DecodeError(f"cannot open video container: {_first_line(e)}", "unreadable") from e
        raise DecodeError(f"not a video file: {_first_line(e)}", "not_video") from e
    if container.format.name in _NOT_VIDEO_FORMATS or container.format.name.endswith("_pipe"):
        container.close()
        raise DecodeError(f"not a video file (format {container.format.name})", "not_video")
    return container


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    streams = [
        s
        for s in container.streams.video
        if not s.disposition & av.stream.Disposition.attached_pic  # cover art is not video
    ]
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise DecodeError(f"no video stream (streams: {', '.join(kinds)})", "no_video_stream")
    if streams[0].codec_context is None:
        raise DecodeError("video codec is not supported by this FFmpeg build", "decode_error")
    return streams[0]


def _header_info(container: av.container.InputContainer, stream: av.VideoStream) -> VideoInfo:
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    else:
        duration = None
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(
        duration_s=duration,
        native_fps=float(rate) if rate else None,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        codec=stream.codec_context.name,
        n_frames_header=stream.frames or None,
    )


# decord prefixes messages with "[12:00:00] /path/to/source.cc:123: "
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _first_line(e: BaseException) -> str:
    """A short, path-free message: FFmpeg's strerror, or the first line without decord's noise."""
    if isinstance(e, av.error.FFmpegError) and e.strerror:
        return e.strerror
    text = _DECORD_PREFIX.sub("", str(e)).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _no_frames() -> DecodeError:
    return DecodeError("no frame could be decoded", "no_frames")


def _shortfall(declared_s: float | None, covered_s: float) -> bool:
    if not declared_s or not math.isfinite(declared_s):
        return False
    tolerance = max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRACTION * declared_s)
    return covered_s < declared_s - tolerance


def _truncated(covered_s: float, declared_s: float) -> DecodeError:
    return DecodeError(f"decoded {covered_s:.1f} s of declared {declared_s:.1f} s", "truncated")


def _check_truncation(
    info: VideoInfo, decoded_s: float, fps: Fraction, max_frames: int | None
) -> None:
    """Raise ``truncated`` if decoding ended clearly before the declared end.

    Only when the shortfall cost frames: if the decoded part already holds ``max_frames``
    grid points, the missing tail would never have been sampled.
    """
    if max_frames is not None and num_samples(decoded_s, fps) >= max_frames:
        return
    if _shortfall(info.duration_s, decoded_s):
        raise _truncated(decoded_s, info.duration_s)


# --------------------------------------------------------------------------- PyAV


@DECODERS.register("pyav")
class PyAVDecoder(VideoDecoder):
    """Decodes in pts order with FFmpeg's own timestamps; stops once ``max_frames`` are picked."""

    name = "pyav"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._container = _open_container(self.path)
        try:
            self._stream = _video_stream(self._container)
            self.info = _header_info(self._container, self._stream)
        except BaseException:
            self._container.close()  # unclosed containers leak (PyAV#1117)
            raise
        self._stream.thread_type = "AUTO"
        self._time_base = self._stream.time_base

    def close(self) -> None:
        self._container.close()

    def _sample(self, fps: Fraction, max_frames: int | None) -> Iterator[SampledFrame]:
        selector: FrameSelector[av.VideoFrame] = FrameSelector(fps, max_frames)
        for pts_s, frame, duration_s in self._frames():
            yield from map(_to_sampled, selector.push(pts_s, frame, duration_s))
            if selector.done:
                return  # the rest of the file is never decoded
        if selector.n_frames == 0:
            raise _no_frames()
        self.decoded_duration_s = float(selector.end_s - selector.first_pts_s)
        _check_truncation(self.info, self.decoded_duration_s, fps, max_frames)
        yield from map(_to_sampled, selector.finish())

    def _frames(self) -> Iterator[tuple[Fraction, av.VideoFrame, Fraction | None]]:
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return  # the demuxer's final empty packet already flushed the decoder
            except av.error.FFmpegError as e:
                # The container breaks off here; the coverage check judges what is missing.
                log.warning("%s: demuxing stopped early: %s", self.path, _first_line(e))
                break
            if packet.is_corrupt and packet.size:
                # Flagged by the demuxer, e.g. cut short by the end of the file: never feed
                # it to the codec (PyAV#2344). If the file ends here, the coverage check
                # reports truncation; mid-stream, the codec's own errors decide.
                log.warning("%s: skipping a damaged packet", self.path)
                continue
            yield from self._decode(packet)
        yield from self._decode(None)

    def _decode(
        self, packet: av.Packet | None
    ) -> Iterator[tuple[Fraction, av.VideoFrame, Fraction | None]]:
        tb = self._time_base
        try:
            frames = self._stream.decode(packet)
        except av.error.FFmpegError as e:
            at = f" at {float(packet.pts * tb):.2f} s" if packet and packet.pts is not None else ""
            raise DecodeError(f"corrupt video data{at}: {_first_line(e)}", "decode_error") from e
        for frame in frames:
            self.frames_decoded += 1
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None:
                raise DecodeError("a decoded frame carries no timestamp", "decode_error")
            if frame.is_corrupt:
                raise DecodeError(f"corrupt frame at {float(pts * tb):.2f} s", "decode_error")
            yield pts * tb, frame, (frame.duration * tb if frame.duration else None)


def _to_sampled(pick: Selected[av.VideoFrame]) -> SampledFrame:
    return SampledFrame(float(pick.pts_s), pick.frame.to_ndarray(format="rgb24"))


# --------------------------------------------------------------------------- decord


def _import_decord() -> object:
    try:
        import decord
    except ImportError as e:
        raise ConfigError(
            "decoder 'decord' needs the decord package (x86-64 only); use decoder 'pyav'"
        ) from e
    return decord


@DECODERS.register("decord")
class DecordDecoder(VideoDecoder):
    """Random access with decord; indices come from decord's own per-frame timestamps."""

    name = "decord"
    # Any frame decord would silently replace by a neighbour raises instead.
    _FAULT_TOLERANCE = 1e-9

    @classmethod
    def check_available(cls) -> None:
        _import_decord()

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        # PyAV reads the header (cheap, typed errors); decord then decodes.
        with _open_container(self.path) as container:
            stream = _video_stream(container)
            self.info = _header_info(container, stream)
            self._time_base: Fraction = stream.time_base
        decord = _import_decord()
        try:
            self._reader = decord.VideoReader(
                str(self.path), ctx=decord.cpu(0), fault_tol=self._FAULT_TOLERANCE
            )
        except Exception as e:  # decord raises bare RuntimeError / DECORDError
            raise self._failure(e) from e

    def close(self) -> None:
        self._reader = None

    def _sample(self, fps: Fraction, max_frames: int | None) -> Iterator[SampledFrame]:
        n = len(self._reader)
        if n == 0:
            raise _no_frames()
        ts = self._reader.get_frame_timestamp(range(n))  # (n, 2) float32 [start, end) s
        # float32 seconds lose exactness; snap back to the stream's integer ticks.
        ticks = np.rint(ts.astype(np.float64) / float(self._time_base)).astype(np.int64)
        starts = ticks[:, 0]
        duration_ticks = int(max(ticks[-1, 1], starts[-1]) - starts[0])
        self.decoded_duration_s = float(duration_ticks * self._time_base)
        _check_truncation(self.info, self.decoded_duration_s, fps, max_frames)
        try:
            indices = select_tick_indices(starts, duration_ticks, self._time_base, fps, max_frames)
        except ValueError as e:
            raise DecodeError(f"decord timestamps: {e}", "decode_error") from e
        for lo in range(0, len(indices), _DECORD_BATCH):
            chunk = indices[lo : lo + _DECORD_BATCH]
            wanted = np.unique(chunk)  # a frame may be on screen at two grid times
            frames = self._get_batch(wanted)  # (len(wanted), H, W, 3) uint8
            for i in chunk:
                pts_s = float((starts[i] - starts[0]) * self._time_base)
                yield SampledFrame(pts_s, frames[np.searchsorted(wanted, i)])

    def _get_batch(self, indices: np.ndarray) -> np.ndarray:
        try:
            frames = self._reader.get_batch(indices.tolist()).asnumpy()
        except Exception as e:  # DECORDError, DECORDLimitReachedError
            raise self._failure(e) from e
        self.frames_decoded += len(indices)
        return frames

    def _failure(self, e: Exception) -> DecodeError:
        # decord's index may come from the header (MP4 moov) and list frames whose data is
        # gone; tell a cut file apart from corrupt data by demuxing what is really there.
        scan = _demux_scan(self.path)
        if scan is not None and scan[0] == 0:
            return _no_frames()
        if scan is not None and _shortfall(self.info.duration_s, scan[1]):
            return _truncated(scan[1], self.info.duration_s)
        return DecodeError(f"corrupt video data: {_first_line(e)}", "decode_error")


def _demux_scan(path: Path) -> tuple[int, float] | None:
    """(intact video packets, seconds they span) actually present in the file."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = _video_stream(container)
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
