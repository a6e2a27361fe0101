"""Decoding a file's audio track into one VGGish example per video frame timestamp.

The track is decoded with PyAV in pts order, converted to float and averaged to mono as the
reference front end reads a WAV (int16 / 32768, channel mean), laid on its own sample clock
(``Timeline``), resampled to 16 kHz as it streams by the reference's interpolator
(``StreamResampler``, resampy's ``kaiser_best``) and cut into windows (``WindowCutter``). Memory
stays at about one window whatever the file's length, and the 16 kHz samples are those that
resampling the whole decoded track at once gives. Positions come from the decoded audio's own
pts, so audio that starts after the first video frame, or ends before the last, lines up: the
window for a frame at ``t`` reads the audio at ``origin + t``, and samples outside the track
are silence (zeros).

Failures use the video track's statuses (``vidfeat.decode.base``): ``decode_error`` for
corrupt coded audio and ``truncated`` when decoding ends clearly before the audio track's
declared duration. A file without an audio track is not a failure: ``has_audio`` is False.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from vidfeat.audio.mel import VGGISH_LOG_MEL, LogMelParams, windows_to_examples
from vidfeat.audio.source import SourceTrack, frame_to_mono
from vidfeat.audio.window import WindowCutter
from vidfeat.decode.probe import first_line, open_container, shortfall, video_stream
from vidfeat.errors import DecodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioExamples:
    """One log-mel example per requested timestamp, and what the audio track was."""

    examples: np.ndarray  # (T, 96, 64) float32; silence (log 0.01) where there is no audio
    has_audio: bool  # False: the file has no audio track (not a failure)
    start_s: float | None  # pts of the first decoded audio sample, seconds
    end_s: float | None  # pts just past the last decoded sample, seconds
    source_rate: int | None  # the track's sample rate before resampling
    source_channels: int | None
    codec: str | None


def video_origin_s(path: str | Path) -> float:
    """pts (seconds) of the first video frame shown, the zero of the frame timestamps.

    For a file without a video track, the container's start time: the pts FFmpeg gives its
    first sample (MP3 files start at their encoder delay, e.g. 0.138 s, not at 0).
    Decodes one frame, as the video decoders do.
    """
    with open_container(Path(path)) as container:
        try:
            stream = video_stream(container)
        except DecodeError:
            return (container.start_time or 0) / av.time_base
        for frame in container.decode(stream):
            pts = frame.pts if frame.pts is not None else frame.dts
            return float(pts * stream.time_base) if pts is not None else 0.0
    return 0.0


def decode_audio_examples(
    path: str | Path,
    timestamps_s: Sequence[float] | np.ndarray,
    origin_s: float | None = None,
    params: LogMelParams = VGGISH_LOG_MEL,
) -> AudioExamples:
    """One example per timestamp: the 0.96 s of audio starting at ``origin_s + t``.

    ``timestamps_s`` are video frame timestamps relative to the first frame (what the video
    decoders return), ascending; ``origin_s`` is that frame's pts (``video_origin_s`` if None).
    """
    path = Path(path)
    times = np.asarray(timestamps_s, np.float64)
    origin = video_origin_s(path) if origin_s is None else float(origin_s)
    starts = np.round((origin + times) * params.sample_rate).astype(np.int64)
    cutter = WindowCutter(starts, params.example_samples)
    with open_container(path) as container:
        if not container.streams.audio:
            return _result(cutter, params, None, None)
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise DecodeError("audio codec is not supported by this FFmpeg build", "decode_error")
        track = SourceTrack(params.sample_rate, _jitter_s(stream))
        broke_off: list[bool] = []
        for frame in _decoded(container, stream, broke_off):
            position = _position(frame)
            if track.rate is None:
                if position is None:
                    position = _stream_start(container, stream, frame.sample_rate)
                cutter.push(np.zeros(0), track.start(frame.sample_rate, position))
            cutter.push(track.push(frame_to_mono(frame), position, frame.sample_rate))
            if cutter.done:
                break  # later audio is never needed
        else:
            if track.rate is not None:
                cutter.push(track.finish())
            declared = _declared_duration_s(container, stream, bool(broke_off))
            _check_coverage(track, declared)
        _check_gaps(track)
        return _result(cutter, params, stream, track)


def _position(frame: av.AudioFrame) -> int | None:
    """The frame's first sample as an index on the source rate's clock (None: no pts)."""
    if frame.pts is None or frame.time_base is None:
        return None
    return round(frame.pts * frame.time_base * frame.sample_rate)


def _stream_start(container: av.container.InputContainer, stream: av.AudioStream, rate: int) -> int:
    """Where audio without timestamps starts: the stream's declared start, else the file's."""
    if stream.start_time is not None and stream.time_base:
        return round(stream.start_time * stream.time_base * rate)
    return round((container.start_time or 0) / av.time_base * rate)


def _jitter_s(stream: av.AudioStream) -> float:
    """How far frame positions may miss each other without audio missing: the container's
    timestamp resolution, and at least 5 ms (half a frame hop)."""
    tick = float(stream.time_base) if stream.time_base else 0.0
    return max(tick, 0.005)


def _result(
    cutter: WindowCutter,
    params: LogMelParams,
    stream: av.AudioStream | None,
    track: SourceTrack | None,
) -> AudioExamples:
    ctx = stream.codec_context if stream is not None else None
    return AudioExamples(
        examples=windows_to_examples(cutter.finish(), params),
        has_audio=stream is not None,
        start_s=track.first_s if track else None,
        end_s=track.end_s if track else None,
        source_rate=ctx.sample_rate if ctx else None,
        source_channels=ctx.channels if ctx else None,
        codec=ctx.name if ctx else None,
    )


def _decoded(
    container: av.container.InputContainer, stream: av.AudioStream, broke_off: list[bool]
) -> Iterator:
    tb = stream.time_base
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            # The container breaks off here; the coverage check judges what is missing.
            log.warning("audio demuxing stopped early: %s", first_line(e))
            broke_off.append(True)
            return
        if packet.is_corrupt and packet.size:
            log.warning("skipping a damaged audio packet")  # never fed to the codec (PyAV#2344)
            continue
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError as e:
            at = f" at {float(packet.pts * tb):.2f} s" if packet.pts is not None else ""
            if _at_end(packets):
                # The file's last packet, cut short (an interrupted recording or download,
                # which the demuxer does not flag): the file breaks off here.
                log.warning("the last audio packet%s is cut short: %s", at, first_line(e))
                broke_off.append(True)
                return
            raise DecodeError(f"corrupt audio data{at}: {first_line(e)}", "decode_error") from e
        for frame in frames:
            if frame.time_base is None:
                frame.time_base = tb
            yield frame


def _at_end(packets: Iterator) -> bool:
    """Whether ``packets`` holds no more data, only the demuxer's final empty packet (it is
    consumed: call only to decide to stop)."""
    try:
        return not any(packet.size for packet in packets)
    except av.error.FFmpegError:
        return True  # the file breaks off right after


# Containers that store each track's own duration (ISO BMFF: MP4, MOV, M4A, 3GP). Elsewhere
# FFmpeg fills stream.duration with an estimate (Matroska's file duration, an MPEG-TS guess
# from the bitrate), which a track that starts late or carries no packet does not reach.
_TRACK_DURATION_FORMATS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2"}


def _declared_duration_s(
    container: av.container.InputContainer, stream: av.AudioStream, broke_off: bool
) -> float | None:
    """The audio track's declared duration, if the file says it.

    The track's own duration when the container stores one (MP4). Otherwise (Matroska/WebM,
    MPEG-TS, ...) the container's, but only where it must be the audio's: the file has no
    video track, or demuxing broke off, since audio that simply ends before the video (or
    starts after it) is not damage.
    """
    own = _TRACK_DURATION_FORMATS & set(container.format.name.split(","))
    if own and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and (broke_off or not container.streams.video):
        return container.duration / av.time_base
    return None


def _check_coverage(track: SourceTrack, declared: float | None) -> None:
    """``truncated`` when the decoded audio ends clearly before its declared end (the
    tolerance of the video's truncation check)."""
    if track.first_s is None:
        if declared:
            raise DecodeError("no audio sample could be decoded", "decode_error")
        return
    span = track.end_s - track.first_s
    if declared is not None and shortfall(declared, span):
        raise DecodeError(
            f"decoded {span:.1f} s of audio of declared {declared:.1f} s", "truncated"
        )


def _check_gaps(track: SourceTrack) -> None:
    """``decode_error`` when clearly more audio is missing mid-stream than timestamps round
    off: the demuxer skipped damaged data (same tolerance as truncation)."""
    if track.first_s is None or not track.gap_s:
        return
    span = track.end_s - track.first_s
    if shortfall(span, span - track.gap_s):
        raise DecodeError(f"{track.gap_s:.1f} s of audio missing mid-stream", "decode_error")


def silence_value(params: LogMelParams = VGGISH_LOG_MEL) -> float:
    """The log-mel value of digital silence, log(0 + log_offset)."""
    return float(np.log(params.log_offset))


__all__ = ["AudioExamples", "decode_audio_examples", "video_origin_s"]
