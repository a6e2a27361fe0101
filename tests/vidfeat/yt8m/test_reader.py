"""Whole files -> videos + per-record failures, serially and in worker processes."""

from __future__ import annotations

import io

import fsspec
import numpy as np

from tests.vidfeat.yt8m.helpers import (
    ALL_FILES,
    FRAME,
    GZIPPED,
    expected,
    expected_arrays,
    key,
    record_spans,
)
from vidfeat.yt8m.reader import read_file, read_files
from vidfeat.yt8m.sources import SourceFile, expand_paths
from vidfeat.yt8m.tfrecord import encode_record, is_gzip, iter_records


def _source(path):
    return SourceFile(f"file://{path}")


def test_reads_every_fixture():
    for path in ALL_FILES:
        result = read_file(_source(path))
        assert result.failures == []
        assert [v.video_id for v in result.videos] == [w["id"] for w in expected()[key(path)]]
    assert read_file(_source(FRAME)).n_frames == 6


def test_a_corrupt_record_costs_only_that_video(tmp_path):
    data = bytearray(FRAME.read_bytes())
    start, _ = record_spans(bytes(data))[1]
    data[start + 40] ^= 0x10
    bad = tmp_path / "train0001.tfrecord"
    bad.write_bytes(bytes(data))
    result = read_file(_source(bad))
    assert [v.video_id for v in result.videos] == ["Ab1c", "Qq00"]
    (failure,) = result.failures
    assert (failure.index, failure.status) == (1, "bad_crc")


def test_broken_files_become_failures(tmp_path):
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    (tmp_path / "text.tfrecord").write_text("not a record file at all\n")
    (tmp_path / "cut.tfrecord").write_bytes(FRAME.read_bytes()[:-10])
    statuses = {
        p.name: [(f.index, f.status) for f in read_file(_source(p)).failures]
        for p in sorted(tmp_path.iterdir())
    }
    assert statuses == {
        "cut.tfrecord": [(2, "truncated")],
        "empty.tfrecord": [(0, "empty")],
        "text.tfrecord": [(0, "not_tfrecord")],
    }


def test_unopenable_file_is_a_failure():
    result = read_file(SourceFile("file:///nonexistent/train0000.tfrecord"))
    assert [f.status for f in result.failures] == ["unreadable"]


def test_workers_give_the_same_results_in_order(tmp_path):
    fs = fsspec.filesystem("file")
    for i in range(5):
        fs.copy(str(FRAME), str(tmp_path / f"train{i:04d}.tfrecord"))
    sources = expand_paths([str(tmp_path)])
    serial = [(r.source, [v.video_id for v in r.videos]) for r in read_files(sources, 1)]
    parallel = [(r.source, [v.video_id for v in r.videos]) for r in read_files(sources, 2)]
    assert serial == parallel and len(serial) == 5


def test_a_read_error_midway_keeps_nothing_of_the_file(monkeypatch):
    data = FRAME.read_bytes()
    cut = record_spans(data)[1][1]  # two whole records, then the connection drops

    class DroppedConnection(io.BytesIO):
        def read(self, n=-1):
            if self.tell() >= cut:
                raise ConnectionResetError("connection reset by peer")
            return super().read(n)

    # Fault injection at the I/O layer (fsspec), below the code under test.
    monkeypatch.setattr(fsspec, "open", lambda url, mode: DroppedConnection(data))
    result = read_file(SourceFile("gs://bucket/frame/train0000.tfrecord"))
    assert result.videos == []
    (failure,) = result.failures
    assert failure.status == "unreadable" and "connection reset" in failure.reason


def test_gzip_compressed_files_written_by_tensorflow(tmp_path):
    result = read_file(_source(GZIPPED))
    assert result.failures == []
    (want,) = expected()[key(GZIPPED)]
    (video,) = result.videos
    assert (video.video_id, list(video.labels), video.n_frames) == (
        want["id"],
        want["labels"],
        want["n_frames"],
    )
    for stream in ("rgb", "audio"):
        name = f"{key(GZIPPED)}/{video.video_id}/{stream}"
        np.testing.assert_array_equal(video.features[stream], expected_arrays()[name])
    damaged = tmp_path / "train0001.tfrecord"
    damaged.write_bytes(GZIPPED.read_bytes()[:-20])
    (failure,) = read_file(_source(damaged)).failures
    assert failure.status == "bad_gzip"


def test_a_record_length_that_looks_like_gzip_is_still_a_record():
    # A record whose length starts with the gzip magic bytes 1f 8b.
    payload = bytes(0x8B1F)
    data = encode_record(payload)
    assert data[:2] == b"\x1f\x8b"
    assert not is_gzip(data[:12])
    assert list(iter_records(io.BytesIO(data))) == [payload]
