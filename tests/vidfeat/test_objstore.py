"""The store contract over a real S3 API (moto's server), plus what only object stores need:
claims instead of flocks, conditional creates, and no secret in a store or a log."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import time
import uuid

import h5py
import numpy as np
import pytest

from tests.s3_server import SECRET_KEY, s3, s3_endpoint  # noqa: F401 - fixtures
from tests.vidfeat.store_worker import STREAMS, video_id
from tests.vidfeat.test_store import StoreContract, run_worker
from vidfeat import create_store, open_store
from vidfeat.errors import ConfigError, StoreError, StoreIntegrityError
from vidfeat.location import RemotePath
from vidfeat.store.claim import ObjectClaim
from vidfeat.store.verify import verify_store

# Not run again over S3 (the suite must stay fast on two cores):
NOT_OVER_S3 = (
    # about local files: schema-1 fixtures on disk, file-size limits, local junk files
    "test_values_are_checked_after_the_cast",
    "test_float16_and_uint8_storage",
    "test_missing_and_corrupt_stores",
    "test_full_disk_is_a_clear_error_and_resumable",
    "test_a_writer_whose_commit_failed_takes_no_more_videos",
    "test_the_commit_timer_fires_without_a_new_video",  # the writer's clock, not the storage
    "test_schema_1_store_reads_as_one_stream_rgb",
    "test_appending_to_a_schema_1_store_keeps_it_schema_1",
    "test_newer_schema_is_refused",
    "test_a_writer_starting_while_a_reader_asks_about_its_part_waits",  # a flock
    # checks made before anything is written, the same whatever the backend's storage
    "test_bad_features_rejected",
    "test_bad_labels_and_ids_rejected",
    "test_nan_in_attrs_is_refused_by_name",
    "test_reader_refuses_pickling",
    "test_different_settings_are_refused",  # test_root_is_created_once_and_a_mismatch_refused
    "test_volatile_attrs_may_differ_on_resume",
    "test_named_streams_round_trip",
    "test_video_level_store",
    "test_mean_of_features_near_the_float32_limit_is_finite",
    "test_info_lists_labels_unambiguously",
    # the same checksum path as the feature case below
    "test_flipped_table_bytes_are_a_typed_error",
    # the same reads of the same bytes as on local files, flipped many times over
    "test_any_flipped_byte_is_an_error_or_changes_nothing",
    # replaced by test_root_is_created_once_and_a_mismatch_refused (conditional PUT)
    "test_shards_creating_a_store_at_once_with_other_settings_never_mix",
    # replaced by test_a_killed_writers_claim_is_taken_over_a_live_ones_is_not (SIGKILL, then
    # the rerun must take over the dead writer's claim)
    "test_sigkill_then_resume_equals_uninterrupted_run",
)


def _fs(url: str):
    return RemotePath(url).filesystem()


def _flip(url: str, offset: int | None = None) -> None:
    fs, key = _fs(url)
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    fs.pipe_file(key, bytes(data))


class S3Contract(StoreContract):
    @pytest.fixture
    def path(self, s3) -> str:  # noqa: F811 - the fixture
        return f"{s3.bucket()}/feats{self.suffix}"


for _name in NOT_OVER_S3:
    setattr(S3Contract, _name, None)  # not collected


class TestZarrOnS3(S3Contract):
    fmt = "zarr"
    suffix = ".zarr"

    @staticmethod
    def first_chunk(path: str, array: str) -> str:
        fs, key = _fs(f"{path}/parts/main/{array}/c")
        return "s3://" + min(fs.find(key))

    def corrupt(self, path: str, array: str) -> None:
        _flip(self.first_chunk(path, array))

    def delete_chunk(self, path: str, array: str) -> None:
        fs, key = _fs(self.first_chunk(path, array))
        fs.rm_file(key)

    def truncate_part(self, path: str, part: str = "main") -> None:
        fs, key = _fs(f"{path}/parts/{part}/zarr.json")
        data = fs.cat_file(key)
        fs.pipe_file(key, data[: len(data) // 2])

    def test_a_part_without_its_document_is_named_by_verify(self, path: str) -> None:
        # An object store has no folders: the part's other objects remain, listed under it.
        self.write_some(path)
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}, part="lost") as w:
            w.write("gone", np.ones((2, 8), np.float32))
        fs, key = _fs(f"{path}/parts/lost/zarr.json")
        fs.rm_file(key)
        with open_store(path) as r:
            assert "gone" not in r.ok_ids
        report = verify_store(path)
        assert [(p.part, p.array) for p in report.problems] == [("lost", "zarr.json")]


class TestHDF5OnS3(S3Contract):
    fmt = "hdf5"
    suffix = ".h5"

    @staticmethod
    def segment(path: str, part: str = "main") -> str:
        return f"{path}.parts/{part}.00000000.h5"

    def corrupt(self, path: str, array: str) -> None:
        fs, key = _fs(self.segment(path))
        with fs.open(key, "rb") as fh, h5py.File(fh, "r") as f:
            info = f[array].id.get_chunk_info(0)
        _flip(self.segment(path), info.byte_offset + info.size // 2)

    def delete_chunk(self, path: str, array: str) -> None:
        fs, key = _fs(self.segment(path))
        fs.rm_file(key)

    def truncate_part(self, path: str, part: str = "main") -> None:
        fs, key = _fs(self.segment(path, part))
        data = fs.cat_file(key)
        fs.pipe_file(key, data[: len(data) // 2])


# -- what only object stores need ---------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_killed_writers_claim_is_taken_over_a_live_ones_is_not(s3, suffix: str) -> None:  # noqa: F811
    path, fmt, n = f"{s3.bucket()}/feats{suffix}", "zarr" if suffix == ".zarr" else "hdf5", 12
    proc = run_worker(path, fmt, "main", 0, n)
    assert proc.stdout.readline().startswith("wrote")
    # The live writer holds the claim: a second writer of the part is refused, even here.
    with pytest.raises(StoreError, match="another process"):
        create_store(path, streams=STREAMS, attrs={"test": True}, part="main")
    # Killed right after a commit, i.e. while it writes the next one.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fs, key = _fs(f"{path}.locks/main.claim")
    assert json.loads(fs.cat_file(key))["pid"] == proc.pid  # left behind by the kill
    with open_store(path) as r:  # whatever is visible is whole
        assert len(r.ok_ids) >= 1
        for vid in r.ok_ids:
            StoreContract.check_video(r, int(vid[3:]))
    proc = run_worker(path, fmt, "main", 0, n)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "taking over the claim" in err
    assert not fs.exists(key)  # released on close
    with open_store(path) as r:  # every video exactly once, equal to what was written
        assert sorted(r.ok_ids) == [video_id(i) for i in range(n)] and len(r.videos) == n
        for i in range(n):
            StoreContract.check_video(r, i)


def test_a_claim_left_by_an_earlier_process_with_this_pid_is_taken_over(s3, caplog) -> None:  # noqa: F811
    # A container restarted on the same host runs its job as pid 1 again: the claim its
    # predecessor left names this very pid, which "is that pid running?" answered yes to, so
    # the restart was refused for 15 minutes, as if another job held the part.
    path = f"{s3.bucket()}/feats.zarr"
    fs, key = _fs(f"{path}.locks/main.claim")
    left = {"token": "earlier", "host": socket.gethostname(), "pid": os.getpid()}
    fs.pipe_file(key, json.dumps({**left, "heartbeat": time.time()}).encode())
    with caplog.at_level(logging.WARNING), create_store(path, dim=4) as w:
        assert "taking over the claim of a writer that is gone" in caplog.text
        w.write("a", np.ones((2, 4)))
        # The claim this process holds now is still a live writer's, also to this process.
        busy = r"being written by another process \(pid \d+ on .+, heard from \d+ s ago"
        with pytest.raises(StoreError, match=busy):
            create_store(path, dim=4)
    with open_store(path) as r:
        assert r.ok_ids == ["a"]


def test_a_writer_whose_claim_was_taken_publishes_nothing(s3) -> None:  # noqa: F811
    path = f"{s3.bucket()}/feats.zarr"
    w = create_store(path, dim=4, commit_every=100, commit_seconds=3600)
    w.write("a", np.ones((2, 4)))
    # Another writer takes the part over (as after a heartbeat expiry): this one must stop.
    fs, key = _fs(f"{path}.locks/main.claim")
    fs.pipe_file(key, json.dumps({"token": "someone-else", "pid": 1, "host": "h"}).encode())
    with pytest.raises(StoreError, match="taken over"):
        w.flush()
    with open_store(path) as r:
        assert len(r.videos) == 0
    fs.rm_file(key)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_writer_that_lost_its_part_leaves_the_new_owners_rows_intact(s3, suffix: str) -> None:  # noqa: F811
    # W1 went quiet for over 15 minutes; a rerun took its part over and committed. W1's next
    # batch was appended before its claim check, with W1's stale array sizes: it overwrote the
    # rerun's committed rows and left every read failing ("3 rows, but 5 are committed").
    path = f"{s3.bucket()}/feats{suffix}"
    first = create_store(path, dim=4, commit_every=1)
    for i in range(2):
        first.write(f"a{i}", np.full((3, 4), i, np.float32))
    fs, key = _fs(f"{path}.locks/main.claim")
    doc = json.loads(fs.cat_file(key))
    fs.pipe_file(key, json.dumps({**doc, "heartbeat": doc["heartbeat"] - 16 * 60}).encode())
    with create_store(path, dim=4, commit_every=1) as second:
        for i in range(3):
            second.write(f"b{i}", np.full((3, 4), 10 + i, np.float32))
        with pytest.raises(StoreError, match="taken over"):
            first.write("a2", np.full((2, 4), 2, np.float32))
    with open_store(path) as r:
        assert list(r.ok_ids) == ["a0", "a1", "b0", "b1", "b2"]
        for vid, value in zip(r.ok_ids, [0, 1, 10, 11, 12], strict=True):
            np.testing.assert_array_equal(r.read(vid), np.full((3, 4), value, np.float32))
    assert verify_store(path).ok


def test_chunks_read_from_an_object_store_are_kept_in_the_readers_cache(s3) -> None:  # noqa: F811
    # Training reads every video each epoch: once in the cache, a chunk is not downloaded again.
    path = f"{s3.bucket()}/feats.zarr"
    rng = np.random.default_rng(3)
    written = {f"v{i}": rng.standard_normal((40 + 70 * i, 64)).astype(np.float32) for i in range(4)}
    with create_store(path, dim=64) as w:
        for vid, feats in written.items():
            w.write(vid, feats)
    with open_store(path) as cached, open_store(path, cache_mb=0) as uncached:
        for vid, feats in written.items():
            np.testing.assert_array_equal(cached.read(vid), feats)
        fs, key = _fs(f"{path}/parts/main/streams/rgb/features/c")
        chunks = fs.find(key)
        assert len(chunks) >= 2  # the videos span several chunks
        fs.rm(chunks)
        for vid, feats in written.items():
            np.testing.assert_array_equal(cached.read(vid), feats)  # no request reaches S3
        with pytest.raises(StoreIntegrityError, match=r"c/0/0 missing"):
            uncached.read("v0")


def test_claims_are_created_exclusively(s3) -> None:  # noqa: F811
    bucket = s3.bucket()
    url = RemotePath(f"{bucket}/x.zarr.locks/main.claim")
    first = ObjectClaim(url, "main")
    # The message names the store, not the folder of claims beside it.
    with pytest.raises(StoreError, match=re.escape(f"part 'main' of {bucket}/x.zarr is being")):
        ObjectClaim(url, "main")
    first.release()
    ObjectClaim(url, "main").release()


def test_root_is_created_once_and_a_mismatch_refused(s3) -> None:  # noqa: F811
    path = f"{s3.bucket()}/feats.zarr"
    with create_store(path, dim=4, attrs={"fps": "1"}) as w:
        w.write("a", np.ones((2, 4)))
    with pytest.raises(StoreError, match="different settings"):
        create_store(path, dim=4, attrs={"fps": "2"}, part="other")
    with pytest.raises(StoreError, match="different settings"):
        create_store(path, dim=8, attrs={"fps": "1"}, part="other")
    with open_store(path) as r:
        assert r.ok_ids == ["a"] and r.attrs == {"fps": "1"}


def test_an_occupied_prefix_is_not_a_store(s3) -> None:  # noqa: F811
    path = f"{s3.bucket()}/data"
    fs, key = _fs(f"{path}/other.txt")
    fs.pipe_file(key, b"x")
    with pytest.raises(StoreError, match="not a vidfeat store"):
        create_store(path, dim=4, format="zarr")
    with pytest.raises(StoreError, match="no feature store"):
        open_store(f"{path}/none.zarr")


def test_credentials_in_a_url_are_refused(s3) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="must not carry credentials"):
        create_store(f"s3://key:{SECRET_KEY}@bucket/feats.zarr", dim=4)


def test_a_store_and_its_logs_hold_no_secret(s3, caplog) -> None:  # noqa: F811
    path = f"{s3.bucket()}/feats.zarr"
    with caplog.at_level(logging.DEBUG):
        with create_store(path, dim=4, attrs={"fps": "1"}) as w:
            w.write("a", np.ones((2, 4)))
        with open_store(path) as r:
            r.read("a")
    assert caplog.records  # botocore and s3fs did log at DEBUG
    assert SECRET_KEY not in caplog.text
    fs, key = _fs(path)
    for obj in fs.find(key):
        assert SECRET_KEY.encode() not in fs.cat_file(obj), obj


def test_manifest_keeps_urls_and_refuses_credentials_in_them(tmp_path) -> None:
    from vidfeat.errors import ManifestError
    from vidfeat.manifest import read_manifest

    rows = "video_id,path,labels\na,s3://bucket/v/a.mp4,x\nb,rel/b.mp4,x\n"
    manifest = tmp_path / "m.csv"
    manifest.write_text(rows)
    a, b = read_manifest(manifest)
    assert a.path == RemotePath("s3://bucket/v/a.mp4") and str(a.path) == "s3://bucket/v/a.mp4"
    assert b.path == tmp_path / "rel" / "b.mp4"
    manifest.write_text(rows + f"c,s3://key:{SECRET_KEY}@bucket/c.mp4,x\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert "line 4" in str(err.value.problems) and "credentials" in str(err.value.problems)
    assert SECRET_KEY not in str(err.value) + str(err.value.problems)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_missing_bucket_names_the_store(s3, suffix: str) -> None:  # noqa: F811
    # S3 reports it without a path; the message must say which store could not be made.
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/feats{suffix}"
    with pytest.raises(StoreError, match=re.escape(f"cannot create the store at {url}: ")):
        create_store(url, dim=4)
