"""Store contract cases of schema 2: named streams, levels, integrity and schema-1 stores.

Mixed into ``StoreContract`` (test_store.py), so every backend runs each case. A backend's test
class provides ``fmt``, ``suffix``, ``path`` and ``write_some``, plus the damage hooks
``corrupt``, ``delete_chunk`` and ``truncate_part``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.vidfeat.fixtures.make_v1_stores import features as v1_features
from vidfeat import create_store, open_store
from vidfeat.errors import ConfigError, StoreError, StoreIntegrityError, StoreMismatchError
from vidfeat.pca.quantize import dequantize, quantization_attrs, quantize
from vidfeat.store.info import format_summary, store_summary
from vidfeat.store.verify import verify_store

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
V1_ATTRS = {"fps": "1", "backbone": {"name": "fixture"}}


def flip_byte(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


def _everything(path: Path) -> dict[str, object]:
    """What a store gives back: its table, and every video's raw frames, timestamps and means."""
    with open_store(path, cache_mb=0) as r:
        out: dict[str, object] = {"table": r.videos.astype(str).to_csv()}
        for vid in r.ok_ids:
            out[vid] = (r.read(vid, raw=True).tobytes(), r.timestamps(vid).tobytes())
            out[f"{vid} mean"] = r.mean(vid).tobytes()
        return out


def cli_verify(path: Path) -> tuple[int, str]:
    """`vidfeat verify PATH` in a real process: its exit code and everything it printed."""
    # Run this checkout's cli/vidfeat.py by path: an installed `vidfeat_cli` may be another copy.
    run = "import runpy, sys; sys.argv[0] = 'vidfeat'; runpy.run_path(sys.argv.pop(1), None, "
    run += "'__main__')"
    cmd = [sys.executable, "-c", run, str(ROOT / "cli" / "vidfeat.py"), "verify", str(path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stdout + out.stderr


class StreamCases:
    """Named streams and video-level stores."""

    fmt: str
    suffix: str

    def test_named_streams_round_trip(self, path: Path) -> None:
        rng = np.random.default_rng(3)
        rgb = rng.standard_normal((3, 8)).astype(np.float32)
        audio = quantize(rng.uniform(-2, 2, (3, 4)))
        q = quantization_attrs()
        streams = {
            "rgb": 8,
            "audio": {"dim": 4, "dtype": "uint8", "quantization": q, "attrs": {"src": "vggish"}},
        }
        with create_store(path, format=self.fmt, streams=streams) as w:
            w.write("a", {"rgb": rgb, "audio": audio}, labels=["x"], timestamps=[0.0, 1.0, 2.0])
            w.write_failure("f", "timeout", "hung")
            with pytest.raises(ConfigError, match="missing \\['audio'\\]"):
                w.write("b", {"rgb": rgb})
            with pytest.raises(ConfigError, match="one array per stream"):
                w.write("b", rgb)
            with pytest.raises(ConfigError, match="same frame count"):
                w.write("b", {"rgb": rgb, "audio": audio[:2]})
        with open_store(path) as r:
            assert list(r.streams) == ["rgb", "audio"] and r.level == "frame" and r.verified
            spec = r.streams["audio"]
            assert (spec.dim, spec.dtype, spec.quantization) == (4, "uint8", q)
            assert spec.attrs == {"src": "vggish"}
            np.testing.assert_array_equal(r.read("a", "rgb"), rgb)
            np.testing.assert_array_equal(r.read("a", "audio", raw=True), audio)
            np.testing.assert_array_equal(r.read("a", stream="audio"), dequantize(audio))
            np.testing.assert_allclose(
                r.mean("a", "audio"), dequantize(audio).mean(0, dtype=np.float64), rtol=1e-6
            )
            np.testing.assert_allclose(r.mean("a", "rgb"), rgb.mean(0, dtype=np.float64), rtol=1e-6)
            both = r.read_streams("a")
            assert both.keys() == {"rgb", "audio"} and both["audio"].shape == (3, 4)
            with pytest.raises(ConfigError, match="streams rgb, audio"):
                r.read("a")
            with pytest.raises(ConfigError, match="no stream 'video'"):
                r.read("a", "video")
            with pytest.raises(ConfigError, match="streams rgb, audio"):
                r.dim  # noqa: B018 - the property raises
        assert verify_store(path).ok
        with pytest.raises(StoreMismatchError, match=r"audio\.dim: store has 4"):
            create_store(path, format=self.fmt, streams={**streams, "audio": 5})
        summary = store_summary(path)
        assert summary["streams"]["audio"]["dim"] == 4 and summary["features"] is None
        assert "stream      audio: 4-d uint8" in format_summary(summary)

    def test_video_level_store(self, path: Path) -> None:
        mean_rgb = np.linspace(-1, 1, 8)
        with create_store(
            path, format=self.fmt, level="video", streams={"mean_rgb": 8, "mean_audio": 4}
        ) as w:
            w.write("a", {"mean_rgb": mean_rgb, "mean_audio": np.ones(4)}, labels=["x"])
            with pytest.raises(ConfigError, match="no timestamps"):
                w.write("b", {"mean_rgb": mean_rgb, "mean_audio": np.ones(4)}, timestamps=[0.0])
            with pytest.raises(ConfigError, match=r"must be \(8,\)"):
                w.write("b", {"mean_rgb": np.ones((2, 8)), "mean_audio": np.ones(4)})
        with open_store(path) as r:
            assert r.level == "video" and r.videos["n_frames"].tolist() == [0]
            np.testing.assert_allclose(r.mean("a", "mean_rgb"), mean_rgb.astype(np.float32))
            with pytest.raises(StoreError, match="video-level"):
                r.read("a", "mean_rgb")
        assert verify_store(path).ok
        summary = store_summary(path)
        assert summary["level"] == "video" and "level       video" in format_summary(summary)

    def test_mean_of_features_near_the_float32_limit_is_finite(self, path: Path) -> None:
        big = np.full((4, 2), 3e38, np.float32)  # finite; their float32 sum is not
        with create_store(path, format=self.fmt, streams={"rgb": 2}) as w:
            w.write("a", {"rgb": big}, timestamps=range(4))
        with open_store(path) as r:
            np.testing.assert_array_equal(r.mean("a"), big[0])

    def test_info_lists_labels_unambiguously(self, path: Path) -> None:
        with create_store(path, format=self.fmt, streams={"rgb": 4}) as w:
            w.write("a", {"rgb": np.ones((2, 4))}, timestamps=[0.0, 1.0], labels=["cats, dogs"])
            w.write("b", {"rgb": np.ones((2, 4))}, timestamps=[0.0, 1.0], labels=["cats", "dogs"])
        text = format_summary(store_summary(path))
        # Three labels, and the one holding ", " must not read as two.
        assert "labels      3: " in text and "'cats, dogs'" in text


class IntegrityCases:
    """Checksums, expected chunks, values after the cast, and stores of schema 1."""

    fmt: str
    suffix: str

    def test_values_are_checked_after_the_cast(self, tmp_path: Path) -> None:
        p = tmp_path / f"f16{self.suffix}"
        with create_store(p, dim=2, format=self.fmt, dtype="float16") as w:
            with pytest.raises(ConfigError, match=r"'big'.*inf.*float16"):
                w.write("big", np.array([[1e5, 0.0]], np.float32))  # finite in float32
            with pytest.raises(ConfigError, match=r"'nan'.*NaN"):
                w.write("nan", np.array([[np.nan, 0.0]], np.float32))
            w.write("fine", np.array([[6e4, 0.0]], np.float32))
        with open_store(p) as r:
            assert r.ok_ids == ["fine"]

    def corrupt(self, path: Path, array: str) -> None:
        """Flip one byte inside the first chunk of ``array`` of part main."""
        raise NotImplementedError

    def delete_chunk(self, path: Path, array: str) -> None:
        """Remove the stored bytes that hold the first rows of ``array`` of part main."""
        raise NotImplementedError

    def test_flipped_feature_bytes_are_a_typed_error(self, path: Path) -> None:
        self.write_some(path)
        self.corrupt(path, "streams/rgb/features")
        with open_store(path) as r, pytest.raises(StoreIntegrityError) as err:
            r.read("v1")
        assert err.value.video == "v1" and err.value.array == "streams/rgb/features"
        assert str(path) in str(err.value) and "main" in err.value.part
        code, out = cli_verify(path)
        assert code == 2 and "streams/rgb/features" in out and "v1" in out

    @pytest.mark.parametrize("array", ["video_id", "labels"])
    def test_flipped_table_bytes_are_a_typed_error(self, path: Path, array: str) -> None:
        self.write_some(path)
        self.corrupt(path, array)
        with pytest.raises(StoreIntegrityError, match=f"array {array}"):
            open_store(path)
        with pytest.raises(StoreIntegrityError):  # and a rerun adds no ghost video
            create_store(path, dim=8, format=self.fmt, attrs={"fps": 1})
        code, out = cli_verify(path)
        assert code == 2 and f"array {array}" in out

    @pytest.mark.parametrize("array", ["streams/rgb/features", "video_id"])
    def test_missing_chunk_is_an_error_not_fill_values(self, path: Path, array: str) -> None:
        self.write_some(path, commit_every=2)
        self.delete_chunk(path, array)
        with pytest.raises(StoreIntegrityError, match="missing"), open_store(path) as r:
            for vid in r.ok_ids:
                r.read(vid)
        code, out = cli_verify(path)
        assert code == 2 and "missing" in out

    def truncate_part(self, path: Path, part: str = "main") -> None:
        """Cut the metadata of ``part`` (Zarr) or its first segment (HDF5) in half."""
        raise NotImplementedError

    def test_truncated_part_is_a_typed_error(self, path: Path) -> None:
        self.write_some(path)
        self.truncate_part(path)
        with pytest.raises(StoreIntegrityError, match="part main"):
            open_store(path)
        with pytest.raises(StoreIntegrityError, match="part main"):
            create_store(path, dim=8, format=self.fmt, attrs={"fps": 1})
        code, out = cli_verify(path)
        assert code == 2 and "part main" in out

    def test_verify_goes_on_past_parts_it_cannot_open(self, path: Path) -> None:
        # It stopped at the first: "0 video(s) in 0 part(s)", and later damage went unsaid.
        self.write_some(path)
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}, part="other") as w:
            w.write("o1", np.ones((2, 8), np.float32))
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}, part="third") as w:
            w.write("t1", np.ones((2, 8), np.float32))
        self.truncate_part(path, "main")
        self.truncate_part(path, "other")
        report = verify_store(path)
        assert sorted(p.part.split(".")[0] for p in report.problems) == ["main", "other"]
        assert report.videos == 1 and report.parts == 1  # part third, read whole
        code, out = cli_verify(path)
        assert code == 2 and "part main" in out and "part other" in out

    def test_nan_in_attrs_is_refused_by_name(self, path: Path) -> None:
        with pytest.raises(ConfigError, match="NaN"):
            create_store(path, dim=2, format=self.fmt, attrs={"fps": float("nan")})

    def test_verify_passes_a_clean_store(self, path: Path) -> None:
        self.write_some(path)
        report = verify_store(path)
        assert report.ok and report.checksummed and report.videos == 4
        assert cli_verify(path)[0] == 0

    def test_an_empty_part_verifies_clean(self, path: Path) -> None:
        # A shard that had no videos, or a job killed before its first commit.
        self.write_some(path)
        with create_store(path, dim=8, format=self.fmt, attrs={"fps": 1}, part="idle"):
            pass
        report = verify_store(path)
        assert report.ok and report.videos == 4, report.problems
        assert cli_verify(path)[0] == 0

    def part_files(self, path: Path) -> list[Path]:
        """Every file that holds part main's committed data and metadata."""
        raise NotImplementedError

    def test_any_flipped_byte_is_an_error_or_changes_nothing(self, path: Path) -> None:
        # Damage anywhere in a part (data, checksums, metadata, chunk indexes) must never come
        # back as other numbers: reads and verify either refuse it or read what was written.
        self.write_some(path, commit_every=2)
        clean = _everything(path)
        rng = np.random.default_rng(0)
        files = self.part_files(path)
        for file in files:
            original = file.read_bytes()
            for pos in rng.choice(len(original), size=min(len(original), 60 // len(files) + 1)):
                damaged = bytearray(original)
                damaged[pos] ^= 0xFF
                file.write_bytes(bytes(damaged))
                try:
                    found = verify_store(path).problems
                except StoreError:
                    found = ["refused"]
                try:
                    read = _everything(path)
                except StoreError:
                    read = None
                where = f"{file.name} byte {pos}"
                assert read is None or read == clean, f"{where}: damage read back as data"
                assert found or read == clean, f"{where}: verify calls a damaged part clean"
            file.write_bytes(original)

    def test_shards_creating_a_store_at_once_with_other_settings_never_mix(
        self, tmp_path: Path
    ) -> None:
        # Two jobs (fps 1 and fps 2) create each of 12 new stores at the same instant: one
        # creates the root, the other must be refused, never write under the first's settings.
        start, n = time.time() + 3, 12
        cmd = [sys.executable, "-m", "tests.vidfeat.root_race_worker", str(tmp_path), self.suffix]
        jobs = [
            subprocess.Popen([*cmd, fps, str(start), str(n)], cwd=ROOT, stdout=subprocess.PIPE)
            for fps in ("1", "2")
        ]
        outputs = [job.communicate(timeout=120)[0].decode().split() for job in jobs]
        assert all(job.returncode == 0 for job in jobs)
        for k in range(n):
            with open_store(tmp_path / f"r{k}{self.suffix}") as r:
                assert r.ok_ids == [f"vid-fps{r.attrs['fps']}"], (k, r.attrs, r.ok_ids)
        first, second = outputs
        assert all(sorted([first[k], second[k]]) == ["ok", "refused"] for k in range(n))

    # -- schema 1 ------------------------------------------------------------------------------
    def v1_copy(self, tmp_path: Path) -> Path:
        src = FIXTURES / f"v1{self.suffix}"
        dst = tmp_path / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
            shutil.copytree(src.with_name(src.name + ".parts"), dst.with_name(dst.name + ".parts"))
        return dst

    def test_schema_1_store_reads_as_one_stream_rgb(self, tmp_path: Path) -> None:
        path = self.v1_copy(tmp_path)
        with open_store(path) as r:
            assert r.meta.schema_version == 1 and not r.verified
            assert list(r.streams) == ["rgb"] and r.dim == 4 and r.dtype == np.float16
            for index, (vid, n) in enumerate([("a", 3), ("b", 2)]):
                want = v1_features(index, n).astype(np.float16).astype(np.float32)
                np.testing.assert_array_equal(r.read(vid), want)
                np.testing.assert_array_equal(r.read(vid, "rgb"), want)
                np.testing.assert_allclose(
                    r.mean(vid), want.mean(axis=0, dtype=np.float64), rtol=1e-6
                )
            np.testing.assert_array_equal(r.timestamps("a"), [0.0, 1.0, 2.0])
            assert r.labels("b") == ("dog", "cat")
            assert r.videos.set_index("video_id").loc["c", "status"] == "truncated"
            # A schema-1 writer let float16 overflow in; readers name the video.
            with pytest.raises(StoreIntegrityError, match=r"video 'd'.*non-finite"):
                r.read("d")
        summary = store_summary(path)
        assert summary["verified"] is False and "unverified" in format_summary(summary)
        report = verify_store(path)
        assert not report.checksummed and [p.videos for p in report.problems] == [("d",)] * 2

    def test_appending_to_a_schema_1_store_keeps_it_schema_1(self, tmp_path: Path) -> None:
        path = self.v1_copy(tmp_path)
        with pytest.raises(StoreMismatchError, match="streams"):
            create_store(path, format=self.fmt, streams={"rgb": 4, "audio": 2}, attrs=V1_ATTRS)
        with create_store(path, dim=4, format=self.fmt, dtype="float16", attrs=V1_ATTRS) as w:
            assert w.committed_ids() == {"a", "b", "c", "d"}
            w.write("e", np.full((2, 4), 0.5))
        with open_store(path) as r:
            assert r.meta.schema_version == 1 and not r.verified
            np.testing.assert_array_equal(r.read("e"), np.full((2, 4), 0.5))
            np.testing.assert_array_equal(r.read("a"), v1_features(0, 3).astype(np.float16))
