"""The "pyav" decoder: streams in pts order with FFmpeg's own timestamps.

It leaves out the unreferenced frames that no pick needs, jumps over the stretches between
picks that lie before a keyframe, and stops as soon as ``max_frames`` are picked, which makes
it the cheaper decoder for H.264 on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidfeat.decode.base import DECODERS, SampledFrame, VideoDecoder
from vidfeat.decode.probe import (
    check_truncation,
    first_line,
    header_info,
    no_frames_error,
    open_container,
    quarter_turns,
    video_stream,
)
from vidfeat.errors import DecodeError
from vidfeat.sampling import FrameSelector, Selected, pickable_ticks

log = logging.getLogger(__name__)


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
        self._untimed_next: int | None = None  # next tick of a stream without timestamps
        self._jumps: dict[int, int] = {}  # from _pickable: see keyframe_jumps
        self._resumed: int | None = None  # pts of the keyframe just jumped to, until decoded

    def close(self) -> None:
        self._container.close()

    def _reopen(self) -> None:
        """The file opened afresh, to decode again from its first packet."""
        self._container.close()
        self._open()

    def _sample(self, fps: Fraction, max_frames: int | None) -> Iterator[SampledFrame]:
        keep = self._pickable(fps, max_frames)
        try:
            yield from self._sample_with(fps, max_frames, keep)
        except _PlanMismatch:
            # The first frame shown is not the first packet (e.g. an edit list drops leading
            # frames), so the plan's grid was off. Nothing was picked yet: decode it all.
            log.debug("%s: first frame differs from the first packet; not skipping", self.path)
            self._reopen()
            self.frames_decoded = 0
            yield from self._sample_with(fps, max_frames, None)

    def _sample_with(
        self, fps: Fraction, max_frames: int | None, keep: set[int] | None
    ) -> Iterator[SampledFrame]:
        selector: FrameSelector[av.VideoFrame] = FrameSelector(fps, max_frames, self._time_base)
        for pts_s, frame, duration_s in self._frames(keep):
            yield from map(_to_sampled, selector.push(pts_s, frame, duration_s))
            if selector.done:
                return  # the rest of the file is never decoded
        if selector.n_frames == 0:
            raise no_frames_error()
        if self.info.duration_s:  # the stream's own length bounds its last frame's
            selector.cap_end(selector.first_pts_s + Fraction(self.info.duration_s))
        self.decoded_duration_s = float(selector.end_s - selector.first_pts_s)
        check_truncation(self.info, self.decoded_duration_s, fps, max_frames)
        yield from map(_to_sampled, selector.finish())

    def _pickable(self, fps: Fraction, max_frames: int | None) -> set[int] | None:
        """pts of the frames a pick may need, from one demux pass (it reads packets, decodes
        nothing); None when packets lack pts, and every frame is decoded. The same pass's
        keyframe flags plan where decoding may jump ahead (``keyframe_jumps``).

        At 1 fps from 30 fps H.264 most frames are never picked. FFmpeg's
        ``skip_frame=NONREF`` leaves out those that no other frame references (most B-frames),
        which changes no picked frame and saved about 30% of the decoding CPU on 720p H.264.
        """
        tb = self._time_base
        horizon = None if max_frames is None else (Fraction(max_frames) / fps + 2) / tb
        pts: list[int] = []
        keys: list[bool] = []
        try:
            with open_container(self.path) as container:
                for packet in container.demux(video_stream(container)):
                    if not packet.size or packet.is_discard:
                        continue  # flush packets; frames the decoder drops by design
                    if packet.pts is None or packet.is_corrupt:
                        return None
                    pts.append(packet.pts)
                    keys.append(packet.is_keyframe)
                    if horizon is not None and packet.pts - pts[0] > horizon:
                        break  # a long video: frames this late are never picked
        except (av.error.FFmpegError, DecodeError):
            return None  # a damaged file: the decoding pass reports what is wrong
        if not pts or len(set(pts)) != len(pts):
            return None  # repeated pts: not a stream whose frames pts identify
        self._first_tick, self._packet_pts = min(pts), set(pts)
        keep = pickable_ticks(np.asarray(pts, np.int64), self._time_base, fps, max_frames)
        self._jumps = keyframe_jumps(pts, keys, keep)
        return keep

    def _frames(
        self, keep: set[int] | None
    ) -> Iterator[tuple[Fraction, av.VideoFrame, Fraction | None]]:
        last_s: Fraction | None = None  # time of the last frame handed on
        try:
            for decoded in self._frames_from_start(keep, self._jumps if keep is not None else {}):
                last_s = decoded[0]
                yield decoded
        except _JumpFailed as failed:
            # What followed a jump is not trusted: the packet flagged as a keyframe did not
            # decode as one (x264's intra refresh, or a muxer that flags too much), or frame
            # pts strayed from the plan. Nothing between the frames handed on and that packet
            # was needed, so decode again from the start without jumps (still leaving out
            # unreferenced frames) and carry on after the last frame handed on.
            log.info("%s: %s; decoding again from the start without jumps", self.path, failed)
            self._reopen()
            for decoded in self._frames_from_start(keep, {}):
                if last_s is None or decoded[0] > last_s:
                    yield decoded

    def _frames_from_start(
        self, keep: set[int] | None, jumps: dict[int, int]
    ) -> Iterator[tuple[Fraction, av.VideoFrame, Fraction | None]]:
        """Decoded frames in pts order from the first packet on, leaving out the unreferenced
        frames ``keep`` does not hold and jumping as ``jumps`` says (see ``keyframe_jumps``)."""
        codec = self._stream.codec_context
        packets = self._container.demux(self._stream)
        resume: int | None = None  # pts of the keyframe packet decoding jumps to
        jumped = False
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return  # the demuxer's final empty packet already flushed the decoder
            except av.error.FFmpegError as e:
                # The container breaks off here; the coverage check judges what is missing.
                log.warning("%s: demuxing stopped early: %s", self.path, first_line(e))
                break
            if resume is not None:
                if packet.pts != resume:
                    continue  # between the picks: nothing shown here is needed
                resume, self._resumed, jumped = None, packet.pts, True
            if packet.is_corrupt and packet.size:
                # Flagged by the demuxer, e.g. cut short by the end of the file: never feed
                # it to the codec (PyAV#2344). If the file ends here, the coverage check
                # reports truncation; mid-stream, the codec's own errors decide.
                log.warning("%s: skipping a damaged packet", self.path)
                continue
            if keep is not None:
                # FFmpeg copies this setting to its frame threads per packet, so it applies
                # to exactly this packet. The packet jumped to is always decoded, so that
                # _decode sees whether it is a keyframe.
                needed = packet.pts in keep or packet.pts == self._resumed
                codec.skip_frame = "DEFAULT" if needed else "NONREF"
            jump_to = jumps.get(packet.pts)
            for decoded in self._decode(packet, drain=jump_to is not None):
                if keep is not None and self.frames_decoded == 1:
                    if decoded[1].pts != self._first_tick:
                        raise _PlanMismatch
                elif keep is not None and decoded[1].pts not in self._packet_pts:
                    if jumped or jump_to is not None:
                        # Frames were left out on this plan, or the codec is being reset
                        # for a jump: "decode everything from here" cannot repair that.
                        raise _JumpFailed("frame pts strayed from the demuxer's after a jump")
                    # The codec's pts do not match the packets': stop trusting the plan.
                    log.debug("%s: frame pts unknown to the demuxer; not skipping", self.path)
                    keep, jumps = None, {}
                    codec.skip_frame = "DEFAULT"
                yield decoded
            resume = jump_to
        yield from self._decode(None)

    def _decode(
        self, packet: av.Packet | None, drain: bool = False
    ) -> Iterator[tuple[Fraction, av.VideoFrame, Fraction | None]]:
        """The frames the codec gives out for ``packet`` (None or an empty packet: drain
        it); ``drain``: then drain the codec and reset it, for a jump to a keyframe.

        Just after a jump (``_resumed``, kept on the decoder because the keyframe's frame may
        come out for a later packet, with frame threads), frames shown before the keyframe (an
        open GOP's leading frames, which refer to frames never decoded) are dropped, and the
        next frame must be that keyframe, decoded as one, before the codec is drained."""
        tb = self._time_base
        try:
            frames = self._stream.decode(packet)
            if drain:
                frames += self._stream.decode(None)
                self._stream.codec_context.flush_buffers()
        except av.error.FFmpegError as e:
            if self._resumed is not None:
                raise _JumpFailed(f"keyframe at {float(self._resumed * tb):.2f} s failed") from e
            at = f" at {float(packet.pts * tb):.2f} s" if packet and packet.pts is not None else ""
            raise DecodeError(f"corrupt video data{at}: {first_line(e)}", "decode_error") from e
        for frame in frames:
            self.frames_decoded += 1
            if self._resumed is not None:
                if frame.pts is not None and frame.pts < self._resumed:
                    continue
                if frame.pts != self._resumed or not frame.key_frame or frame.is_corrupt:
                    raise self._not_a_keyframe()
                self._resumed = None
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None:
                pts = self._untimed_pts(frame)
            elif self._untimed_next is not None:  # numbered from 0 so far: its times differ
                raise DecodeError("timestamps appear midway through the stream", "decode_error")
            if frame.is_corrupt:
                raise DecodeError(f"corrupt frame at {float(pts * tb):.2f} s", "decode_error")
            yield pts * tb, frame, (frame.duration * tb if frame.duration else None)
        if (packet is None or not packet.size or drain) and self._resumed is not None:
            # Drained, and the keyframe jumped to never came out (a codec gives nothing
            # until a true keyframe after a reset).
            raise self._not_a_keyframe()

    def _not_a_keyframe(self) -> _JumpFailed:
        at = float((self._resumed or 0) * self._time_base)
        return _JumpFailed(f"the packet flagged as a keyframe at {at:.2f} s is not one")

    def _untimed_pts(self, frame: av.VideoFrame) -> int:
        """Times for a raw elementary stream (e.g. a camera's ``.h264``), which carries no
        timestamps: FFmpeg's parser gives each frame the duration the codec declares (the
        SPS's timing), so frames are timed end to end from 0 by it, as FFmpeg's own tools do.
        Only a stream untimed from its first frame qualifies: one that loses its timestamps
        midway is damaged."""
        if not frame.duration or (self._untimed_next is None and self.frames_decoded > 1):
            raise DecodeError("a decoded frame carries no timestamp", "decode_error")
        pts = self._untimed_next or 0
        self._untimed_next = pts + frame.duration
        return pts


class _PlanMismatch(Exception):
    """The skip plan's first frame is not the first frame decoded."""


class _JumpFailed(Exception):
    """Decoding jumped to a packet flagged as a keyframe that did not decode as one."""


def keyframe_jumps(pts: list[int], keys: list[bool], keep: set[int]) -> dict[int, int]:
    """Where decoding may jump ahead: {pts of a packet: pts of the keyframe packet to go on
    at}, from every packet's pts and keyframe flag in decode order, and the pts ``keep``
    holds (the frames a pick may need).

    A GOP (a keyframe and the packets up to the next) is needed up to its last kept packet in
    decode order: a frame refers only to frames decoded before it. After that packet nothing
    is needed until the next GOP holding a kept frame, whose keyframe decoding starts afresh
    from. An open GOP's leading frames (decoded after its keyframe, shown before it) may refer
    to the GOP before, and no further back (the recovery-point rule of H.264 and HEVC: frames
    from a keyframe on decode correctly when decoding starts there); when one of them is kept,
    decoding runs into that GOP from the start of the one before. The packets before the
    first keyframe (a file cut mid-GOP) count as a GOP of their own: decoding starts there.

    Frames never decoded are never checked: damage inside a stretch jumped over goes
    unreported, as inside the unreferenced frames left out. The frames picked are the same.
    """
    if not pts:
        return {}
    starts = [0, *(i for i, key in enumerate(keys) if key and i)]
    ends = [*starts[1:], len(pts)]
    last_needed: list[int | None] = []  # per GOP, the last packet its kept frames need
    for start, end in zip(starts, ends, strict=True):
        kept = [i for i in range(start, end) if pts[i] in keep]
        last_needed.append(kept[-1] if kept else None)
    for g in range(1, len(starts)):
        leading = range(starts[g] + 1, ends[g])
        if any(pts[i] in keep and pts[i] < pts[starts[g]] for i in leading):
            last_needed[g - 1] = ends[g - 1] - 1  # all of the GOP before
    jumps: dict[int, int] = {}
    previous: int | None = None  # the last packet needed so far
    for g, last in enumerate(last_needed):
        if last is None:
            continue
        if previous is not None and previous + 1 < starts[g]:
            jumps[pts[previous]] = pts[starts[g]]
        previous = last
    return jumps


def _to_sampled(pick: Selected[av.VideoFrame]) -> SampledFrame:
    return SampledFrame(float(pick.pts_s), displayed_rgb(pick.frame))


def displayed_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB as a player shows it: the display matrix's rotation applied.

    FFmpeg's own players (and decord) turn the picture by the matrix's counterclockwise angle;
    PyAV leaves that to the caller.
    """
    rgb = frame.to_ndarray(format="rgb24")
    turns = quarter_turns(frame.rotation)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
