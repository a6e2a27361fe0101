"""The decoder contract: ``VideoDecoder``, the ``DECODERS`` registry and ``open_video``.

A decoder opens one video and yields the frames on screen at t_k = k / fps (the rule in
``vidfeat.sampling``), chosen from per-frame timestamps, never from a header frame count or an
index stride. Frames are 8-bit RGB as a player shows them: the display matrix's rotation is
applied (quarter turns), and 10-bit or 4:4:4 sources are converted to 8-bit RGB. Every
failure is a ``DecodeError(reason, status)`` with one of:

- ``missing``: the file does not exist
- ``empty``: the file has zero bytes
- ``not_video``: not a media container at all (text, image, animated GIF, a directory, FIFO or
  device)
- ``no_video_stream``: a media file without a video track (audio only)
- ``unreadable``: looks like a video container but cannot be opened (e.g. MP4 without moov)
- ``decode_error``: corrupt coded data or a decoder failure
- ``truncated``: the decoded frames cover clearly less than the declared duration
- ``no_frames``: a video stream from which no frame could be decoded

Each decoder is one module of this package that registers itself in ``DECODERS``; header
probing and the failure rules live in ``vidfeat.decode.probe``. Decoding runs in the caller's
process; ``vidfeat.decode.pool`` isolates it against hangs and crashes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from vidfeat.decode.probe import VideoInfo
from vidfeat.errors import ConfigError
from vidfeat.registry import Registry
from vidfeat.sampling import parse_fps


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
# Both decoders deliver the same frames; PyAV is the default because it was faster end to end
# on long-GOP H.264 at 360p and 720p (it skips the unreferenced frames no pick needs) and its
# workers peaked at well under half of decord's memory (benchmarks/README.md, extraction).
DEFAULT_DECODER = "pyav"


def open_video(path: str | Path, decoder: str = DEFAULT_DECODER, threads: int = 0) -> VideoDecoder:
    """Open ``path`` with a registered decoder; raises ``DecodeError`` for unusable files.

    ``threads``: decoding threads for this video (0: the decoder library's default)."""
    if threads < 0:
        raise ConfigError(f"threads must be >= 0, got {threads}")
    factory = DECODERS.get(decoder)
    return factory(path=Path(path), threads=threads)
