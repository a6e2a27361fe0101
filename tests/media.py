"""Small synthetic test videos written with PyAV, and the corrupt inputs built from them.

Every frame carries its own index as a grid of bright/dark blocks (one bit per block), big
enough to survive lossy compression, so a test can read back WHICH frame a decoder returned
with ``read_frame_index``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 12  # up to 4096 frames; a 4 x 3 grid of blocks
_GRID_COLS, _GRID_ROWS = 4, 3
_DARK, _BRIGHT = 16, 235
# Variable-frame-rate schedule: frame intervals cycle through these multiples of 1/fps.
_VFR_INTERVALS = (Fraction(1, 2), Fraction(3, 2), Fraction(1), Fraction(2), Fraction(1, 2))
_MS = Fraction(1, 1000)
# Matroska/WebM store timestamps in milliseconds whatever the encoder's time base.
_MS_CONTAINERS = (".mkv", ".webm")


@dataclass(frozen=True)
class SyntheticVideo:
    """A video written by ``write_video``: where it is and the exact pts of each frame."""

    path: Path
    frame_times_s: tuple[Fraction, ...]  # pts of frame i, relative to frame 0
    duration_s: Fraction  # last pts + one nominal frame interval
    codec: str

    @property
    def n_frames(self) -> int:
        return len(self.frame_times_s)


def frame_times_s(
    seconds: float,
    fps: Fraction | float | str,
    vfr: bool = False,
    time_base: Fraction | None = None,
) -> list[Fraction]:
    """Exact pts (seconds) of every frame ``write_video`` writes for these settings."""
    rate = Fraction(str(fps))
    total = Fraction(str(seconds))
    tb = time_base or (_MS if vfr else 1 / rate)
    if not vfr:
        return [_quantize(Fraction(i) / rate, tb) for i in range(max(1, round(total * rate)))]
    times, t, i = [], Fraction(0), 0
    while t < total:
        times.append(t)
        t = _quantize(t + _VFR_INTERVALS[i % len(_VFR_INTERVALS)] / rate, tb)
        i += 1
    return times


def _quantize(t: Fraction, tb: Fraction) -> Fraction:
    return round(t / tb) * tb


# Tinted blocks for pattern="colour": sharp chroma edges, still read as dark / bright.
_DARK_TINT, _BRIGHT_TINT = (16, 60, 130), (235, 200, 60)


def index_pattern(
    index: int, size: tuple[int, int], noise: bool = False, colour: bool = False
) -> np.ndarray:
    """RGB uint8 (H, W, 3) frame whose block grid spells ``index`` in binary."""
    width, height = size
    img = np.full((height, width, 3), _DARK_TINT if colour else _DARK, np.uint8)
    bw, bh = width // _GRID_COLS, height // _GRID_ROWS
    for bit in range(INDEX_BITS):
        if index >> bit & 1:
            r, c = divmod(bit, _GRID_COLS)
            img[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = _BRIGHT_TINT if colour else _BRIGHT
    if noise:
        rng = np.random.default_rng(index)
        jitter = rng.integers(-40, 41, size=img.shape)
        img = np.clip(img.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
    return img


def read_frame_index(frame: np.ndarray) -> int:
    """Inverse of ``index_pattern`` for a decoded (H, W, 3) uint8 frame of any size."""
    height, width = frame.shape[:2]
    bw, bh = width / _GRID_COLS, height / _GRID_ROWS
    index = 0
    for bit in range(INDEX_BITS):
        r, c = divmod(bit, _GRID_COLS)
        # Read only the block's centre: edges blur under compression and resizing.
        y0, y1 = int((r + 0.25) * bh), int((r + 0.75) * bh)
        x0, x1 = int((c + 0.25) * bw), int((c + 0.75) * bw)
        if frame[y0:y1, x0:x1].mean() > 128:
            index |= 1 << bit
    return index


_CODEC_OPTIONS = {
    "libx264": {"crf": "18", "preset": "ultrafast"},
    "mpeg4": {"b": "2M"},
    "libvpx": {"crf": "10", "b": "1M"},
    "libvpx-vp9": {"crf": "20", "b": "0"},
    "libx265": {"crf": "18", "preset": "ultrafast", "x265-params": "log-level=error"},
}
# Codecs that only take palette or RGB frames.
_CODEC_PIX_FMT = {"gif": "rgb8", "apng": "rgb24", "png": "rgb24"}


def write_video(
    path: Path,
    *,
    seconds: float,
    fps: Fraction | float | str,
    size: tuple[int, int] = (96, 72),
    codec: str = "libx264",
    vfr: bool = False,
    pattern: str = "index",
    faststart: bool = False,
    bframes: int = 0,
    gop: int | None = None,
    open_gop: bool = False,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    start_s: float = 0.0,
    audio_s: float | None = None,
) -> SyntheticVideo:
    """Encode a clip whose frame i shows ``index_pattern(i)``; the container follows the suffix.

    ``start_s``: the first frame's timestamp (the times returned still count from it).
    ``audio_s``: also a silent AAC track lasting that long from 0, which may outlast the video.

    ``bframes`` > 0 (libx264, mpeg4) encodes B-frames, pyramid-style, so frames are stored out of
    presentation order and some are never referenced, as in typical camera and web H.264.
    ``gop``: a keyframe every that many frames exactly (default: the encoder's own, longer
    than these clips); ``open_gop`` (libx264): keyframes that are not IDR, whose leading
    B-frames refer to the GOP before, as in broadcast and some web H.264.
    ``pix_fmt`` is the coded format (e.g. ``yuv420p10le``, ``yuv444p``); ``rotation`` writes a
    display matrix turning the picture that many degrees counterclockwise, as phones do.
    """
    if pattern not in ("index", "noise", "colour"):
        raise ValueError(f"unknown pattern {pattern!r}")
    rate = Fraction(str(fps))
    time_base = _MS if vfr or Path(path).suffix in _MS_CONTAINERS else 1 / rate
    times = frame_times_s(seconds, rate, vfr, time_base)
    if len(times) > 2**INDEX_BITS:
        raise ValueError(f"at most {2**INDEX_BITS} frames can carry a distinct index")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        codec_options = dict(_CODEC_OPTIONS.get(codec, {}))
        if bframes and codec == "mpeg4":  # MPEG-4 Part 2 (Xvid/DivX-style)
            codec_options["bf"] = str(bframes)
        elif bframes:
            if codec != "libx264":
                raise ValueError("bframes needs libx264 or mpeg4")
            codec_options["x264-params"] = f"bframes={bframes}:b-pyramid=normal:b-adapt=0"
        if open_gop and codec != "libx264":
            raise ValueError("open_gop needs libx264")
        if gop is not None and codec == "libx264":
            x264 = [f"keyint={gop}:min-keyint={gop}:scenecut=0"] + ["open-gop=1"] * open_gop
            codec_options["x264-params"] = ":".join(
                filter(None, [codec_options.get("x264-params"), *x264])
            )
        elif gop is not None:
            codec_options["g"] = str(gop)
        stream = container.add_stream(codec, rate=rate, options=codec_options)
        stream.width, stream.height = size
        stream.pix_fmt = _CODEC_PIX_FMT.get(codec, pix_fmt)
        if rotation:
            stream.set_display_rotation(rotation)
        stream.codec_context.time_base = time_base
        if audio_s is not None:
            _write_silence(container, audio_s)
        # The last frame lasts one nominal interval (what demuxers assume when it is not stored).
        durations = [b - a for a, b in itertools.pairwise(times)]
        durations.append(_quantize(1 / rate, time_base))
        offset = _quantize(Fraction(str(start_s)), time_base)
        for i, (t, dur) in enumerate(zip(times, durations, strict=True)):
            frame = av.VideoFrame.from_ndarray(
                index_pattern(i, size, noise=pattern == "noise", colour=pattern == "colour"),
                format="rgb24",
            )
            frame.pts = int((offset + t) / time_base)
            frame.time_base = time_base
            frame.duration = int(dur / time_base)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return SyntheticVideo(Path(path), tuple(times), times[-1] + durations[-1], codec)


def _write_silence(container: av.container.OutputContainer, seconds: float) -> None:
    """A mono AAC track of ``seconds`` of silence, muxed before the video."""
    rate = 16000
    stream = container.add_stream("aac", rate=rate)
    for start in range(0, int(seconds * rate), 1024):
        n = min(1024, int(seconds * rate) - start)
        silence = np.zeros((1, n), np.float32)
        frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: Path, seconds: float = 1.0, empty_video: bool = False) -> Path:
    """An AAC track and no video stream, or (``empty_video``) a video stream with no frames."""
    sample_rate = 16000
    with av.open(str(path), "w") as container:
        if empty_video:
            video = container.add_stream("libx264", rate=25)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        stream = container.add_stream("aac", rate=sample_rate)
        n = int(seconds * sample_rate)
        tone = (0.2 * np.sin(np.arange(n) * 2 * np.pi * 440 / sample_rate)).astype(np.float32)
        for start in range(0, n, 1024):
            chunk = tone[None, start : start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def _mdat_span(data: bytes) -> tuple[int, int]:
    """(start, end) byte offsets of the payload of the top-level MP4 ``mdat`` box."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + header, pos + size
        pos += size
    raise ValueError("no mdat box")


def make_corrupt_inputs(directory: Path) -> dict[str, Path]:
    """Broken files in ``directory``, keyed by the decode status each must produce."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    out["empty"] = directory / "empty.mp4"
    out["empty"].write_bytes(b"")
    out["not_video"] = directory / "notes.mp4"
    out["not_video"].write_text("this is a text file renamed to .mp4\n" * 20)
    out["no_video_stream"] = write_audio_only(directory / "audio_only.m4a")
    # Matroska keeps a declared video track even when it never got a frame.
    out["no_frames"] = write_audio_only(directory / "video_track_no_frames.mkv", empty_video=True)

    # Noise makes the coded frames (not the headers) most of the file, as in real videos.
    clip = dict(seconds=4, fps=25, size=(128, 96), pattern="noise")
    source = write_video(directory / "source_moov_last.mp4", **clip).path
    data = source.read_bytes()
    start, end = _mdat_span(data)
    # Cut inside mdat: the moov box (the index) written after it is gone.
    out["unreadable"] = directory / "moovless.mp4"
    out["unreadable"].write_bytes(data[: start + (end - start) // 2])

    # Index first, then cut in half: the header still declares 4 s, half the samples exist.
    fast = write_video(directory / "source_faststart.mp4", faststart=True, **clip).path
    fast_data = fast.read_bytes()
    out["truncated"] = directory / "truncated.mp4"
    out["truncated"].write_bytes(fast_data[: len(fast_data) // 2])

    # Garbage over the middle third of the coded frames; container structure intact.
    corrupt = bytearray(data)
    a, b = start + (end - start) // 3, start + 2 * (end - start) // 3
    corrupt[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    out["decode_error"] = directory / "corrupt_midstream.mp4"
    out["decode_error"].write_bytes(bytes(corrupt))
    return out
