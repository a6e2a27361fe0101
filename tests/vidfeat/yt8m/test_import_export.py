"""`vidfeat import-yt8m` / `export-yt8m` end to end: TensorFlow-written files into a real store
and back, corrupt inputs, and a SIGKILLed import resumed."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.procs import process_table, running
from tests.vidfeat.yt8m.helpers import (
    FRAME,
    SEGMENT,
    VIDEO,
    VOCABULARY,
    expected,
    expected_arrays,
    key,
    record_spans,
)
from vidfeat import open_store
from vidfeat.yt8m.protos import SequenceExample
from vidfeat.yt8m.schema import parse_record
from vidfeat.yt8m.segments import read_segments
from vidfeat.yt8m.tfrecord import read_records, write_records
from vidfeat.yt8m.vocabulary import read_vocabulary
from vidfeat_cli.vidfeat import main


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _tf_videos(path: Path) -> list[dict]:
    return expected()[key(path)]


def _read_dir(directory: Path) -> dict[str, object]:
    """Every video in the TFRecords of a directory, by id (vidfeat's parser)."""
    out = {}
    for f in sorted(directory.glob("*.tfrecord")):
        for record in read_records(io.BytesIO(f.read_bytes())):
            video = parse_record(record)
            out[video.video_id] = (f.name, video)
    return out


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_frame_level_import_equals_tensorflow_and_the_formula(tmp_path, suffix):
    store_path = tmp_path / f"yt8m{suffix}"
    result = invoke(
        "import-yt8m", FRAME, SEGMENT, "--out", store_path, "--vocabulary", VOCABULARY,
        "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 files imported, 0 already done: 5 videos, 10 frames" in result.output
    vocab = read_vocabulary(str(VOCABULARY))
    arrays = expected_arrays()
    with open_store(store_path) as store:
        assert store.level == "frame"
        assert {
            n: (s.dim, s.dtype, s.quantization["scheme"]) for n, s in store.streams.items()
        } == {
            "rgb": (1024, "uint8", "yt8m_uint8"),
            "audio": (128, "uint8", "yt8m_uint8"),
        }
        table = store.videos.set_index("video_id")
        for path in (FRAME, SEGMENT):
            for want in _tf_videos(path):
                vid = want["id"]
                assert table.loc[vid, "labels"] == tuple(vocab.name(i) for i in want["labels"])
                for stream in ("rgb", "audio"):
                    name = f"{key(path)}/{vid}/{stream}"
                    np.testing.assert_array_equal(
                        store.read(vid, stream=stream, raw=True), arrays[name]
                    )
                    # YouTube-8M's Dequantize as TensorFlow computed it, to the bit.
                    np.testing.assert_array_equal(
                        store.read(vid, stream=stream), arrays[name + "_dequantized"]
                    )
        assert set(table.loc[["Ab1c", "zZ9y", "Qq00"], "split"]) == {"train"}
        assert set(table.loc[["Se01", "Se02"], "split"]) <= {"val", "test"}
    segments = read_segments(store_path)
    for want in _tf_videos(SEGMENT):
        rows = segments[segments["video_id"] == want["id"]]
        assert rows["label"].tolist() == want["segments"]["labels"]
        assert rows["start_time_s"].tolist() == want["segments"]["start_times"]
        assert rows["score"].tolist() == want["segments"]["scores"]


def test_video_level_import_keeps_the_means(tmp_path):
    store_path = tmp_path / "video.zarr"
    assert invoke("import-yt8m", VIDEO, "--out", store_path, "--no-progress").exit_code == 0
    arrays = expected_arrays()
    with open_store(store_path) as store:
        assert store.level == "video"
        for want in _tf_videos(VIDEO):
            assert store.videos.set_index("video_id").loc[want["id"], "labels"] == tuple(
                str(i) for i in want["labels"]
            )
            for stream in ("rgb", "audio"):
                np.testing.assert_array_equal(
                    store.mean(want["id"], stream=stream),
                    arrays[f"{key(VIDEO)}/{want['id']}/mean_{stream}"],
                )


def test_round_trip_gives_identical_ids_labels_bytes_and_segments(tmp_path):
    store_path, out = tmp_path / "s.zarr", tmp_path / "exported"
    args = ["--vocabulary", VOCABULARY, "--no-progress"]
    assert invoke("import-yt8m", FRAME, SEGMENT, "--out", store_path, *args).exit_code == 0
    result = invoke("export-yt8m", store_path, "--out", out, "--records-per-file", 2)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "train0000.tfrecord",
        "train0001.tfrecord",
        "validate0000.tfrecord",
    ]
    exported = _read_dir(out)
    original = {}
    for path in (FRAME, SEGMENT):
        for record in read_records(io.BytesIO(path.read_bytes())):
            video = parse_record(record)
            original[video.video_id] = video
    assert set(exported) == set(original)
    for vid, (_, video) in exported.items():
        src = original[vid]
        assert video.labels == src.labels and video.level == "frame"
        for stream in ("rgb", "audio"):
            assert video.features[stream].tobytes() == src.features[stream].tobytes()
        if src.segments is None:
            assert video.segments is None
        else:
            assert video.segments.labels.tolist() == src.segments.labels.tolist()
            assert video.segments.start_times.tolist() == src.segments.start_times.tolist()
            assert video.segments.scores.tolist() == src.segments.scores.tolist()


@pytest.mark.parametrize("split", ["test", "validate"])
def test_a_split_chosen_at_import_survives_the_round_trip(tmp_path, split):
    # --split test on a train* file: the export named its file by the file's name, train, and
    # held-out videos came back as training data.
    store_path, out, again = tmp_path / "s.zarr", tmp_path / "exported", tmp_path / "a.zarr"
    args = ["--split", split, "--no-progress"]
    assert invoke("import-yt8m", FRAME, "--out", store_path, *args).exit_code == 0
    result = invoke("export-yt8m", store_path, "--out", out)
    assert result.exit_code == 0, result.output
    assert not list(out.glob("train*"))
    assert invoke("import-yt8m", out, "--out", again, "--no-progress").exit_code == 0
    with open_store(store_path) as first, open_store(again) as second:
        splits = first.videos.set_index("video_id")["split"]
        assert second.videos.set_index("video_id")["split"].to_dict() == splits.to_dict()
        assert set(splits) <= ({"test"} if split == "test" else {"val", "test"})


def test_video_level_round_trip_and_means_from_frames(tmp_path):
    store_path = tmp_path / "v.zarr"
    assert invoke("import-yt8m", VIDEO, "--out", store_path, "--no-progress").exit_code == 0
    assert invoke("export-yt8m", store_path, "--out", tmp_path / "e").exit_code == 0
    exported = _read_dir(tmp_path / "e")
    arrays = expected_arrays()
    for want in _tf_videos(VIDEO):
        _, video = exported[want["id"]]
        assert list(video.labels) == want["labels"]
        np.testing.assert_array_equal(
            video.features["rgb"], arrays[f"{key(VIDEO)}/{want['id']}/mean_rgb"]
        )
    # A frame store exported at video level: means of the dequantized frames.
    frames = tmp_path / "f.zarr"
    assert invoke("import-yt8m", FRAME, "--out", frames, "--no-progress").exit_code == 0
    result = invoke("export-yt8m", frames, "--out", tmp_path / "m", "--level", "video")
    assert result.exit_code == 0, result.output
    _, video = _read_dir(tmp_path / "m")["Qq00"]
    want = arrays[f"{key(FRAME)}/Qq00/rgb_dequantized"].mean(axis=0)
    np.testing.assert_allclose(video.features["rgb"], want, rtol=1e-6)
    refused = invoke("export-yt8m", store_path, "--out", tmp_path / "x", "--level", "frame")
    assert refused.exit_code == 2 and "no frames" in refused.output


def frame_file_bytes(tag: str, source: Path = FRAME) -> bytes:
    """A TensorFlow-written file with every video id suffixed by ``tag`` (distinct videos)."""
    out = io.BytesIO()
    renamed = []
    for record in read_records(io.BytesIO(source.read_bytes())):
        message = SequenceExample.FromString(record)
        ids = message.context.feature["id"].bytes_list.value
        ids[0] = ids[0] + tag.encode()
        renamed.append(message.SerializeToString())
    write_records(out, renamed)
    return out.getvalue()


def _broken_inputs(directory: Path) -> None:
    shutil.copy(FRAME, directory / "train0000.tfrecord")
    bad = bytearray(frame_file_bytes("-b"))
    start, _ = record_spans(bytes(bad))[1]
    bad[start + 12 + 50] ^= 0x04  # record 1's payload: its checksum fails
    (directory / "train0001.tfrecord").write_bytes(bytes(bad))
    cut = frame_file_bytes("-c")
    (directory / "train0002.tfrecord").write_bytes(cut[: record_spans(cut)[2][0] + 30])
    (directory / "train0003.tfrecord").write_text("Index,Name\n0,Game\n")
    (directory / "train0004.tfrecord").write_bytes(b"")


def _failed_by_file(store_path: Path) -> dict[str, str]:
    with open_store(store_path) as store:
        failed = store.videos[store.videos["status"] != "ok"]
    assert all(failed["reason"]), failed
    return {Path(src).name: status for src, status in failed[["source_path", "status"]].values}


def _ok_ids(store_path: Path) -> set[str]:
    with open_store(store_path) as store:
        return set(store.ok_ids)


def test_files_that_end_early_are_left_out_and_read_again_once_whole(tmp_path):
    # An interrupted download (cut short, empty, an error page saved in its place) got rows:
    # the rerun skipped the file for good, and the records after the cut never came in.
    inputs = tmp_path / "in"
    inputs.mkdir()
    _broken_inputs(inputs)
    store_path = tmp_path / "s.zarr"
    result = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert result.exit_code == 1, result.output
    assert "2 files imported, 0 already done: 5 videos" in result.output
    assert (
        "4 failed" in result.output and "train0002.tfrecord record 2 (truncated)" in result.output
    )
    assert _ok_ids(store_path) == {"Ab1c", "zZ9y", "Qq00", "Ab1c-b", "Qq00-b"}
    assert _failed_by_file(store_path) == {"train0001.tfrecord": "bad_crc"}  # a record's damage
    again = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert again.exit_code == 1, again.output
    assert "0 files imported, 2 already done: 0 videos" in again.output
    assert "3 failed" in again.output
    # The downloads finished: the rerun imports each whole.
    (inputs / "train0002.tfrecord").write_bytes(frame_file_bytes("-c"))
    (inputs / "train0003.tfrecord").write_bytes(frame_file_bytes("-d"))
    (inputs / "train0004.tfrecord").write_bytes(frame_file_bytes("-e"))
    done = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert done.exit_code == 0, done.output
    assert "3 files imported, 2 already done: 9 videos" in done.output
    assert _ok_ids(store_path) == {
        f"{v}{tag}" for v in ("Ab1c", "zZ9y", "Qq00") for tag in ("", "-c", "-d", "-e")
    } | {"Ab1c-b", "Qq00-b"}
    assert _failed_by_file(store_path) == {"train0001.tfrecord": "bad_crc"}


def test_failures_of_files_left_out_are_not_said_to_be_in_the_store(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(FRAME, inputs / "train0000.tfrecord")
    for i in range(12):  # downloads not begun: more failures than the summary lists
        (inputs / f"train1{i:03d}.tfrecord").write_bytes(b"")
    store_path = tmp_path / "s.zarr"
    result = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert result.exit_code == 1, result.output
    assert "1 files imported, 0 already done: 3 videos" in result.output
    assert "not the 12 of inputs left out to be read again" in result.output
    assert _failed_by_file(store_path) == {}


def test_keep_partial_records_the_damage_and_a_rerun_adds_nothing(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _broken_inputs(inputs)
    store_path = tmp_path / "s.zarr"
    args = ("import-yt8m", inputs, "--out", store_path, "--no-progress", "--keep-partial")
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "5 files imported, 0 already done: 7 videos" in result.output
    assert "4 failed" in result.output
    assert _ok_ids(store_path) == {"Ab1c", "zZ9y", "Qq00", "Ab1c-b", "Qq00-b", "Ab1c-c", "zZ9y-c"}
    assert _failed_by_file(store_path) == {
        "train0001.tfrecord": "bad_crc",
        "train0002.tfrecord": "truncated",
        "train0003.tfrecord": "not_tfrecord",
        "train0004.tfrecord": "empty",
    }
    with open_store(store_path) as store:
        rows = len(store.videos)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "0 files imported, 5 already done: 0 videos" in again.output
    with open_store(store_path) as store:
        assert len(store.videos) == rows


def test_a_run_with_no_readable_video_says_nothing_was_written(tmp_path):
    # The store's streams come from the first video read: with none, there is no store, and
    # the summary must not claim files were imported.
    inputs = tmp_path / "in"
    inputs.mkdir()
    _broken_inputs(inputs)
    for name in ("train0000", "train0001", "train0002"):  # the files with a good record
        (inputs / f"{name}.tfrecord").unlink()
    for i in range(10):  # more failures than the summary shows
        (inputs / f"train1{i:03d}.tfrecord").write_bytes(b"")
    store_path = tmp_path / "s.zarr"
    result = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert result.exit_code == 1, result.output
    assert "no video could be read from 12 file(s): nothing was written" in result.output
    assert "files imported" not in result.output and not store_path.exists()
    assert "failed: " in result.output and "not_tfrecord" in result.output
    assert "(not_tfrecord): " in result.output  # with the reason, not the status alone
    # The rest cannot be looked up in a store that was never made.
    assert "... and 2 more (not listed: no store was written" in result.output
    assert "vidfeat info" not in result.output


ROOT = Path(__file__).resolve().parents[3]


def _import_cmd(inputs: Path, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "vidfeat_cli.vidfeat", "import-yt8m", str(inputs),
        "--out", str(store), "--no-progress",
    ]  # fmt: skip


def _committed_files(store: Path) -> int:
    if not (store / "zarr.json").exists():
        return 0
    with open_store(store) as r:
        return r.videos["source_path"].nunique()


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 130), (signal.SIGINT, 130)],
)
def test_killed_import_resumes_to_the_uninterrupted_result(tmp_path, sig, code):
    inputs, n = tmp_path / "in", 5
    inputs.mkdir()
    for i in range(n - 1):
        (inputs / f"train{i:04d}.tfrecord").write_bytes(frame_file_bytes(f"-{i}"))
    last = inputs / f"train{n - 1:04d}.tfrecord"
    # A FIFO as the last file: the import blocks opening it, after committing the others, so
    # the kill lands at a known point without timing.
    os.mkfifo(last)
    store = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _import_cmd(inputs, store), cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while _committed_files(store) < n - 1:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the import never committed its files"
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    if code == 130:
        assert "rerun" in err
    with open_store(store) as r:
        assert len(r.videos) == 3 * (n - 1) and (r.videos["status"] == "ok").all()
    last.unlink()
    last.write_bytes(frame_file_bytes(f"-{n - 1}"))
    rerun = subprocess.run(
        _import_cmd(inputs, store), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"1 files imported, {n - 1} already done: 3 videos" in rerun.stdout
    reference = tmp_path / "reference.zarr"
    assert invoke("import-yt8m", inputs, "--out", reference, "--no-progress").exit_code == 0
    with open_store(store) as r, open_store(reference) as ref:
        assert len(r.videos) == len(ref.videos) == 3 * n
        assert sorted(r.ok_ids) == sorted(ref.ok_ids)
        for vid in ref.ok_ids:
            for stream in ("rgb", "audio"):
                np.testing.assert_array_equal(
                    r.read(vid, stream=stream, raw=True), ref.read(vid, stream=stream, raw=True)
                )


def test_workers_and_shards_fill_one_store(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        (inputs / f"validate{i:04d}.tfrecord").write_bytes(frame_file_bytes(f"-{i}", SEGMENT))
    store = tmp_path / "s.h5"
    for shard in ("0/2", "1/2"):
        result = invoke(
            "import-yt8m", inputs, "--out", store, "--shard", shard, "--workers", 2,
            "--no-progress",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    with open_store(store) as r:
        assert len(r.videos) == 12 and r.videos["part"].nunique() == 2
        assert set(r.videos["split"]) == {"val", "test"}
    assert len(read_segments(store)) == 6 * 3


def test_split_comes_from_the_option_when_names_do_not_tell(tmp_path):
    shutil.copy(FRAME, tmp_path / "frames.tfrecord")
    store = tmp_path / "s.zarr"
    refused = invoke("import-yt8m", tmp_path / "frames.tfrecord", "--out", store)
    assert refused.exit_code == 2 and "give --split" in refused.output
    assert not store.exists()
    args = ["--split", "validate", "--no-progress"]
    assert invoke("import-yt8m", tmp_path / "frames.tfrecord", "--out", store, *args).exit_code == 0
    with open_store(store) as r:
        assert set(r.videos["split"]) <= {"val", "test"} and len(r.videos) == 3


def test_remote_paths_import_through_fsspec(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/frame/train0000.tfrecord", FRAME.read_bytes())
    fs.pipe("/bucket/frame/validate0000.tfrecord", SEGMENT.read_bytes())
    store = tmp_path / "s.zarr"
    result = invoke("import-yt8m", "memory://bucket/frame/*.tfrecord", "--out", store)
    assert result.exit_code == 0, result.output
    with open_store(store) as r:
        assert len(r.ok_ids) == 5
        assert all(s.startswith("memory:///bucket/frame/") for s in r.videos["source_path"])
    assert len(read_segments(store)) == 3


def test_extracted_store_exports_for_yt8m_readers(tmp_path):
    from vidfeat import create_store
    from vidfeat.audio.postprocess import quantization_attrs as vggish_quantization
    from vidfeat.pca.quantize import quantization_attrs

    # What `vidfeat extract --pca ... --quantize --audio vggish --audio-pca ...` writes: the
    # audio stream's codes are VGGish's (floored), which frame-level export once refused.
    rng = np.random.default_rng(3)
    codes = {f"clip{i}": rng.integers(0, 256, (4 + i, 1024), dtype=np.uint8) for i in range(3)}
    sound = {v: rng.integers(0, 256, (len(c), 128), dtype=np.uint8) for v, c in codes.items()}
    labels = {"clip0": ["dog"], "clip1": ["cat", "dog"], "clip2": ["cat"]}
    store = tmp_path / "feats1024.zarr"
    spec = {"dim": 1024, "dtype": "uint8", "quantization": quantization_attrs()}
    audio = {"dim": 128, "dtype": "uint8", "quantization": vggish_quantization()}
    with create_store(store, streams={"rgb": spec, "audio": audio}) as w:
        for vid, c in codes.items():
            w.write(vid, {"rgb": c, "audio": sound[vid]}, labels=labels[vid], split="train")
    result = invoke("export-yt8m", store, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    exported = _read_dir(tmp_path / "out")
    vocab = read_vocabulary(str(tmp_path / "out" / "vocabulary.csv"))
    assert vocab.indices == {"cat": 0, "dog": 1}
    for vid, (name, video) in exported.items():
        assert name == "train0000.tfrecord"
        assert video.features["rgb"].tobytes() == codes[vid].tobytes()
        assert video.features["audio"].tobytes() == sound[vid].tobytes()
        assert sorted(vocab.name(i) for i in video.labels) == sorted(labels[vid])

    floats = tmp_path / "float.zarr"
    with create_store(floats, streams={"rgb": 8}) as w:
        w.write("a", {"rgb": np.zeros((2, 8), np.float32)})
    refused = invoke("export-yt8m", floats, "--out", tmp_path / "x")
    assert refused.exit_code == 2 and "--quantize" in refused.output
    # Other sizes than the released data's export (YouTube-8M's code reads them with
    # --feature_sizes), with a warning that import-yt8m will not read them back.
    small = tmp_path / "small.zarr"
    with create_store(small, streams={"rgb": 8}) as w:
        w.write("a", {"rgb": np.ones((2, 8), np.float32)}, labels=["cat"])
    result = invoke("export-yt8m", small, "--out", tmp_path / "y", "--level", "video")
    assert result.exit_code == 0, result.output
    assert "rgb 8-d (released: 1024)" in result.output and "--feature_sizes" in result.output


def test_failures_are_named_by_their_record_not_their_place_among_videos(tmp_path):
    # [A, A with a bad checksum, A again]: the duplicate was named "#1", its place among the
    # parsed videos, the id of record 1's failure too; the import stopped half-committed.
    first = next(iter(read_records(io.BytesIO(FRAME.read_bytes()))))
    out = io.BytesIO()
    write_records(out, [first, first, first])
    data = bytearray(out.getvalue())
    start, _ = record_spans(bytes(data))[1]
    data[start + 12 + 50] ^= 0x04
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "train0000.tfrecord").write_bytes(bytes(data))
    store_path = tmp_path / "s.zarr"
    result = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert result.exit_code == 1, result.output
    with open_store(store_path) as store:
        failed = store.videos[store.videos["status"] != "ok"]
        rows = zip(failed["video_id"], failed["status"], strict=True)
        by_record = {video_id.rsplit("#", 1)[1]: status for video_id, status in rows}
        assert by_record == {"1": "bad_crc", "2": "duplicate"}
        assert len(store.ok_ids) == 1


def _frame_records(videos: list[tuple[str, tuple[str, ...]]]) -> list[bytes]:
    """Frame-level records of 3 frames: (id, the streams it has)."""
    from vidfeat.yt8m.schema import STREAM_DIMS, Yt8mVideo, encode_record

    return [
        encode_record(
            Yt8mVideo(
                vid,
                (1,),
                "frame",
                {s: np.full((3, STREAM_DIMS[s]), 7, np.uint8) for s in streams},
            )
        )
        for vid, streams in videos
    ]


def test_one_odd_first_record_does_not_decide_the_stores_streams(tmp_path):
    # Record 0 has rgb only, records 1-4 rgb and audio: the store was made rgb-only from the
    # first record, the four others failed as wrong_streams, and reruns skipped the file.
    both = ("rgb", "audio")
    records = _frame_records([("odd", ("rgb",)), *((f"v{i}", both) for i in range(4))])
    inputs = tmp_path / "in"
    inputs.mkdir()
    with (inputs / "train0000.tfrecord").open("wb") as fh:
        write_records(fh, records)
    store_path = tmp_path / "s.zarr"
    result = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert result.exit_code == 1, result.output
    assert "1 files imported, 0 already done: 4 videos, 12 frames" in result.output
    assert "records of 2 layouts" in result.output
    with open_store(store_path) as store:
        assert list(store.streams) == ["rgb", "audio"]
        assert sorted(store.ok_ids) == ["v0", "v1", "v2", "v3"]
        failed = store.videos[store.videos["status"] != "ok"]
        assert failed["video_id"].str.endswith("train0000.tfrecord#0").tolist() == [True]
        assert failed["status"].tolist() == ["wrong_streams"]
        assert failed["reason"].str.startswith("odd: streams ['rgb']").tolist() == [True]


def test_a_file_repeating_an_id_counts_the_copy_it_imported(tmp_path):
    both = ("rgb", "audio")
    inputs = tmp_path / "in"
    inputs.mkdir()
    with (inputs / "train0000.tfrecord").open("wb") as fh:
        write_records(fh, _frame_records([("a", both), ("b", both), ("a", both)]))
    store_path = tmp_path / "s.zarr"
    result = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert result.exit_code == 1, result.output
    # "1 videos, 3 frames" before: both copies of "a" were taken off, the imported one too.
    assert "1 files imported, 0 already done: 2 videos, 6 frames" in result.output
    with open_store(store_path) as store:
        assert sorted(store.ok_ids) == ["a", "b"]


def _video_level_file(path: Path, videos: list[tuple[str, tuple[int, ...], float]]) -> None:
    """A video-level TFRecord file: (id, labels, value of every mean_rgb/mean_audio entry)."""
    from vidfeat.yt8m.schema import Yt8mVideo, encode_record

    records = []
    for vid, labels, value in videos:
        means = {s: np.full(d, value, np.float32) for s, d in (("rgb", 1024), ("audio", 128))}
        records.append(encode_record(Yt8mVideo(vid, labels, "video", means)))
    with path.open("wb") as fh:
        write_records(fh, records)


def test_records_the_store_refuses_fail_alone_and_their_file_comes_in_whole(tmp_path):
    # A NaN mean or a blank id passed the importer's checks and was refused by the store
    # writer: the import stopped with the file half-committed, and the rerun skipped the file,
    # so its later videos never came in. A negative label once exported as another class.
    inputs = tmp_path / "in"
    inputs.mkdir()
    videos = [("g1", (1,), 0.5), ("nan", (2,), np.nan), (" ", (3,), 0.1), ("neg", (-1,), 0.2)]
    _video_level_file(inputs / "train0000.tfrecord", [*videos, ("g2", (4,), 0.25)])
    store_path = tmp_path / "s.zarr"
    result = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert result.exit_code == 1, result.output
    with open_store(store_path) as store:
        assert sorted(store.ok_ids) == ["g1", "g2"]
        failed = store.videos[store.videos["status"] != "ok"].sort_values("video_id")
        assert failed["status"].tolist() == ["bad_example", "bad_example", "bad_label"]
        reasons = " | ".join(failed["reason"])
        assert "non-finite values in audio, rgb" in reasons and "must be a non-empty" in reasons
        assert "negative label indices [-1]" in reasons
    again = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert again.exit_code == 0 and "0 files imported, 1 already done" in again.output


def test_a_file_reached_by_another_spelling_of_its_path_is_not_imported_twice(tmp_path):
    # The resume key was the path as typed: "in//x", "a/../in/x" or a symlinked folder read
    # the same file again, every video of it a "duplicate" failure.
    inputs = tmp_path / "in"
    inputs.mkdir()
    _video_level_file(inputs / "train0000.tfrecord", [("a", (1,), 0.5)])
    (tmp_path / "link").symlink_to(inputs)
    store_path = tmp_path / "s.zarr"
    assert invoke("import-yt8m", inputs, "--out", store_path, "--no-progress").exit_code == 0
    for spelling in (f"{inputs}//train0000.tfrecord", tmp_path / "link", tmp_path / "in/../in"):
        again = invoke("import-yt8m", spelling, "--out", store_path, "--no-progress")
        assert again.exit_code == 0 and "0 files imported, 1 already done" in again.output
    with open_store(store_path) as store:
        assert len(store.videos) == 1
    # Only the folder is resolved: a link named for its split keeps that name when its target
    # is a content-addressed blob (as in hub caches and annexes).
    blobs, links = tmp_path / "blobs", tmp_path / "links"
    blobs.mkdir()
    links.mkdir()
    _video_level_file(blobs / "9f86d081", [("b", (2,), 0.5)])
    (links / "validate0000.tfrecord").symlink_to(blobs / "9f86d081")
    linked = invoke("import-yt8m", links, "--out", tmp_path / "l.zarr", "--no-progress")
    assert linked.exit_code == 0, linked.output
    with open_store(tmp_path / "l.zarr") as store:
        assert store.videos["source_path"].str.endswith("/links/validate0000.tfrecord").all()
    # A store begun before this recorded the path as typed (here through the link): resumed,
    # its files are still found done.
    from vidfeat import create_store
    from vidfeat.yt8m.importer import store_attrs, store_streams

    old = tmp_path / "old.zarr"
    streams = store_streams("video", ["rgb", "audio"])
    with create_store(old, streams=streams, level="video", attrs=store_attrs(None, "video")) as w:
        means = {"rgb": np.full(1024, 0.5), "audio": np.full(128, 0.5)}
        typed = f"file://{tmp_path}/link/train0000.tfrecord"
        w.write("a", means, labels=["1"], source_path=typed, split="train")
    resumed = invoke("import-yt8m", tmp_path / "link", "--out", old, "--no-progress")
    assert resumed.exit_code == 0 and "0 files imported, 1 already done" in resumed.output


def test_an_extracted_stores_video_names_do_not_pick_the_export_split(tmp_path):
    # "testimony.mp4" (train) was exported into test0000.tfrecord and "training_day.mp4" (val)
    # into train0000.tfrecord: file-name prefixes mean a split only for imported stores.
    from vidfeat import create_store

    store = tmp_path / "feats.zarr"
    spec = {
        "dim": 1024,
        "dtype": "uint8",
        "quantization": {"scheme": "yt8m_uint8", "min": -2.0, "max": 2.0},
    }
    with create_store(store, streams={"rgb": spec}) as w:
        codes = np.zeros((2, 1024), np.uint8)
        w.write("a", {"rgb": codes}, labels=["1"], split="train", source_path="testimony.mp4")
        w.write("b", {"rgb": codes}, labels=["2"], split="val", source_path="training_day.mp4")
    assert invoke("export-yt8m", store, "--out", tmp_path / "out").exit_code == 0
    exported = _read_dir(tmp_path / "out")
    assert {vid: name for vid, (name, _) in exported.items()} == {
        "a": "train0000.tfrecord",
        "b": "validate0000.tfrecord",
    }


def test_a_sigkilled_import_leaves_no_worker_behind(tmp_path):
    # Its --workers processes lived on (here, blocked opening a FIFO for ever): a parent
    # killed with SIGKILL runs no cleanup, so the kernel must end them.
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        os.mkfifo(inputs / f"train{i:04d}.tfrecord")
    cmd = [*_import_cmd(inputs, tmp_path / "s.zarr"), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no workers started"
            time.sleep(0.2)
            table = process_table().items()
            workers = [p for p, (pp, c) in table if pp == proc.pid and b"spawn_main" in c]
        time.sleep(1.0)  # into read_file, blocked on the FIFOs
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if running(p)], "workers outlived the import"
    finally:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_exporting_over_an_earlier_export_is_refused(tmp_path):
    # Files of the same names were replaced and the others kept, mixing two exports.
    from vidfeat import create_store

    store = tmp_path / "v.zarr"
    with create_store(store, streams={"rgb": 1024, "audio": 128}, level="video") as w:
        w.write("a", {"rgb": np.zeros(1024), "audio": np.zeros(128)}, labels=["1"])
    out = tmp_path / "out"
    assert invoke("export-yt8m", store, "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = invoke("export-yt8m", store, "--out", out)
    assert again.exit_code == 2 and "already holds an export" in again.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_write_failing_mid_file_leaves_none_of_the_file(tmp_path, monkeypatch):
    # The store refusing a record the importer let through (no such record is known now, so a
    # fault is injected) committed the file's earlier videos, and the rerun skipped the file.
    from vidfeat.errors import ConfigError
    from vidfeat.store.writer import StoreWriter

    inputs = tmp_path / "in"
    inputs.mkdir()
    _video_level_file(inputs / "train0000.tfrecord", [(v, (1,), 0.5) for v in ("a", "b", "c")])
    write = StoreWriter.write

    def refuse_b(self, video_id, *args, **kwargs):
        if video_id == "b":
            raise ConfigError("refused by the store")
        return write(self, video_id, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "write", refuse_b)
    store_path = tmp_path / "s.zarr"
    failed = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert failed.exit_code == 2 and "refused by the store" in failed.output
    with open_store(store_path) as store:
        assert store.videos.empty
    monkeypatch.setattr(StoreWriter, "write", write)
    again = invoke("import-yt8m", inputs, "--out", store_path, "--no-progress")
    assert again.exit_code == 0 and "1 files imported, 0 already done: 3 videos" in again.output
