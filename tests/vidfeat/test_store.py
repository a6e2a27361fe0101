"""The store contract, run against every backend, with real files and real killed processes."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from tests.vidfeat.store_cases import IntegrityCases, StreamCases, cli_verify, flip_byte
from tests.vidfeat.store_worker import expected_audio, expected_features, video_id
from vidfeat import create_store, open_store
from vidfeat.errors import (
    ConfigError,
    StoreError,
    StoreIntegrityError,
    StoreMismatchError,
    VideoNotFoundError,
)
from vidfeat.pca.quantize import dequantize, quantization_attrs, quantize
from vidfeat.store import BACKENDS, detect_format
from vidfeat.store.verify import format_report, verify_store

ROOT = Path(__file__).resolve().parents[2]


def run_worker(store: Path, fmt: str, part: str, first: int, count: int, *extra: str):
    cmd = [
        sys.executable,
        "-m",
        "tests.vidfeat.store_worker",
        str(store),
        fmt,
        part,
        str(first),
        str(count),
        *extra,
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


class StoreContract(StreamCases, IntegrityCases):
    """Every backend must pass these. Subclasses set ``fmt`` and ``suffix``."""

    fmt: str
    suffix: str

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / f"feats{self.suffix}"

    def write_some(self, path: Path, n: int = 4, **kw) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        written = {}
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}, **kw) as w:
            for i in range(n):
                feats = rng.standard_normal((3 + 2 * i, 8)).astype(np.float32)
                w.write(
                    f"v{i}",
                    feats,
                    labels=[f"l{i % 2}", "all"],
                    timestamps=np.arange(len(feats)) * 0.5,
                    source_path=f"v{i}.mp4",
                    duration_s=len(feats) * 0.5,
                    native_fps=30.0,
                    decoder="pyav",
                )
                written[f"v{i}"] = feats
        return written

    def test_round_trip(self, path: Path) -> None:
        written = self.write_some(path)
        with open_store(path) as r:
            assert r.format == self.fmt
            assert r.dim == 8 and r.attrs == {"fps": 1}
            assert list(r.videos["video_id"]) == list(written)
            for vid, feats in written.items():
                got = r.read(vid)
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, feats)
                np.testing.assert_allclose(
                    r.mean(vid), feats.mean(axis=0, dtype=np.float64), rtol=1e-6
                )
                np.testing.assert_array_equal(r.timestamps(vid), np.arange(len(feats)) * 0.5)
            row = r.videos.set_index("video_id").loc["v1"]
            assert row["labels"] == ("l1", "all") and row["n_frames"] == 5
            assert row["status"] == "ok" and row["source_path"] == "v1.mp4"
            assert row["duration_s"] == 2.5 and row["native_fps"] == 30.0
            assert row["decoder"] == "pyav"

    def test_ids_are_looked_up_as_the_exact_strings_written(self, path: Path) -> None:
        # Ids a table index might coerce or fold together: digits, leading zeros, unicode.
        ids = ["1", "01", "1.0", "é", "e\u0301", "v 1"]
        with create_store(path, dim=2, format=self.fmt) as w:
            for i, vid in enumerate(ids):
                w.write(vid, np.full((i + 1, 2), float(i)), labels=["same", "labels"])
        with open_store(path) as r:
            for i, vid in enumerate(ids):
                assert vid in r
                np.testing.assert_array_equal(r.read(vid), np.full((i + 1, 2), float(i)))
                assert r.labels(vid) == ("same", "labels")
            for absent in (1, 1.0, "001", "v1", None):
                assert absent not in r
            with pytest.raises(VideoNotFoundError, match="not in store"):
                r.read(1)  # type: ignore[arg-type]
            assert list(r.videos["labels"]) == [("same", "labels")] * len(ids)

    def test_failures_are_recorded_not_readable(self, path: Path) -> None:
        with create_store(path, dim=4, format=self.fmt) as w:
            w.write_failure("bad", "truncated", "decoded 1.0 s of declared 9.0 s", labels=["x"])
            w.write("good", np.ones((2, 4)))
        with open_store(path) as r:
            row = r.videos.set_index("video_id").loc["bad"]
            assert row["status"] == "truncated" and "declared 9.0 s" in row["reason"]
            assert row["n_frames"] == 0
            assert r.ok_ids == ["good"]
            with pytest.raises(VideoNotFoundError, match="truncated"):
                r.read("bad")
            with pytest.raises(VideoNotFoundError, match="not in store"):
                r.read("missing")

    def test_retried_failure_is_superseded_by_success(self, path: Path) -> None:
        with create_store(path, dim=4, format=self.fmt) as w:
            w.write_failure("v", "timeout", "hung")
        with create_store(path, dim=4, format=self.fmt) as w:
            assert w.committed_ids() == {"v"} and w.committed_ids("ok") == set()
            w.write("v", np.full((3, 4), 2.0))
        with open_store(path) as r:
            assert len(r.videos) == 1 and r.videos["status"].tolist() == ["ok"]
            np.testing.assert_array_equal(r.read("v"), np.full((3, 4), 2.0))
        # verify counts videos as the reader does, and names the extra table row.
        report = verify_store(path)
        assert report.ok and (report.videos, report.rows) == (1, 2), report
        assert "1 video(s) (2 table rows)" in format_report(report)
        # Parts as info counts them: one writer's part, though HDF5 holds it in two segments.
        assert report.parts == 1 and "in 1 part(s)" in format_report(report)

    def test_failed_attempts_are_counted_across_parts(self, path: Path) -> None:
        # Reruns retry a crashed or timed-out video once: they count its recorded failures.
        with create_store(path, dim=4, format=self.fmt, part="first") as w:
            w.write_failure("x", "crashed", "killed")
            w.write_failure("y", "decode_error", "bad")
            w.write_failure("z", "timeout", "slow")
            w.write("ok", np.ones((2, 4)))
        with create_store(path, dim=4, format=self.fmt, part="second") as w:
            w.write_failure("x", "timeout", "slow")
            w.write("z", np.ones((2, 4)))
        expected = {"x": ("timeout", 2), "y": ("decode_error", 1)}
        with open_store(path) as r:
            assert r.failed_attempts() == expected
        with create_store(path, dim=4, format=self.fmt, part="third") as w:
            assert w.committed_failures() == expected

    def test_read_into_refuses_frames_outside_the_video(self, path: Path) -> None:
        # Frame numbers were added to the video's offset unchecked: frame 4 of a 3-frame video
        # was the next video's first row, frame -1 the previous one's last.
        with create_store(path, dim=2, format=self.fmt) as w:
            w.write("a", np.full((3, 2), 1.0))
            w.write("b", np.full((3, 2), 2.0))
        with open_store(path) as r:
            out = np.zeros((2, 2), np.float32)
            r.read_into("b", out, ["rgb"], frames=np.array([0, 2]))
            np.testing.assert_array_equal(out, np.full((2, 2), 2.0))
            bad = [
                (np.array([4]), "in 0..2, got 4..4"),
                (np.array([-1]), "in 0..2, got -1..-1"),
                (slice(0, 5), "step-1 slice within 0..3"),
                (slice(0, 3, 2), "step-1 slice"),
                (np.array([0.5]), "1-D array of frame numbers"),
            ]
            for frames, message in bad:
                with pytest.raises(ConfigError, match=re.escape(message)):
                    r.read_into("a", np.zeros((1, 2), np.float32), ["rgb"], frames=frames)
            with pytest.raises(ConfigError, match=re.escape("out must be (3, 2), got (3, 4)")):
                r.read_into("a", np.zeros((3, 4), np.float32), ["rgb"])

    def test_writes_refuse_bad_timestamps_and_a_string_of_labels(self, path: Path) -> None:
        with create_store(path, dim=2, format=self.fmt) as w:
            with pytest.raises(ConfigError, match="NaN or inf"):  # verify would call it damage
                w.write("a", np.ones((2, 2)), timestamps=[0.0, np.nan])
            with pytest.raises(ConfigError, match="a list of labels"):  # not ('c', 'a', 't')
                w.write("a", np.ones((2, 2)), labels="cat")
            w.write("a", np.ones((2, 2)), labels=["cat", "cat", "dog"])
        with open_store(path) as r:
            assert r.labels("a") == ("cat", "dog")  # a set: a repeat is not a second label
            with pytest.raises(ConfigError, match="cache_mb"):
                open_store(path, cache_mb="10")

    def test_float16_and_uint8_storage(self, tmp_path: Path) -> None:
        x = np.random.default_rng(1).uniform(-2.5, 2.5, (6, 16)).astype(np.float32)
        p16 = tmp_path / f"f16{self.suffix}"
        with create_store(p16, dim=16, format=self.fmt, dtype="float16") as w:
            w.write("a", x)
        with open_store(p16) as r:
            assert r.read("a", raw=True).dtype == np.float16
            np.testing.assert_array_equal(r.read("a"), x.astype(np.float16).astype(np.float32))
        p8 = tmp_path / f"u8{self.suffix}"
        with create_store(
            p8, dim=16, format=self.fmt, dtype="uint8", quantization=quantization_attrs()
        ) as w:
            w.write("a", quantize(x))
        with open_store(p8) as r:
            raw = r.read("a", raw=True)
            assert raw.dtype == np.uint8
            np.testing.assert_array_equal(raw, quantize(x))
            np.testing.assert_array_equal(r.read("a"), dequantize(quantize(x)))
            assert r.quantization == {"scheme": "yt8m_uint8", "min": -2.0, "max": 2.0}
            np.testing.assert_allclose(
                r.mean("a"), dequantize(quantize(x)).mean(0, dtype=np.float64), rtol=1e-6
            )
        # A scheme readers do not know would be read with YouTube-8M's formula regardless.
        q = {**quantization_attrs(), "scheme": "linear_uint8"}
        with pytest.raises(ConfigError, match="unknown quantization scheme 'linear_uint8'"):
            create_store(
                tmp_path / f"q{self.suffix}", dim=16, format=self.fmt, dtype="uint8", quantization=q
            )

    def test_resume_appends_and_refuses_duplicates(self, path: Path) -> None:
        self.write_some(path, n=2)
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}) as w:
            assert w.committed_ids() == {"v0", "v1"}
            with pytest.raises(StoreError, match="already in"):
                w.write("v0", np.zeros((1, 8)))
            w.write("v9", np.zeros((1, 8)))
            with pytest.raises(StoreError, match="already in"):
                w.write("v9", np.zeros((1, 8)))  # pending, not yet committed
        with open_store(path) as r:
            assert sorted(r.ok_ids) == ["v0", "v1", "v9"]

    @pytest.mark.parametrize(
        ("kwargs", "key"),
        [
            ({"dim": 8, "attrs": {"fps": 2}}, "fps"),
            ({"dim": 8, "attrs": {"fps": 1, "pca": "x"}}, "pca"),
            ({"dim": 9, "attrs": {"fps": 1}}, "dim"),
            ({"dim": 8, "attrs": {"fps": 1}, "dtype": "float16"}, "dtype"),
        ],
    )
    def test_different_settings_are_refused(self, path: Path, kwargs: dict, key: str) -> None:
        self.write_some(path, n=1)
        with pytest.raises(StoreMismatchError, match=rf"{key}: store has"):
            create_store(path, format=self.fmt, **kwargs)
        with open_store(path) as r:  # and the store is untouched
            assert r.ok_ids == ["v0"]

    def test_volatile_attrs_may_differ_on_resume(self, path: Path) -> None:
        with create_store(path, dim=2, format=self.fmt, attrs={"fps": 1, "command": "a"}) as w:
            w.write("a", np.ones((1, 2)))
        with create_store(path, dim=2, format=self.fmt, attrs={"fps": 1, "command": "b"}) as w:
            w.write("b", np.ones((1, 2)))
        with open_store(path) as r:
            assert r.ok_ids == ["a", "b"]

    def test_uncommitted_videos_are_invisible(self, path: Path) -> None:
        w = create_store(path, dim=4, format=self.fmt, commit_every=100, commit_seconds=3600)
        w.write("a", np.ones((2, 4)))
        w.write("b", np.ones((2, 4)))
        with open_store(path) as r:
            assert len(r.videos) == 0
        w.flush()
        with open_store(path) as r:
            assert r.ok_ids == ["a", "b"]
        w.close()

    def test_an_interrupt_during_a_commit_waits_for_it(self, path: Path) -> None:
        # Ctrl-C (or SIGTERM made KeyboardInterrupt) raised mid-commit used to throw the whole
        # batch away: the interrupted commit failed and close() found nothing left to commit.
        w = create_store(path, dim=4, format=self.fmt, commit_every=100, commit_seconds=3600)
        claim = w._claim
        calls = []

        class InterruptBetweenDataAndCommitPoint:
            """The part's fence runs after the data is written, before the commit point."""

            def check(self) -> None:
                calls.append(1)
                if len(calls) == 2:
                    os.kill(os.getpid(), signal.SIGINT)
                claim.check()

            def __getattr__(self, name: str):
                return getattr(claim, name)

        w._claim = InterruptBetweenDataAndCommitPoint()
        with pytest.raises(KeyboardInterrupt), w:
            w.write("a", np.ones((2, 4)))
            w.write("b", np.ones((3, 4)))
            w.flush()
        assert len(calls) == 2
        with open_store(path) as r:
            assert r.ok_ids == ["a", "b"]
            assert r.videos.set_index("video_id").loc["b", "n_frames"] == 3
        assert verify_store(path).ok

    def test_one_writer_per_part(self, path: Path) -> None:
        with create_store(path, dim=4, format=self.fmt):
            with pytest.raises(StoreError, match="another process") as refused:
                create_store(path, dim=4, format=self.fmt)
            # The message names the store given, not the folder of claims beside it.
            assert f"part 'main' of {path} is being" in str(refused.value)
            other = create_store(path, dim=4, format=self.fmt, part="shard-00001-of-00002")
            other.close()

    def test_a_writer_starting_while_a_reader_asks_about_its_part_waits(self, path: Path) -> None:
        # `vidfeat info` asks whether a part is being written by taking its lock shared for a
        # moment; a writer starting in that moment was refused as if its part were taken.
        create_store(path, dim=4, format=self.fmt).close()
        lock = path.with_name(path.name + ".locks") / "main.lock"
        with open(lock) as reader:
            fcntl.flock(reader.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            release = threading.Timer(0.2, fcntl.flock, (reader.fileno(), fcntl.LOCK_UN))
            release.start()
            try:
                with create_store(path, dim=4, format=self.fmt) as w:
                    w.write("a", np.ones((2, 4)))
            finally:
                release.join()
        with open_store(path) as r:
            assert r.ok_ids == ["a"]

    @pytest.mark.parametrize(
        "bad",
        [np.zeros((0, 4)), np.zeros((3, 5)), np.zeros(4), np.array([[np.nan] * 4])],
    )
    def test_bad_features_rejected(self, path: Path, bad: np.ndarray) -> None:
        with create_store(path, dim=4, format=self.fmt) as w, pytest.raises(ConfigError):
            w.write("x", bad)

    def test_bad_labels_and_ids_rejected(self, path: Path) -> None:
        with create_store(path, dim=4, format=self.fmt) as w:
            with pytest.raises(ConfigError, match="labels"):
                w.write("x", np.ones((1, 4)), labels=["a;b"])
            with pytest.raises(ConfigError, match="video_id"):
                w.write("", np.ones((1, 4)))
            with pytest.raises(ConfigError, match="timestamps"):
                w.write("y", np.ones((2, 4)), timestamps=[0.0])

    def test_reader_refuses_pickling(self, path: Path) -> None:
        self.write_some(path, n=1)
        with open_store(path) as r, pytest.raises(StoreError, match="each worker"):
            pickle.dumps(r)

    def test_missing_and_corrupt_stores(self, tmp_path: Path) -> None:
        with pytest.raises(StoreError, match="no feature store"):
            open_store(tmp_path / f"none{self.suffix}", format=self.fmt)
        junk = tmp_path / f"junk{self.suffix}"
        if self.fmt == "zarr":
            junk.mkdir()
            (junk / "zarr.json").write_text("{not json")
        else:
            junk.write_bytes(b"\x00garbage" * 100)
        with pytest.raises(StoreError, match="not a readable"):
            open_store(junk, format=self.fmt)

    def test_newer_schema_is_refused(self, path: Path) -> None:
        self.write_some(path, n=1)
        meta_file = path / "zarr.json" if self.fmt == "zarr" else None
        if meta_file is None:
            import h5py

            with h5py.File(path, "r+") as f:
                meta = json.loads(f.attrs["vidfeat"])
                meta["schema_version"] = 99
                f.attrs["vidfeat"] = json.dumps(meta)
        else:
            doc = json.loads(meta_file.read_text())
            doc["attributes"]["vidfeat"]["schema_version"] = 99
            meta_file.write_text(json.dumps(doc))
        with pytest.raises(StoreError, match="schema 99"):
            open_store(path)
        # The writer honours the schema exactly as readers do: nothing is appended.
        with pytest.raises(StoreError, match="schema 99"):
            create_store(path, dim=8, format=self.fmt, attrs={"fps": 1})

    # -- real processes ---------------------------------------------------------------------
    def check_complete(self, path: Path, n: int) -> None:
        with open_store(path) as r:
            assert sorted(r.ok_ids) == [video_id(i) for i in range(n)]
            assert len(r.videos) == n  # each video exactly once
            for i in range(n):
                self.check_video(r, i)

    @staticmethod
    def check_video(r, i: int) -> None:
        """Both streams of a video are there, whole, and agree in length."""
        vid = video_id(i)
        np.testing.assert_array_equal(r.read(vid, "rgb"), expected_features(i))
        np.testing.assert_array_equal(r.read(vid, "audio", raw=True), expected_audio(i))
        assert len(r.timestamps(vid)) == len(expected_features(i))

    def test_sigkill_then_resume_equals_uninterrupted_run(self, path: Path) -> None:
        n = 40
        for kill_after in (1, 6, 13):
            proc = run_worker(path, self.fmt, "main", 0, n)
            # Kill right after the worker reports a commit, i.e. while it writes the next one.
            written = 0
            while written < kill_after and proc.stdout.readline():
                written += 1
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # Whatever is visible after the kill is whole and correct.
            with open_store(path) as r:
                assert len(r.ok_ids) >= kill_after
                for vid in r.ok_ids:
                    self.check_video(r, int(vid[3:]))
        proc = run_worker(path, self.fmt, "main", 0, n)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        self.check_complete(path, n)

    def test_concurrent_shards_write_each_video_once(self, path: Path) -> None:
        n, shards = 30, 3
        per = n // shards
        procs = [
            run_worker(path, self.fmt, f"shard-{s:05d}-of-{shards:05d}", s * per, per)
            for s in range(shards)
        ]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        self.check_complete(path, n)
        with open_store(path) as r:
            assert r.videos["part"].nunique() == shards
            total = sum(float(r.read(v, "rgb").sum()) for v in r.ok_ids)
            assert total == pytest.approx(sum(float(expected_features(i).sum()) for i in range(n)))

    def test_full_disk_is_a_clear_error_and_resumable(self, path: Path) -> None:
        ok = run_worker(path, self.fmt, "main", 0, 3)
        assert ok.wait(timeout=120) == 0
        # 64 frames x 64 dims x 4 bytes = 16 KiB per chunk: a 12 KiB file-size limit fails it.
        proc = run_worker(path, self.fmt, "main", 0, 40, "--fsize-limit", str(12 * 1024))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "StoreError" in err and "rerun to resume" in err
        proc = run_worker(path, self.fmt, "main", 0, 40)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        self.check_complete(path, 40)

    def test_the_commit_timer_fires_without_a_new_video(self, path: Path) -> None:
        w = create_store(path, dim=2, format=self.fmt, commit_every=100, commit_seconds=1.5)
        with w:
            w.write("a", np.ones((1, 2), np.float32))
            w.commit_if_due()  # not yet due
            assert not w.committed_ids()
            time.sleep(1.6)
            w.commit_if_due()  # due, and nothing else came
            with open_store(path) as r:
                assert r.ok_ids == ["a"]

    def test_a_writer_whose_commit_failed_takes_no_more_videos(self, path: Path) -> None:
        # The disk fills mid-commit (a 12 KiB file-size limit), then frees up: the writer that
        # failed must not append after the rows its failed commit left behind.
        ok = run_worker(path, self.fmt, "main", 0, 3)
        assert ok.wait(timeout=120) == 0
        limit = ("--fsize-limit", str(12 * 1024), "--keep-writing")
        proc = run_worker(path, self.fmt, "main", 0, 8, *limit)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        lines = out.splitlines()
        outcomes = [line.split()[0] for line in lines]  # videos 3..7: wrote, then refused
        n_wrote = outcomes.index("refused")
        assert outcomes == ["wrote"] * n_wrote + ["refused"] * (5 - n_wrote), out
        assert all("rerun to resume" in line for line in lines[n_wrote:])
        self.check_complete(path, 3 + n_wrote)
        assert verify_store(path).ok
        proc = run_worker(path, self.fmt, "main", 0, 8)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        self.check_complete(path, 8)

    def test_a_video_committed_in_two_parts_reads_once_from_the_first_part_by_name(
        self, path: Path
    ) -> None:
        # Two writers open at once (a retried worker and the one it was presumed dead), both
        # commit "v". The later part name commits first: the rule is by name, not by time.
        late = create_store(path, dim=4, format=self.fmt, part="ray-b")
        early = create_store(path, dim=4, format=self.fmt, part="ray-a")
        with late:
            late.write("v", np.full((2, 4), 2.0, np.float32))
            late.write("only-b", np.ones((1, 4), np.float32))
        with early:
            early.write("v", np.full((3, 4), 1.0, np.float32))
        with open_store(path) as r:
            assert sorted(r.videos["video_id"]) == ["only-b", "v"]
            row = r.videos.set_index("video_id").loc["v"]
            assert row["part"] == "ray-a" and row["n_frames"] == 3
            np.testing.assert_array_equal(r.read("v"), np.full((3, 4), 1.0, np.float32))


class TestZarrStore(StoreContract):
    fmt = "zarr"
    suffix = ".zarr"

    @staticmethod
    def first_chunk(path: Path, array: str) -> Path:
        return min(p for p in (path / "parts" / "main" / array / "c").rglob("*") if p.is_file())

    def corrupt(self, path: Path, array: str) -> None:
        chunk = self.first_chunk(path, array)
        flip_byte(chunk, chunk.stat().st_size // 2)

    def delete_chunk(self, path: Path, array: str) -> None:
        self.first_chunk(path, array).unlink()

    def part_files(self, path: Path) -> list[Path]:
        return sorted(p for p in (path / "parts" / "main").rglob("*") if p.is_file())

    def truncate_part(self, path: Path, part: str = "main") -> None:
        meta = path / "parts" / part / "zarr.json"
        meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])

    def test_temporary_files_of_a_killed_commit_are_swept_on_resume(self, path: Path) -> None:
        # zarr writes each file under a temporary name (<name>.<hex>.partial) and renames it;
        # a writer killed in between left those files in the part for good.
        self.write_some(path, n=2)
        killed_mid_commit = f"""
import os, pathlib, signal
import numpy as np
from vidfeat import create_store
renames = [0]
rename = pathlib.Path.replace
def replace(self, target):
    if self.name.endswith(".partial"):
        renames[0] += 1
        if renames[0] == 12:  # some of the commit's files written, none renamed yet
            os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)
pathlib.Path.replace = replace
with create_store({str(path)!r}, dim=8, format="zarr", attrs={{"fps": 1}}) as w:
    for i in range(3):
        w.write(f"new{{i}}", np.ones((70, 8), np.float32))
"""
        proc = subprocess.run([sys.executable, "-c", killed_mid_commit], cwd=ROOT, timeout=120)
        assert proc.returncode == -signal.SIGKILL
        part = path / "parts" / "main"
        assert list(part.rglob("*.partial"))  # what the kill left
        mine = part / "notes.partial"  # not zarr's name: not touched
        mine.write_text("kept")
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}) as w:
            w.write("new0", np.ones((70, 8), np.float32))
        assert [p.name for p in part.rglob("*.partial")] == ["notes.partial"]
        mine.unlink()
        report = verify_store(path)
        assert report.ok and report.videos == 3, report.problems
        with open_store(path) as r:
            assert r.ok_ids == ["v0", "v1", "new0"]

    def test_a_part_killed_while_its_arrays_were_made_verifies_clean(self, path: Path) -> None:
        # A Ray worker killed while it created its part (the group, then ~15 arrays one by
        # one) left a part with arrays missing and no commit. Ray parts are never reopened,
        # so nothing finishes it, and verify failed on it for good; readers already skip it.
        import shutil

        self.write_some(path)
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}, part="ray-1-dead"):
            pass
        shutil.rmtree(path / "parts" / "ray-1-dead" / "duration_s")
        report = verify_store(path)
        assert report.ok and report.videos == 4, report.problems
        with open_store(path) as r:
            assert len(r.videos) == 4

    def test_a_part_whose_group_documents_were_not_written_resumes(self, path: Path) -> None:
        # A part's documents may be written at once (on an object store, in parallel): a job
        # killed then can leave arrays whose parent groups have no document yet. Zarr does not
        # list such arrays, and resuming the part tried to make them again and failed for good.
        written = self.write_some(path)
        streams = path / "parts" / "main" / "streams"
        (streams / "zarr.json").unlink()
        (streams / "rgb" / "zarr.json").unlink()
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}) as w:
            w.write("late", np.ones((2, 8), np.float32))
        with open_store(path) as r:
            assert r.ok_ids == [*written, "late"]
            for vid, feats in written.items():
                np.testing.assert_array_equal(r.read(vid), feats)
        assert verify_store(path).ok

    def test_an_array_rewritten_without_checksums_is_refused(self, path: Path) -> None:
        # Another tool may rewrite an array with its own codecs: the store still says schema
        # 2, but a damaged chunk of that array would read back as plausible numbers.
        import zarr

        self.write_some(path)
        where = path / "parts" / "main" / "streams" / "rgb"
        old = zarr.open_array(where / "features", mode="r")[:]
        plain = zarr.open_group(where).create_array(
            "features",
            shape=old.shape,
            chunks=(64, 8),
            dtype="float32",
            compressors=None,
            overwrite=True,
        )
        plain[:] = old
        with open_store(path) as r, pytest.raises(StoreIntegrityError, match="no CRC32C"):
            r.read("v0")
        report = verify_store(path)
        assert not report.ok and "no CRC32C" in str(report.problems[0]), report

    def test_a_part_without_its_document_is_named_by_verify(self, path: Path) -> None:
        # Readers skip a part folder without zarr.json (nothing of it can be read): verify
        # said "clean" while the part's videos were gone from every read.
        self.write_some(path)
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}, part="lost") as w:
            w.write("gone", np.ones((2, 8), np.float32))
        (path / "parts" / "lost" / "zarr.json").unlink()
        with open_store(path) as r:
            assert "gone" not in r.ok_ids
        report = verify_store(path)
        assert [(p.part, p.array) for p in report.problems] == [("lost", "zarr.json")]
        assert "missing" in report.problems[0].message
        # An emptied folder (a part's files removed, its folder left) holds nothing to lose,
        # nor does one holding only zarr's temporary file (a writer killed writing the part's
        # first document, or busy writing it while verify runs).
        shutil.rmtree(path / "parts" / "lost")
        (path / "parts" / "lost").mkdir()
        assert verify_store(path).ok
        (path / "parts" / "lost" / "zarr.0123456789abcdef0123456789abcdef.partial").write_text("{")
        assert verify_store(path).ok


class TestHDF5Store(StoreContract):
    fmt = "hdf5"
    suffix = ".h5"

    def corrupt(self, path: Path, array: str) -> None:
        import h5py

        segment = path.with_name(path.name + ".parts") / "main.00000000.h5"
        with h5py.File(segment, "r") as f:
            info = f[array].id.get_chunk_info(0)
        flip_byte(segment, info.byte_offset + info.size // 2)

    def delete_chunk(self, path: Path, array: str) -> None:
        # A segment is HDF5's unit of commit: losing the first one leaves a gap in the numbers.
        (path.with_name(path.name + ".parts") / "main.00000000.h5").unlink()

    def truncate_part(self, path: Path, part: str = "main") -> None:
        segment = path.with_name(path.name + ".parts") / f"{part}.00000000.h5"
        segment.write_bytes(segment.read_bytes()[: segment.stat().st_size // 2])

    def part_files(self, path: Path) -> list[Path]:
        return sorted(path.with_name(path.name + ".parts").glob("main.*.h5"))

    def test_a_segment_copied_under_another_number_is_damage(self, path: Path) -> None:
        # A copy of commit 1 as commit 2: its videos were committed ok twice in part main.
        self.write_some(path, commit_every=2)
        parts = path.with_name(path.name + ".parts")
        shutil.copy(parts / "main.00000001.h5", parts / "main.00000002.h5")
        with pytest.raises(StoreIntegrityError, match=r"main\.00000002\.h5"):
            open_store(path)
        report = verify_store(path)
        assert [p.part for p in report.problems] == ["main.00000002.h5"]
        assert "'seq': 1" in report.problems[0].message
        code, out = cli_verify(path)
        assert code == 2 and "copied, renamed or rewritten" in out

    def test_a_segment_rewritten_without_fletcher32_is_refused(self, path: Path) -> None:
        # Another tool's rewrite keeps "schema 2" but leaves the rows unchecked.
        import h5py

        written = self.write_some(path)
        segment = path.with_name(path.name + ".parts") / "main.00000000.h5"
        plain = segment.with_name("plain.tmp")
        with h5py.File(segment, "r") as src, h5py.File(plain, "w") as dst:
            dst.attrs.update(src.attrs)

            def copy(name: str, obj: object) -> None:
                if not isinstance(obj, h5py.Dataset):
                    return
                parent = dst.require_group(name.rpartition("/")[0] or "/")
                if name.endswith("features"):  # changed, and stored plain: nothing catches it
                    dst.create_dataset(name, data=obj[()] + 1)
                else:  # as written: layout, filters and checksums
                    src.copy(obj, parent, name.rpartition("/")[2])

            src.visititems(copy)
        plain.replace(segment)
        with open_store(path) as r:
            assert r.ok_ids == list(written)  # the table is as written
            with pytest.raises(StoreIntegrityError, match="fletcher32"):
                r.read("v0")
        report = verify_store(path)
        assert [p.array for p in report.problems] == ["streams/rgb/features"]
        assert "fletcher32" in report.problems[0].message

    def test_a_store_of_more_segments_than_the_open_file_limit_reads(self, path: Path) -> None:
        # Each segment read stays open: under the usual soft limit of 1,024 files, a store of
        # a long extraction (a segment per commit) failed as "damaged" (Too many open files).
        with create_store(path, dim=2, format=self.fmt, commit_every=1) as w:
            for i in range(80):
                w.write(f"v{i:02d}", np.full((1, 2), i, np.float32))
        script = (
            "import resource, sys, numpy as np\n"
            "from vidfeat import open_store\n"
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (60, hard))\n"
            "with open_store(sys.argv[1]) as r:\n"
            "    values = [float(r.read(v)[0, 0]) for v in sorted(r.ok_ids)]\n"
            "print(values == [float(i) for i in range(80)])\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]

    def test_string_columns_are_typed_utf8(self, path: Path) -> None:
        # Typed ASCII, a non-ASCII id would fail in tools that decode by the declared type.
        import h5py

        with create_store(path, dim=2, format=self.fmt) as w:
            w.write("café 日本", np.ones((1, 2)), labels=["naïve"])
        with h5py.File(self.part_files(path)[0], "r") as f:
            assert f["video_id"].asstr()[:].tolist() == ["café 日本"]
            assert f["labels"].asstr()[:].tolist() == ["naïve"]
        with open_store(path) as r:
            assert r.ok_ids == ["café 日本"] and r.labels("café 日本") == ("naïve",)

    def test_a_chunk_zeroed_with_its_checksum_is_an_error(self, path: Path) -> None:
        # fletcher32 sums zero bytes to 0, so HDF5 alone reads such a chunk back as zeros.
        import h5py

        self.write_some(path)
        segment = self.part_files(path)[0]
        with h5py.File(segment, "r") as f:
            info = f["streams/rgb/features"].id.get_chunk_info(0)
        data = bytearray(segment.read_bytes())
        data[info.byte_offset : info.byte_offset + info.size] = bytes(info.size)
        segment.write_bytes(bytes(data))
        with open_store(path) as r, pytest.raises(StoreIntegrityError, match="CRC32C"):
            r.read("v0")
        code, out = cli_verify(path)
        assert code == 2 and "streams/rgb/features" in out and "CRC32C" in out


def test_format_is_chosen_by_suffix(tmp_path: Path) -> None:
    for name, fmt in [("a.h5", "hdf5"), ("b.hdf5", "hdf5"), ("c.zarr", "zarr"), ("d", "zarr")]:
        with create_store(tmp_path / name, dim=2) as w:
            w.write("x", np.ones((1, 2)))
        assert open_store(tmp_path / name).format == fmt


def test_a_store_made_against_its_suffix_is_read_as_what_is_on_disk(tmp_path: Path) -> None:
    # `--format hdf5` on a name without a suffix (or with another store's suffix) makes a
    # store that every reader must open without being told the format again.
    for name, fmt in [("plain", "hdf5"), ("odd.zarr", "hdf5"), ("odd.h5", "zarr")]:
        with create_store(tmp_path / name, dim=2, format=fmt) as w:
            w.write("x", np.ones((1, 2)))
        with open_store(tmp_path / name) as r:
            assert (r.format, r.ok_ids) == (fmt, ["x"])
        with create_store(tmp_path / name, dim=2) as w:  # resumed without --format
            w.write("y", np.ones((1, 2)))
        assert open_store(tmp_path / name, format=fmt).ok_ids == ["x", "y"]
        code, out = cli_verify(tmp_path / name)
        assert code == 0, out


def test_what_already_lies_at_a_new_store_path(tmp_path: Path) -> None:
    # An empty directory the user made becomes a Zarr store; a file, a non-empty directory,
    # or a directory where an HDF5 root file should go is refused before anything is written.
    (tmp_path / "made").mkdir()
    with create_store(tmp_path / "made", dim=2) as w:
        w.write("x", np.ones((1, 2)))
    assert open_store(tmp_path / "made").ok_ids == ["x"]
    (tmp_path / "f.zarr").write_text("notes")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("notes")
    (tmp_path / "d.h5").mkdir()
    refused = [("f.zarr", "is a file, not a vidfeat zarr store")] + [
        (name, "is a directory but not a vidfeat store") for name in ("full", "d.h5")
    ]
    for name, message in refused:
        with pytest.raises(StoreError, match=message):
            create_store(tmp_path / name, dim=2)
    assert (tmp_path / "f.zarr").read_text() == "notes"
    # A new name of another kind of file is refused too, before anything is made there.
    for name in ("features.csv", "out.TXT", "model.pt"):
        with pytest.raises(StoreError, match=r"a store is a \.zarr directory or an \.h5 file"):
            create_store(tmp_path / name, dim=2)
    others = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("made"))
    assert others == ["d.h5", "f.zarr", "full"]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_store_another_shard_makes_during_the_path_check_is_taken_as_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    # Two shards create one store at once: the other's root may appear between this job's
    # "no store here" and its look at what lies at the path. That is a store, not a stranger.
    path = tmp_path / f"s{suffix}"
    backend = BACKENDS.get(detect_format(path))
    exists = backend.exists
    looks: list[Path] = []

    def first_look_races(self) -> bool:
        looks.append(self.path)
        if len(looks) > 1:
            return exists(self)
        with monkeypatch.context() as other_shard:  # makes the store just after this look
            other_shard.setattr(backend, "exists", exists)
            with create_store(path, dim=2, part="other") as w:
                w.write("a", np.ones((1, 2)))
        return False

    monkeypatch.setattr(backend, "exists", first_look_races)
    with create_store(path, dim=2, part="mine") as w:
        w.write("b", np.ones((1, 2)))
    assert sorted(open_store(path).ok_ids) == ["a", "b"]


def _rewrite_root_meta(path: Path, change: Callable[[dict], None]) -> None:
    """Edit a store's root metadata as another tool writing the format might."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as f:
            meta = json.loads(f.attrs["vidfeat"])
            change(meta)
            f.attrs["vidfeat"] = json.dumps(meta)
        return
    root = zarr.open_group(path, mode="r+")
    meta = dict(root.attrs["vidfeat"])
    change(meta)
    root.attrs["vidfeat"] = meta


def _set_stream(key: str, value: object) -> Callable[[dict], None]:
    return lambda meta: meta["streams"]["rgb"].__setitem__(key, value)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set_stream("quantization", {"scheme": "foo", "min": -2, "max": 2}), "scheme 'foo'"),
        (_set_stream("quantization", None), "need a quantization block"),
        (_set_stream("dtype", "float64"), "dtype must be one of"),
        (lambda meta: meta.__setitem__("level", "clip"), "level must be one of"),
    ],
    ids=["unknown-scheme", "uint8-unquantized", "float64", "level"],
)
def test_root_metadata_that_breaks_the_format_is_refused_on_open(tmp_path, suffix, change, message):
    # Readers once checked only the schema version: a store written by another tool with an
    # unknown scheme read back through YouTube-8M's formula, and verify called it clean.
    path = tmp_path / f"s{suffix}"
    quant = quantization_attrs()
    with create_store(path, dim=4, dtype="uint8", quantization=quant) as w:
        w.write("v", np.full((3, 4), 7, np.uint8))
    _rewrite_root_meta(path, change)
    with pytest.raises(StoreError, match=f"root metadata breaks the store format.*{message}"):
        open_store(path)
    assert cli_verify(path)[0] == 2


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_arrays_wider_than_their_stream_say_so(tmp_path, suffix):
    # A root that declares 8-d over 4-d arrays read back 4-d rows, which training then failed
    # to fit into 8-d batches as an internal error.
    path = tmp_path / f"s{suffix}"
    with create_store(path, dim=4) as w:
        w.write("v", np.ones((3, 4), np.float32))
    _rewrite_root_meta(path, _set_stream("dim", 8))
    with open_store(path) as r, pytest.raises(StoreIntegrityError, match="stream 'rgb' is 8-d"):
        r.read("v")
    code, out = cli_verify(path)
    assert code == 2 and "is 8-d" in out


def test_importing_the_store_does_not_import_torch() -> None:
    code = "import sys, vidfeat, vidfeat.store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_readers_during_extraction_see_only_committed(tmp_path: Path) -> None:
    path = tmp_path / "live.zarr"
    proc = run_worker(path, "zarr", "main", 0, 100)
    seen = 0
    try:
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            if (path / "zarr.json").exists():
                with open_store(path) as r:
                    for vid in r.ok_ids:
                        StoreContract.check_video(r, int(vid[3:]))
                    seen = max(seen, len(r.ok_ids))
    finally:
        proc.kill()
        proc.wait()
    assert seen > 0


def test_every_registered_backend_runs_the_shared_contract() -> None:
    # A new backend is one file and a registration; this makes its contract subclass (with
    # its format's own corrupt/delete_chunk/truncate_part/part_files hooks) a requirement.
    from vidfeat.store import BACKENDS

    def subclasses(cls: type) -> set[type]:
        return {c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))}

    covered = {cls.fmt for cls in subclasses(StoreContract) if cls.__name__.startswith("Test")}
    assert set(BACKENDS.names()) <= covered, "a backend without a StoreContract subclass"


def test_an_hdf5_store_whose_root_file_was_deleted_is_not_rebuilt(tmp_path: Path) -> None:
    # "Starting over" by deleting feats.h5 left feats.h5.parts/: the next run made a new root
    # with its own settings over segments made with others, and resumed past them.
    path = tmp_path / "feats.h5"
    with create_store(path, dim=2, attrs={"fps": "1"}) as w:
        w.write("v", np.ones((3, 2), np.float32))
    path.unlink()
    with pytest.raises(StoreError, match=r"feats.h5 is missing but .*feats.h5.parts holds 1"):
        create_store(path, dim=2, attrs={"fps": "2"})
    assert not path.exists()


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_store_being_written_says_so(tmp_path: Path, suffix: str) -> None:
    # Readers see what is committed so far; `vidfeat info` counted a live store as if whole.
    from vidfeat.store.claim import parts_being_written
    from vidfeat.store.info import format_summary, store_summary

    path = tmp_path / f"live{suffix}"
    writer = create_store(path, dim=2, part="shard-1")
    try:
        writer.write("a", np.ones((2, 2), np.float32))
        writer.flush()
        assert parts_being_written(path) == ["shard-1"]
        text = format_summary(store_summary(path))
        assert "1 part(s); being written (part shard-1): committed so far" in text
    finally:
        writer.close()
    assert parts_being_written(path) == []
    assert "being written" not in format_summary(store_summary(path))
