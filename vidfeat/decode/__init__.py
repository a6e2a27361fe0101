"""Decoding: probe a file, open it with a registered decoder, sample frames by timestamp.

``base`` holds the contract and the ``DECODERS`` registry, ``pyav`` and ``decord`` one decoder
each, ``probe`` the header checks and failure rules, ``pool`` the worker processes that isolate
decoding from hangs and crashes, and ``worker`` the child side of that pool.

Importing this package imports PyAV and numpy, never torch: decode workers stay light.
"""

from vidfeat.decode import decord, pyav  # noqa: F401 - each module registers its decoder
from vidfeat.decode.base import DECODERS, SampledFrame, VideoDecoder, open_video
from vidfeat.decode.decord import DecordDecoder
from vidfeat.decode.probe import VideoInfo
from vidfeat.decode.pyav import PyAVDecoder

__all__ = [
    "DECODERS",
    "DecordDecoder",
    "PyAVDecoder",
    "SampledFrame",
    "VideoDecoder",
    "VideoInfo",
    "open_video",
]
