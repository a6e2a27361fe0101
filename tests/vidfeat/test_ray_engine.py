"""``vidfeat extract --engine ray`` on a real Ray cluster of 2 CPUs that this module starts.

One local-engine run over a small manifest (short clips and two broken files) is the reference;
the Ray runs must give the same store: same rows, same failures with the same reasons, the same
features. A driver killed with SIGKILL mid-job must resume to every video exactly once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.ports import free_port
from tests.procs import process_table
from tests.vidfeat.audio.media_audio import write_media
from tests.vidfeat.test_pipeline import ROOT, run_cli, write_manifest
from vidfeat import open_store
from vidfeat.decode.pool import VideoDone, VideoFailed

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# Columns that must agree between engines (part names differ by design).
COLUMNS = ["status", "reason", "n_frames", "labels", "source_path", "decoder", "duration_s"]


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray cluster on 127.0.0.1 owned by this test process; yields its address."""
    # Short: Ray's socket paths live under it and must fit in 107 bytes.
    temp = tempfile.mkdtemp(prefix="vfray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, make_video, corrupt_videos) -> dict:
    """Six clips of one or two frames at 1 fps (two with a sound track, so both streams are
    compared), a truncated file and a text file; extracted with rgb and audio streams."""
    import torch

    from vidfeat.backbones.vggish import VGGish

    tmp = tmp_path_factory.mktemp("ray")
    torch.manual_seed(1)
    torch.save(VGGish().state_dict(), tmp / "vggish-random.pth")
    rows = [
        (f"r{i}", make_video(f"r{i}.mp4", seconds=0.5 if i % 2 else 1.2, fps=10), "x;y")
        for i in range(4)
    ]
    for i in (4, 5):
        path = tmp / f"r{i}.mp4"
        write_media(path, audio_codec="aac", audio_seconds=1.2, video_seconds=1.2 - 0.6 * (i % 2))
        rows.append((f"r{i}", path, "x"))
    rows += [(f"bad_{s}", corrupt_videos[s], "z") for s in ("truncated", "not_video")]
    manifest = write_manifest(tmp / "m.csv", rows)
    store = tmp / "local.zarr"
    audio = ("--audio", "vggish", "--audio-weights", str(tmp / "vggish-random.pth"))
    code, out = extract(manifest, store, audio)
    assert code == 1, out
    return {"manifest": manifest, "store": store, "tmp": tmp, "audio": audio}


def extract(manifest: Path, store: Path, audio: tuple[str, ...], *extra: str) -> tuple[int, str]:
    return run_cli(
        "extract", str(manifest), "--out", str(store), "--device", "cpu", "--batch-size", "2",
        *audio, *extra,
    )  # fmt: skip


def assert_same_store(path: Path, reference: Path) -> None:
    with open_store(path) as got, open_store(reference) as ref:
        a = got.videos.set_index("video_id").sort_index()
        b = ref.videos.set_index("video_id").sort_index()
        assert list(a.index) == list(b.index)  # every video exactly once
        assert a[COLUMNS].equals(b[COLUMNS]), a[COLUMNS].compare(b[COLUMNS])
        assert got.attrs["backbone"] == ref.attrs["backbone"]
        assert got.streams == ref.streams
        for vid in ref.ok_ids:
            for stream in ref.streams:
                # Batches are composed differently; convolutions may differ in the last bits.
                a, b = got.read(vid, stream), ref.read(vid, stream)
                np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(got.timestamps(vid), ref.timestamps(vid))


def test_ray_store_equals_the_local_store(cluster, reference) -> None:
    store = reference["tmp"] / "ray.zarr"
    args = (reference["manifest"], store, reference["audio"])
    code, out = extract(*args, "--engine", "ray", "--ray-address", cluster)
    assert code == 1, out  # two failed videos, as locally
    assert "6 extracted, 0 already done, 2 failed" in out
    assert "4 extracted without an audio track" in out
    assert_same_store(store, reference["store"])
    with open_store(store) as r:
        assert r.videos.loc[r.videos["video_id"] == "bad_truncated", "status"].item() == "truncated"
        assert all(p.startswith("ray-") for p in r.videos["part"])
    assert run_cli("verify", str(store))[0] == 0
    # A rerun skips everything; other settings are refused before any work starts.
    code, out = extract(*args, "--engine", "ray")
    assert code == 1 and "0 extracted, 8 already done (2 of them failed)" in out, out
    code, out = extract(*args, "--engine", "ray", "--fps", "2")
    assert code == 2 and "fps: store has '1', this run has '2'" in out, out
    assert "Traceback" not in out


def test_ray_options_need_the_ray_engine(reference) -> None:
    code, out = extract(
        reference["manifest"], reference["tmp"] / "x.zarr", (), "--embed-workers", "2"
    )
    assert code == 2 and "need --engine ray" in out, out


def _driver(manifest: Path, store: Path, audio: tuple[str, ...], address: str) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "vidfeat_cli.vidfeat", "extract", str(manifest), "--out",
        str(store), "--device", "cpu", "--batch-size", "2", "--commit-every", "1",
        "--engine", "ray", "--ray-address", address, "--no-progress", *audio,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_until(store: Path, proc: subprocess.Popen, done, limit_s: float = 240):
    """Poll the store until ``done(videos table)`` while the driver runs; the table."""
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        if (store / "zarr.json").exists():
            with open_store(store) as r:
                if done(r.videos):
                    return r.videos
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the driver ended first, or too slow: {proc.communicate()[0]}")


def _descendants_running(word: str) -> list[int]:
    """Processes under this one (the test cluster's) whose command line contains ``word``."""
    procs = process_table()
    mine, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in mine} - mine
        mine |= more
        grew = bool(more)
    return [pid for pid in mine if pid in procs and word.encode() in procs[pid][1]]


def test_lost_worker_then_killed_driver_resume_to_every_video_once(cluster, reference) -> None:
    store = reference["tmp"] / "killed.zarr"
    proc = _driver(reference["manifest"], store, reference["audio"], cluster)
    _wait_until(store, proc, lambda videos: len(videos) >= 1)
    # SIGKILL the embedding worker mid-job: the driver requeues what it had not reported
    # committed and starts another worker, which writes a new part.
    (actor,) = _descendants_running("EmbedWorker")
    os.kill(actor, signal.SIGKILL)
    _wait_until(store, proc, lambda videos: videos["part"].nunique() >= 2)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate(timeout=30)[0]
    assert "an embedding worker died" in output, output
    with open_store(store) as r:
        committed = len(r.videos)
        assert committed < 8  # whole videos only, and not all of them
    code, out = extract(reference["manifest"], store, reference["audio"], "--engine", "ray")
    assert code == 1, out  # the job's two bad videos, whichever run recorded them
    assert committed <= int(re.search(r"(\d+) already done", out)[1]) < 8
    assert_same_store(store, reference["store"])


def test_hung_or_crashing_decoder_in_a_ray_task_costs_one_video(cluster, tmp_path, make_video):
    from vidfeat.engines._ray_workers import DecodeSettings, decode_video

    clip = make_video("r0.mp4", seconds=1.2, fps=10)
    paths = {}
    for stem in ("spin", "segv", "ok"):  # the test decoder misbehaves by file name
        paths[stem] = tmp_path / f"{stem}.mp4"
        shutil.copyfile(clip, paths[stem])
    settings = DecodeSettings(
        "faulty", Fraction(1), 10, None, 2.0, extra_modules=("tests.vidfeat.pool_helpers",)
    )
    task = ray.remote(decode_video).options(num_cpus=1, num_returns=2)
    refs = {stem: task.remote(settings, stem, str(p))[1] for stem, p in paths.items()}
    last = {stem: ray.get(ref)[-1] for stem, ref in refs.items()}
    # Stuck in C holding the GIL: only the wall-clock limit and SIGKILL of the child end it.
    assert isinstance(last["spin"], VideoFailed) and last["spin"].status == "timeout"
    assert isinstance(last["segv"], VideoFailed) and last["segv"].status == "crashed"
    assert "SIGSEGV" in last["segv"].reason
    assert isinstance(last["ok"], VideoDone) and last["ok"].info["n_frames"] == 2


def test_a_requeued_video_already_committed_is_reported_not_written(reference, tmp_path) -> None:
    # An embedding worker that dies right after a commit, before reporting it, has its videos
    # queued again; the worker taking one must report it done (the job used to stop with
    # "already in the store"). Run in this process: the worker is a plain class under Ray.
    from vidfeat.config import ExtractConfig
    from vidfeat.engines._ray_workers import EmbedWorker, store_view
    from vidfeat.engines.ray import _absolute_paths
    from vidfeat.errors import EngineError
    from vidfeat.manifest import read_manifest
    from vidfeat.pipeline import prepare, settle_config_precision

    store = tmp_path / "s.zarr"
    shutil.copytree(reference["store"], store)  # r0..r5 committed, in part main
    audio = dict(zip(("audio", "audio_weights"), reference["audio"][1::2], strict=True))
    cfg = ExtractConfig(manifest=reference["manifest"], out=store, device="cpu", **audio)
    cfg = _absolute_paths(settle_config_precision(dataclasses.replace(cfg, engine="ray")))
    job = prepare(cfg, device="cpu", precision="fp32", runtime="eager")
    worker = EmbedWorker(cfg, job.store_settings, "cpu")
    entry = next(e for e in read_manifest(reference["manifest"]) if e.video_id == "r0")
    reports = worker.add(entry, [])
    reports += worker.finish()
    with open_store(store) as r:
        frames = int(r.videos.set_index("video_id").loc["r0", "n_frames"])
        assert list(r.videos["video_id"]).count("r0") == 1
        assert set(r.videos["part"]) == {"main"}  # nothing written by the worker
    assert [(x.video_id, x.status, x.n_frames) for x in reports] == [("r0", "ok", frames)]
    # Parts sort by when their worker started: readers show the last failure by part name, so
    # a rerun's (--retry-failed) must come after the earlier runs'.
    later = EmbedWorker(cfg, job.store_settings, "cpu")
    assert worker.part < later.part
    # A worker started in a dead one's place is not asked `ready` by the driver: it checks
    # the store it sees against the driver's before its first write.
    elsewhere = {**store_view(cfg), "id": "another store's"}
    stranger = EmbedWorker(cfg, job.store_settings, "cpu", elsewhere)
    with pytest.raises(EngineError, match="this worker sees another store at"):
        stranger.add(entry, [])
    with open_store(store) as r:
        assert set(r.videos["part"]) == {"main"}  # it wrote nothing


def test_embedding_workers_that_take_every_cpu_are_refused_on_a_local_cluster(
    cluster, caplog
) -> None:
    # Each embedding worker holds a CPU for the whole job; with none left no decode task can
    # start, and the driver used to wait forever.
    from vidfeat.engines.ray import _Scheduler
    from vidfeat.errors import ConfigError

    scheduler = object.__new__(_Scheduler)  # only its CPU check: the cluster has 2 CPUs
    scheduler.ray, scheduler.n_actors = ray, 2
    scheduler._check_cpus(1, fixed=True)  # one left for decoding: fine
    with pytest.raises(ConfigError, match="none is left for decode tasks"):
        scheduler._check_cpus(2, fixed=True)
    scheduler._check_cpus(2, fixed=False)  # a cluster that may grow: a warning, not a refusal
    assert "decoding starts once the cluster has more CPUs" in caplog.text


def test_an_unreachable_cluster_is_refused_and_nothing_is_written(reference, tmp_path) -> None:
    # Ray retries an address where nothing listens for many minutes, and the store used to be
    # created first, fixing this run's settings (precision fp32) on a job that never ran.
    address = f"127.0.0.1:{free_port()}"  # nothing answers there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    store = tmp_path / "never.zarr"
    command = [sys.executable, "-m", "vidfeat_cli.vidfeat", "extract", str(reference["manifest"])]
    command += ["--out", str(store), "--engine", "ray", "--no-progress"]
    for extra, more_env in (("--ray-address", {}), (None, {"RAY_ADDRESS": address})):
        args = [*command, extra, address] if extra else command
        done = subprocess.run(
            args, env={**env, **more_env}, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 2, done.stderr
        assert f"cannot reach the Ray cluster at {address}: nothing answers" in done.stderr
        assert not store.exists() and not Path(f"{store}.locks").exists()


def test_urls_stay_urls_for_the_workers(tmp_path) -> None:
    from vidfeat.config import ExtractConfig
    from vidfeat.engines.ray import _absolute, _absolute_paths
    from vidfeat.location import RemotePath

    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels\na,s3://bucket/a.mp4,x\n")
    cfg = ExtractConfig(manifest=manifest, out="s3://bucket/feats.zarr", engine="ray")
    assert str(_absolute_paths(cfg).out) == "s3://bucket/feats.zarr"
    assert str(_absolute(RemotePath("s3://bucket/a.mp4"))) == "s3://bucket/a.mp4"
    assert _absolute(Path("rel/a.mp4")) == Path.cwd() / "rel" / "a.mp4"


def test_workers_that_see_another_store_stop_the_job(cluster, reference) -> None:
    # A worker reads and writes the store with its own environment (the one `ray start` ran
    # with): with another object-store endpoint, or a path not shared between nodes, its
    # videos went to a store the driver never reads, and the job exited 0. A memory:// store
    # lives inside its process: the driver makes one, every worker sees none.
    store = "memory://vfray/s.zarr"
    code, out = extract(
        reference["manifest"], store, (), "--engine", "ray", "--ray-address", cluster
    )
    assert code == 2, out
    assert f"1 of 1 embedding worker(s) see another store at {store} than this driver" in out
    assert "no store there, where this driver sees the store created" in out
    assert "Traceback" not in out
