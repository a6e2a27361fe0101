"""PATHS -> files: directories, globs, plain files, local and fsspec URLs; splits by name."""

from __future__ import annotations

import shutil
from collections import Counter

import fsspec
import pytest

from tests.vidfeat.yt8m.helpers import FIXTURES, FRAME
from vidfeat.errors import ConfigError
from vidfeat.yt8m.sources import expand_paths, split_from_name, store_split


@pytest.fixture
def tree(tmp_path):
    for name in ("train0000.tfrecord", "train0001.tfrecord", "validate0000.tfrecord"):
        shutil.copy(FRAME, tmp_path / name)
    (tmp_path / "vocabulary.csv").write_text("Index,Name\n")
    return tmp_path


def _names(files):
    return [f.name for f in files]


def test_directory_takes_tfrecords_only(tree):
    files = expand_paths([str(tree)])
    assert _names(files) == ["train0000.tfrecord", "train0001.tfrecord", "validate0000.tfrecord"]
    assert all(f.url.startswith("file://") and f.size == FRAME.stat().st_size for f in files)


def test_glob_file_and_duplicates(tree):
    files = expand_paths([str(tree / "train*"), str(tree / "train0000.tfrecord")])
    assert _names(files) == ["train0000.tfrecord", "train0001.tfrecord"]


def test_missing_paths_are_refused(tree):
    with pytest.raises(ConfigError, match="no such file"):
        expand_paths([str(tree / "absent.tfrecord")])
    with pytest.raises(ConfigError, match="matches no"):
        expand_paths([str(tree / "test*")])
    with pytest.raises(ConfigError, match="at least one"):
        expand_paths([])


def test_remote_urls_through_fsspec():
    fs = fsspec.filesystem("memory")
    fs.pipe("/yt8m/frame/train0000.tfrecord", FRAME.read_bytes())
    fs.pipe("/yt8m/frame/train0001.tfrecord", FRAME.read_bytes())
    files = expand_paths(["memory://yt8m/frame/*.tfrecord"])
    assert [f.url for f in files] == [
        "memory:///yt8m/frame/train0000.tfrecord",
        "memory:///yt8m/frame/train0001.tfrecord",
    ]
    assert expand_paths(["memory://yt8m/frame"]) == files


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train0123.tfrecord", "train"),
        ("gs://bucket/frame/validate3843.tfrecord", "validate"),
        ("test0000.tfrecord", "test"),
        ("Train0000.tfrecord", "train"),
        ("frames.tfrecord", None),
    ],
)
def test_split_from_name(name, split):
    assert split_from_name(name) == split


def test_validate_is_cut_in_two_stably():
    ids = [f"v{i:04d}" for i in range(2000)]
    splits = [store_split("validate", v) for v in ids]
    counts = Counter(splits)
    assert set(counts) == {"val", "test"} and 900 < counts["val"] < 1100
    assert splits == [store_split("validate", v) for v in ids]
    assert store_split("train", "x") == "train" and store_split("test", "x") == "test"
    with pytest.raises(ConfigError):
        store_split("dev", "x")


def test_fixture_directory_holds_all_levels():
    assert len(expand_paths([str(FIXTURES)])) == 4  # frame, segment, video, gzip
