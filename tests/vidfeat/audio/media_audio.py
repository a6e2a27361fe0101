"""Test media with real encoded audio, written with PyAV: tones whose pitch changes each second.

Second k of the audio is a pure tone at ``tone_hz(k)``, so a test can read back which second
an example came from by the mel band where it peaks.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.media import index_pattern

TONES_HZ = (440.0, 1000.0, 2500.0, 600.0, 4000.0, 1500.0, 300.0, 3000.0)


def tone_hz(second: int) -> float:
    return TONES_HZ[second % len(TONES_HZ)]


def tone_signal(seconds: float, rate: int, channels: int = 1, amplitude: float = 0.4) -> np.ndarray:
    """(n, channels) float32: second k is a tone at tone_hz(k), the same in every channel."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    freq = np.array([tone_hz(int(s)) for s in t.astype(np.int64)], np.float64)
    phase = 2 * np.pi * np.cumsum(freq) / rate
    mono = (amplitude * np.sin(phase)).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1)


_VIDEO_CODEC = {".mp4": ("libx264", {"preset": "ultrafast"}), ".webm": ("libvpx", {})}
_AUDIO_FORMAT = {"pcm_s16le": "s16", "libmp3lame": "s16p", "libopus": "flt"}


def write_media(
    path: Path,
    *,
    audio_codec: str | None,
    rate: int = 16000,
    channels: int = 1,
    audio_seconds: float = 3.0,
    audio_start_s: float = 0.0,
    video_seconds: float | None = None,
    fps: int = 10,
    faststart: bool = False,
    garbage_audio_s: tuple[float, float] | None = None,
) -> np.ndarray:
    """Write a container (by suffix) with an optional video and audio track.

    Returns the audio written, (n, channels) float32 (before encoding). The audio's first
    sample has pts ``audio_start_s``; the video (if any) starts at pts 0.
    """
    signal = tone_signal(audio_seconds, rate, channels)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        video = None
        if video_seconds is not None:
            codec, options = _VIDEO_CODEC.get(Path(path).suffix, _VIDEO_CODEC[".mp4"])
            video = container.add_stream(codec, rate=fps, options=options)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = None
        if audio_codec is not None:
            layout = "mono" if channels == 1 else "stereo"
            # FFmpeg's own Vorbis encoder is flagged experimental.
            options = {"strict": "experimental"} if audio_codec == "vorbis" else {}
            audio = container.add_stream(audio_codec, rate=rate, layout=layout, options=options)
        if video is not None:
            for i in range(int(video_seconds * fps)):
                frame = av.VideoFrame.from_ndarray(index_pattern(i, (64, 48)), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                for packet in video.encode(frame):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
        if audio is not None:
            _encode_audio(container, audio, signal, rate, audio_start_s, garbage_audio_s)
    return signal


def _encode_audio(container, stream, signal, rate, start_s, garbage_s=None) -> None:
    fmt = _AUDIO_FORMAT.get(stream.codec_context.name, "fltp")
    layout = "mono" if signal.shape[1] == 1 else "stereo"
    step = stream.codec_context.frame_size or 1024
    offset = round(start_s * rate)
    tb = Fraction(1, rate)
    for start in range(0, len(signal), step):
        chunk = signal[start : start + step]
        if fmt.startswith("s16"):
            chunk = np.round(chunk * 32767).astype(np.int16)
        array = chunk.T if fmt.endswith("p") else chunk.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=fmt, layout=layout)
        frame.sample_rate, frame.time_base, frame.pts = rate, tb, offset + start
        for packet in stream.encode(frame):
            container.mux(_damaged(packet, garbage_s))
    for packet in stream.encode():
        container.mux(_damaged(packet, garbage_s))


def _damaged(packet, garbage_s):
    if garbage_s is None or packet.pts is None:
        return packet
    t = float(packet.pts * packet.time_base)
    if not garbage_s[0] <= t < garbage_s[1]:
        return packet
    noise = np.random.default_rng(packet.pts).integers(0, 256, packet.size, dtype=np.uint8)
    bad = av.Packet(noise.tobytes())
    bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
    bad.duration, bad.stream = packet.duration, packet.stream
    return bad
