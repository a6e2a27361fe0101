"""Extraction settings validation and shard assignment."""

from __future__ import annotations

import pytest

from vidfeat.config import ExtractConfig, parse_shard
from vidfeat.errors import ConfigError
from vidfeat.pipeline import shard_of


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps": "0"}, "fps must be a number > 0"),
        ({"fps": "abc"}, "fps must be a number"),
        ({"max_frames": 0}, "max_frames"),
        ({"precision": "fp8"}, "precision"),
        ({"device": "tpu"}, "device"),
        ({"quantize": True}, "--quantize needs --pca"),
        ({"quantize": True, "pca": "p.npz", "dtype": "float16"}, "float16 and --quantize conflict"),
        ({"dtype": "uint8"}, "dtype"),
        ({"shard": (2, 2)}, "shard"),
        ({"commit_every": 0}, "commit_every must be >= 1"),
        ({"workers": 0}, "workers"),
        ({"batch_size": 0}, "batch_size and commit_every must be >= 1"),  # None is "by device"
        ({"batch_size": -3}, "batch_size and commit_every must be >= 1"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExtractConfig(manifest="m.csv", out="s.zarr", **kwargs)


def test_fps_is_exact_and_part_names_follow_the_shard() -> None:
    cfg = ExtractConfig(manifest="m.csv", out="s.zarr", fps="1/3", shard=(3, 16))
    assert cfg.fps_fraction.numerator == 1 and cfg.fps_fraction.denominator == 3
    assert cfg.part_name == "shard-00003-of-00016"
    assert ExtractConfig(manifest="m.csv", out="s.zarr").part_name == "main"
    assert cfg.to_json()["shard"] == "3/16"


@pytest.mark.parametrize("text", ["1", "1/0", "2/2", "-1/3", "a/b"])
def test_bad_shard_text(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)


def test_every_video_lands_in_exactly_one_balanced_shard() -> None:
    ids = [f"v{i}" for i in range(4000)]
    counts = [0] * 8
    for vid in ids:
        s = shard_of(vid, 8)
        assert s == shard_of(vid, 8)  # stable
        counts[s] += 1
    assert sum(counts) == len(ids)
    # Each shard gets 500 +- 20%.
    assert all(400 <= c <= 600 for c in counts), counts
