"""The TensorFlow-written fixtures and TensorFlow's own parse of them (see make_fixtures.py)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "yt8m"
FRAME = FIXTURES / "frame" / "train0000.tfrecord"
SEGMENT = FIXTURES / "segment" / "validate0000.tfrecord"
VIDEO = FIXTURES / "video" / "train0000.tfrecord"
GZIPPED = FIXTURES / "gzip" / "train0000.tfrecord"  # TensorFlow's GZIP option
VOCABULARY = FIXTURES / "vocabulary.csv"
ALL_FILES = (FRAME, SEGMENT, VIDEO)


def key(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@cache
def expected() -> dict:
    """TensorFlow's parse: file key -> list of {id, labels, level[, n_frames][, segments]}."""
    return json.loads((FIXTURES / "expected.json").read_text())


@cache
def expected_arrays() -> dict[str, np.ndarray]:
    """``<file key>/<id>/<rgb|audio|rgb_dequantized|audio_dequantized|mean_rgb|mean_audio>``."""
    with np.load(FIXTURES / "expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte span of each framed record, read from the length fields."""
    spans, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 8], "little")
        end = pos + 12 + length + 4
        spans.append((pos, end))
        pos = end
    return spans
