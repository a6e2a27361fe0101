"""Open videos and sample frames by presentation timestamp, with typed failures.

Two decoders sit behind ``DECODERS``: "decord" (default, random access) and "pyav" (streams in
pts order, leaves out the unreferenced frames no pick needs, and stops as soon as
``max_frames`` are picked). Both choose frames with the rule in ``vidfeat.sampling`` from
per-frame timestamps, never from a header frame count or an index stride, and both raise
``DecodeError(reason, status)`` with one of:

- ``empty``: the file is missing or has zero bytes
- ``not_video``: not a media container at all (text, image, ...)
- ``no_video_stream``: a media file without a video track (audio only)
- ``unreadable``: looks like a video container but cannot be opened (e.g. MP4 without moov)
- ``decode_error``: corrupt coded data or a decoder failure
- ``truncated``: the decoded frames cover clearly less than the declared duration
- ``no_frames``: a video stream from which no frame could be decoded

Header probing and the failure rules live in ``vidfeat.probe``. Decoding runs in the caller's
process; ``vidfeat.workers`` isolates it against hangs and crashes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from vidfeat.errors import ConfigError, DecodeError
from vidfeat.probe import (
    VideoInfo,
    check_truncation,
    demux_scan,
    first_line,
    header_info,
    no_frames_error,
    open_container,
    shortfall,
    truncated_error,
    video_stream,
)
from vidfeat.registry import Registry
from vidfeat.sampling import (
    FrameSelector,
    Selected,
    parse_fps,
    pickable_ticks,
    select_tick_indices,
)

__all__ = [
    "DECODERS",
    "DecordDecoder",
    "PyAVDecoder",
    "SampledFrame",
    "VideoDecoder",
    "VideoInfo",
    "open_video",
]

log = logging.getLogger(__name__)

_DECORD_BATCH = 8  # frames per get_batch call; bounds memory on long, large videos


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

    def __init__(self, path: Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.threads = int(threads)  # decoding threads; 0: the library's default
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


def open_video(path: str | Path, decoder: str = "decord", threads: int = 0) -> VideoDecoder:
    """Open ``path`` with a registered decoder; raises ``DecodeError`` for unusable files.

    ``threads``: decoding threads for this video (0: the decoder library's default)."""
    if threads < 0:
        raise ConfigError(f"threads must be >= 0, got {threads}")
    factory = DECODERS.get(decoder)
    return factory(path=Path(path), threads=threads)


# --------------------------------------------------------------------------- PyAV


@DECODERS.register("pyav")
class PyAVDecoder(VideoDecoder):
    """Decodes in pts order with FFmpeg's own timestamps; stops once ``max_frames`` are picked."""

    name = "pyav"

    def __init__(self, path: Path, threads: int = 0) -> None:
        super().__init__(path, threads)
        self._open()

    def _open(self) -> None:
        self._container = open_container(self.path)
        try:
            self._stream = video_stream(self._container)
            self.info = header_info(self._container, self._stream)
        except BaseException:
            self._container.close()  # unclosed containers leak (PyAV#1117)
            raise
        # One thread per worker process decodes with the least CPU per frame; FFmpeg's own
        # threads help only when fewer processes than cores decode.
        self._stream.thread_type = "NONE" if self.threads == 1 else "AUTO"
        self._stream.thread_count = self.threads
        self._time_base = self._stream.time_base

    def close(self) -> None:
        self._container.close()

    def _sample(self, fps: Fraction, max_frames: int | None) -> Iterator[SampledFrame]:
        keep = self._pickable(fps, max_frames)
        try:
            yield from self._sample_with(fps, max_frames, keep)
        except _PlanMismatch:
            # The first frame shown is not the first packet (e.g. an edit list drops leading
            # frames), so the plan's grid was off. Nothing was picked yet: decode it all.
            log.debug("%s: first frame differs from the first packet; not skipping", self.path)
            self._container.close()
            self._open()
            self.frames_decoded = 0
            yield from self._sample_with(fps, max_frames, None)

    def _sample_with(
        self, fps: Fraction, max_frames: int | None, keep: set[int] | None
    ) -> Iterator[SampledFrame]:
        selector: FrameSelector[av.VideoFrame] = FrameSelector(fps, max_frames)
        for pts_s, frame, duration_s in self._frames(keep):
            yield from map(_to_sampled, selector.push(pts_s, frame, duration_s))
            if selector.done:
                return  # the rest of the file is never decoded
        if selector.n_frames == 0:
            raise no_frames_error()
        self.decoded_duration_s = float(selector.end_s - selector.first_pts_s)
        check_truncation(self.info, self.decoded_duration_s, fps, max_frames)
        yield from map(_to_sampled, selector.finish())

    def _pickable(self, fps: Fraction, max_frames: int | None) -> set[int] | None:
        """pts of the frames a pick may need, from one demux pass (it reads packets, decodes
        nothing); None when packets lack pts, and every frame is decoded.

        At 1 fps from 30 fps H.264 most frames are never picked. FFmpeg's
        ``skip_frame=NONREF`` leaves out those that no other frame references (most B-frames),
        which changes no picked frame and saved about 30% of the decoding CPU on 720p H.264.
        """
        tb = self._time_base
        horizon = None if max_frames is None else (Fraction(max_frames) / fps + 2) / tb
        pts: list[int] = []
        try:
            with open_container(self.path) as container:
                for packet in container.demux(video_stream(container)):
                    if not packet.size or packet.is_discard:
                        continue  # flush packets; frames the decoder drops by design
                    if packet.pts is None or packet.is_corrupt:
                        return None
                    pts.append(packet.pts)
                    if horizon is not None and packet.pts - pts[0] > horizon:
                        break  # a long video: frames this late are never picked
        except (av.error.FFmpegError, DecodeError):
            return None  # a damaged file: the decoding pass reports what is wrong
        if not pts or len(set(pts)) != len(pts):
            return None  # repeated pts: not a stream whose frames pts identify
        self._first_tick, self._packet_pts = min(pts), set(pts)
        return pickable_ticks(np.asarray(pts, np.int64), self._time_base, fps, max_frames)

    def _frames(
        self, keep: set[int] | None
    ) -> Iterator[tuple[Fraction, av.VideoFrame, Fraction | None]]:
        codec = self._stream.codec_context
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return  # the demuxer's final empty packet already flushed the decoder
            except av.error.FFmpegError as e:
                # The container breaks off here; the coverage check judges what is missing.
                log.warning("%s: demuxing stopped early: %s", self.path, first_line(e))
                break
            if packet.is_corrupt and packet.size:
                # Flagged by the demuxer, e.g. cut short by the end of the file: never feed
                # it to the codec (PyAV#2344). If the file ends here, the coverage check
                # reports truncation; mid-stream, the codec's own errors decide.
                log.warning("%s: skipping a damaged packet", self.path)
                continue
            if keep is not None:
                # FFmpeg copies this setting to its frame threads per packet, so it applies
                # to exactly this packet.
                codec.skip_frame = "DEFAULT" if packet.pts in keep else "NONREF"
            for decoded in self._decode(packet):
                if keep is not None and self.frames_decoded == 1:
                    if decoded[1].pts != self._first_tick:
                        raise _PlanMismatch
                elif keep is not None and decoded[1].pts not in self._packet_pts:
                    # The codec's pts do not match the packets': stop trusting the plan.
                    log.debug("%s: frame pts unknown to the demuxer; not skipping", self.path)
                    keep = None
                    codec.skip_frame = "DEFAULT"
                yield decoded
        yield from self._decode(None)

    def _decode(
        self, packet: av.Packet | None
    ) -> Iterator[tuple[Fraction, av.VideoFrame, Fraction | None]]:
        tb = self._time_base
        try:
            frames = self._stream.decode(packet)
        except av.error.FFmpegError as e:
            at = f" at {float(packet.pts * tb):.2f} s" if packet and packet.pts is not None else ""
            raise DecodeError(f"corrupt video data{at}: {first_line(e)}", "decode_error") from e
        for frame in frames:
            self.frames_decoded += 1
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None:
                raise DecodeError("a decoded frame carries no timestamp", "decode_error")
            if frame.is_corrupt:
                raise DecodeError(f"corrupt frame at {float(pts * tb):.2f} s", "decode_error")
            yield pts * tb, frame, (frame.duration * tb if frame.duration else None)


class _PlanMismatch(Exception):
    """The skip plan's first frame is not the first frame decoded."""


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

    def __init__(self, path: Path, threads: int = 0) -> None:
        super().__init__(path, threads)
        # PyAV reads the header (cheap, typed errors); decord then decodes.
        with open_container(self.path) as container:
            stream = video_stream(container)
            self.info = header_info(container, stream)
            self._time_base: Fraction = stream.time_base
        decord = _import_decord()
        try:
            self._reader = decord.VideoReader(
                str(self.path),
                ctx=decord.cpu(0),
                num_threads=self.threads,
                fault_tol=self._FAULT_TOLERANCE,
            )
        except Exception as e:  # decord raises bare RuntimeError / DECORDError
            raise self._failure(e) from e

    def close(self) -> None:
        self._reader = None

    def _sample(self, fps: Fraction, max_frames: int | None) -> Iterator[SampledFrame]:
        n = len(self._reader)
        if n == 0:
            raise no_frames_error()
        ts = self._reader.get_frame_timestamp(range(n))  # (n, 2) float32 [start, end) s
        # float32 seconds lose exactness; snap back to the stream's integer ticks.
        ticks = np.rint(ts.astype(np.float64) / float(self._time_base)).astype(np.int64)
        starts = ticks[:, 0]
        duration_ticks = int(max(ticks[-1, 1], starts[-1]) - starts[0])
        self.decoded_duration_s = float(duration_ticks * self._time_base)
        check_truncation(self.info, self.decoded_duration_s, fps, max_frames)
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
        scan = demux_scan(self.path)
        if scan is not None and scan[0] == 0:
            return no_frames_error()
        if scan is not None and shortfall(self.info.duration_s, scan[1]):
            return truncated_error(scan[1], self.info.duration_s)
        return DecodeError(f"corrupt video data: {first_line(e)}", "decode_error")
