"""The "decord" decoder: random access, with indices from decord's own per-frame timestamps."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from vidfeat.decode.base import DECODERS, SampledFrame, VideoDecoder
from vidfeat.decode.probe import (
    check_truncation,
    demux_scan,
    display_quarter_turns,
    first_line,
    header_info,
    no_frames_error,
    open_container,
    packet_pts,
    shortfall,
    truncated_error,
    video_stream,
    video_streams,
)
from vidfeat.errors import ConfigError, DecodeError
from vidfeat.sampling import select_tick_indices

_DECORD_BATCH = 8  # frames per get_batch call; bounds memory on long, large videos
# Frame times beyond this (about 115 days) are not times but "no timestamp" markers.
_MAX_TIMESTAMP_S = 1e7


def _import_decord() -> object:
    try:
        import decord
    except ImportError as e:
        raise ConfigError(
            "decoder 'decord' needs the decord package (x86-64 only); use decoder 'pyav'"
        ) from e
    # Its FFmpeg prints every damaged NAL unit to stderr (hundreds of lines for one broken
    # file) whatever -q says; a failure's reason already names what went wrong.
    verbose = logging.getLogger(__name__).isEnabledFor(logging.DEBUG)
    decord.logging.set_level(decord.logging.INFO if verbose else decord.logging.QUIET)
    return decord


# A store holds one decoder's features, so the advice is a store of their own.
_USE_PYAV = "extract it with --decoder pyav, into another store"


def _refuse_misread(container: object, stream: object) -> None:
    """Refuse the inputs on which decord returns other pictures than the file shows, without an
    error: better a recorded failure than wrong features."""
    tracks = len(video_streams(container))
    if tracks > 1:
        # decord picks a track of its own (FFmpeg's "best"), which need not be the first.
        raise DecodeError(
            f"{tracks} video tracks: decord may read another than the first, which the store "
            f"describes; {_USE_PYAV}",
            "decode_error",
        )
    if "mpegts" in container.format.name:
        # In MPEG-TS its frame index and its pictures part ways: it skipped a whole first GOP
        # (H.264 with B-frames, MPEG-2) and returned frame 12 as frame 0 with frame 0's time,
        # and a file cut mid-GOP shifted both its grid and its pictures.
        raise DecodeError(f"MPEG-TS: decord returns wrong pictures; {_USE_PYAV}", "decode_error")
    codec = stream.codec_context
    if codec.name == "mpeg4" and codec.has_b_frames:
        # Its random access lands on the wrong picture after B-frames (decord issues #54,
        # #365): up to 80 grey levels off per pixel, with the right timestamp.
        raise DecodeError(
            f"MPEG-4 Part 2 (Xvid/DivX) with B-frames: decord returns wrong pictures; {_USE_PYAV}",
            "decode_error",
        )


def _ulp32(value: float) -> float:
    """The spacing of float32 values at ``value`` (24 significant bits)."""
    return float(np.ldexp(1.0, int(np.frexp(value)[1]) - 24))


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
            _refuse_misread(container, stream)
            self.info = header_info(container, stream)
            self._time_base: Fraction = stream.time_base
            # decord applies the display matrix itself, but for a quarter turn its batches fail
            # and single frames may come back with a wrong shape (see _get_turned).
            self._turned = display_quarter_turns(container, stream) % 2 == 1
        # decord's frame times are float32 seconds: a tick off past 128 s at 90 kHz, tens of
        # ms off for a stream that starts hours in. The demuxer has them exactly.
        self._pts, self._end = packet_pts(self.path)
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
        if not np.isfinite(ts).all() or float(np.abs(ts).max()) > _MAX_TIMESTAMP_S:
            # decord reports AV_NOPTS (about 9.2e15 s) for frames it could not time (seen in
            # short Matroska files): picking by those would return the wrong frames, silently.
            raise DecodeError(
                f"decord reports no timestamps for this file's frames; {_USE_PYAV}",
                "decode_error",
            )
        # float32 seconds lose exactness; snap back to the stream's integer ticks.
        ticks = np.rint(ts.astype(np.float64) / float(self._time_base)).astype(np.int64)
        exact = self._exact_starts(ticks[:, 0])
        starts = ticks[:, 0] if exact is None else exact
        if exact is not None and self._end is not None:
            end = self._end  # the last packet's own end, as the pyav decoder takes it
            if self.info.duration_s:  # ... and, as it does, no later than the stream's end
                declared = Fraction(self.info.duration_s) / self._time_base
                end = max(min(end, int(starts[0]) + math.floor(declared)), int(starts[-1]))
        else:
            end = max(int(ticks[-1, 1]), int(starts[-1]))
        duration_ticks = int(end - starts[0])
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

    def _exact_starts(self, snapped: np.ndarray) -> np.ndarray | None:
        """The demuxer's exact pts for decord's frames, once they are shown to be the same
        frames: as many, each within what float32 rounding of its absolute time explains.
        None when the lists differ in length: decord's own times are used, as before."""
        exact = self._pts
        if len(exact) != len(snapped):
            return None
        # float32 keeps 24 significant bits of the absolute time, in seconds or in ticks.
        largest = float(np.abs(exact).max(initial=0))
        tick = float(self._time_base)
        ulp_ticks = max(_ulp32(largest), _ulp32(largest * tick) / tick)
        slack = 2 + int(np.ceil(ulp_ticks))
        off = np.abs((snapped - snapped[0]) - (exact - exact[0])).max(initial=0)
        if off > slack:
            raise DecodeError(
                f"decord's frame times are {int(off)} ticks from the file's; {_USE_PYAV}",
                "decode_error",
            )
        return exact

    def _get_batch(self, indices: np.ndarray) -> np.ndarray:
        try:
            if self._turned:
                frames = np.stack([self._get_turned(int(i)) for i in indices])
            else:
                frames = self._reader.get_batch(indices.tolist()).asnumpy()
        except DecodeError:
            raise
        except Exception as e:  # DECORDError, DECORDLimitReachedError
            raise self._failure(e) from e
        self.frames_decoded += len(indices)
        return frames

    def _get_turned(self, index: int) -> np.ndarray:
        """One frame of a video turned by a quarter: (width, height) of the coded picture.

        decord 0.6 sizes such a frame from its padded row stride: a 72-pixel-wide picture
        with 288-byte rows comes back as (H, 72, 4). The rows are intact, so cut the padding.
        """
        height, width = self.info.width, self.info.height
        raw = self._reader[index].asnumpy()
        if raw.shape == (height, width, 3):
            return raw
        stride, rest = divmod(raw.size, height)
        if rest or stride < 3 * width:
            raise DecodeError(
                f"decord returned a {raw.shape} frame for a {width}x{height} rotated picture",
                "decode_error",
            )
        return np.ascontiguousarray(raw.reshape(height, stride)[:, : 3 * width]).reshape(
            height, width, 3
        )

    def _failure(self, e: Exception) -> DecodeError:
        # decord's index may come from the header (MP4 moov) and list frames whose data is
        # gone; tell a cut file apart from corrupt data by demuxing what is really there.
        scan = demux_scan(self.path)
        if scan is not None and scan[0] == 0:
            return no_frames_error()
        if scan is not None and shortfall(self.info.duration_s, scan[1]):
            return truncated_error(scan[1], self.info.duration_s)
        # decord fails files PyAV reads (AV1, MPEG-TS, H.264 in AVI, some small widths): not
        # necessarily corrupt data.
        reason = f"decord cannot decode it ({first_line(e)}); {_USE_PYAV}"
        return DecodeError(reason, "decode_error")
