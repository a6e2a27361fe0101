"""The decode pool: streamed chunks, typed failures, and survival of hung or crashed workers."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.vidfeat.pool_helpers import ENV_MARK, env_mark, torch_loaded, upscale_299
from vidfeat.decode import open_video
from vidfeat.decode.pool import (
    DecodePool,
    FramesChunk,
    VideoDone,
    VideoFailed,
    start_fork_server,
)
from vidfeat.errors import ConfigError

HELPERS = "tests.vidfeat.pool_helpers"
ROOT = Path(__file__).resolve().parents[2]


def collect(pool, consumer_delay_s=0.0):
    """Run the pool dry: {job_id: [events]} in arrival order."""
    events = defaultdict(list)
    for event in pool.events():
        events[event.job_id].append(event)
        time.sleep(consumer_delay_s)
    return events


def outcome(events):
    """'done' / (status) of a job's last event; chunks must all come before it."""
    *chunks, last = events
    assert all(isinstance(c, FramesChunk) for c in chunks)
    return "done" if isinstance(last, VideoDone) else last.status


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by its parent


def wait_gone(pids, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture(scope="module")
def clips(make_video):
    return {
        "a": make_video("pool_a.mp4", seconds=3.5, fps=30),
        "b": make_video("pool_b.mkv", seconds=2.5, fps=25, vfr=True),
    }


@pytest.fixture
def faulty_copies(tmp_path, clips):
    """Real video files named so the "faulty" test decoder misbehaves on them."""

    def make(*stems):
        paths = {}
        for stem in stems:
            paths[stem] = tmp_path / f"{stem}.mp4"
            shutil.copyfile(clips["a"], paths[stem])
        return paths

    return make


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_streams_transformed_frames_in_small_chunks(clips, decoder):
    with DecodePool(2, decoder, fps=1, max_frames=None, frame_transform=upscale_299,
                    chunk_frames=2, timeout_s=60) as pool:  # fmt: skip
        for job_id, path in clips.items():
            pool.submit(job_id, path)
        events = collect(pool)

    assert set(events) == set(clips)
    for job_id, path in clips.items():
        assert outcome(events[job_id]) == "done"
        *chunks, done = events[job_id]
        assert all(1 <= len(c.frames) <= 2 for c in chunks)
        with open_video(path, decoder) as video:
            direct = list(video.sample(1, None))
        got_ts = np.concatenate([c.timestamps_s for c in chunks])
        got = np.concatenate([c.frames for c in chunks])
        assert got.dtype == np.float32 and got.shape == (len(direct), 299, 299, 3)
        np.testing.assert_array_equal(got_ts, [f.timestamp_s for f in direct])
        np.testing.assert_array_equal(got, np.stack([upscale_299(f.frame) for f in direct]))
        assert done.info["n_frames"] == len(direct)
        assert done.info["decoder"] == decoder
        assert done.info["duration_s"] == pytest.approx(video.decoded_duration_s)


def test_workers_stay_free_of_torch_when_the_parent_uses_it(clips):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)  # threads running in the parent are what makes fork unsafe
    torch.ones(64, 64) @ torch.ones(64, 64)
    with DecodePool(1, "pyav", frame_transform=torch_loaded, timeout_s=60) as pool:
        pool.submit("a", clips["a"])
        chunks = [e for e in collect(pool)["a"] if isinstance(e, FramesChunk)]
    assert chunks and all(not c.frames.any() for c in chunks)


def test_broken_inputs_fail_with_their_status(corrupt_videos):
    with DecodePool(2, "pyav", timeout_s=60) as pool:
        for status, path in corrupt_videos.items():
            pool.submit(status, path)
        events = collect(pool)
    assert {job: outcome(ev) for job, ev in events.items()} == {s: s for s in corrupt_videos}


def test_urls_that_cannot_be_fetched_are_unreadable_and_absent_objects_missing(tmp_path):
    # Nothing listens on the port: the object may exist, the server is out of reach. fsspec
    # reports that as FileNotFoundError; it is no evidence of a missing object.
    from tests.ports import free_port

    with socket.socket() as server:  # an HTTP server that answers 404 to one request
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        gone = f"http://127.0.0.1:{server.getsockname()[1]}/gone.mp4"
        with DecodePool(1, "pyav", timeout_s=60) as pool:
            pool.submit("closed", f"http://127.0.0.1:{free_port()}/v.mp4")
            events = collect(pool)
            pool.submit("gone", gone)
            answered = _answer_404s(server, pool)
    (closed,) = events["closed"]
    assert closed.status == "unreadable" and "could not reach the server" in closed.reason
    assert answered["gone"][-1].status == "missing"


def _answer_404s(server: socket.socket, pool) -> dict:
    """Answer every request on ``server`` with 404 until the pool's jobs are done."""
    import threading

    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        return collect(pool)
    finally:
        stop.set()
        thread.join()


def test_hangs_and_crashes_cost_only_their_video(faulty_copies):
    paths = faulty_copies("ok1", "hang", "spin", "segv", "ok2", "ok3")
    with DecodePool(2, "faulty", timeout_s=1.0, extra_modules=[HELPERS]) as pool:
        for stem in ("ok1", "hang", "spin", "segv", "ok2"):
            pool.submit(stem, paths[stem])
        first_pids = pool.worker_pids
        events = collect(pool)
        results = {job: outcome(ev) for job, ev in events.items()}
        assert results == {
            "ok1": "done",
            "ok2": "done",
            "hang": "timeout",  # asleep: no output for its whole budget
            "spin": "timeout",  # stuck in C holding the GIL: only SIGKILL ends it
            "segv": "crashed",
        }
        assert "SIGSEGV" in events["segv"][-1].reason
        # killed workers were reaped and replaced, and the pool keeps working
        now_pids = pool.worker_pids
        assert len(now_pids) == 2 and all(alive(p) for p in now_pids)
        assert not wait_gone(set(first_pids) - set(now_pids), timeout_s=5)
        pool.submit("ok3", paths["ok3"])
        assert outcome(collect(pool)["ok3"]) == "done"


def test_idle_waits_call_back_while_every_worker_is_busy(faulty_copies):
    # A hung video: no event for seconds. The consumer's on_idle runs meanwhile (the extract
    # loop commits finished videos on time from it), and the hang still times out.
    paths = faulty_copies("hang")
    idle = []
    with DecodePool(1, "faulty", timeout_s=6.0, extra_modules=[HELPERS]) as pool:
        events = list(pool.map([("hang", paths["hang"])], on_idle=lambda: idle.append(1)))
    assert outcome(events) == "timeout" and idle


def test_slow_consumer_never_causes_a_timeout(clips):
    # ~1 MB frames, one per chunk: the worker blocks on every send while the consumer
    # sleeps twice the timeout between reads; a wall clock per video would fire.
    with DecodePool(1, "pyav", fps=1, max_frames=4, frame_transform=upscale_299,
                    chunk_frames=1, timeout_s=0.3) as pool:  # fmt: skip
        pool.submit("a", clips["a"])
        events = collect(pool, consumer_delay_s=0.6)
    assert outcome(events["a"]) == "done"
    assert len(events["a"]) == 4 + 1


def test_a_stall_is_still_caught_with_a_slow_consumer(faulty_copies):
    paths = faulty_copies("stall")
    with DecodePool(1, "faulty", fps=1, frame_transform=upscale_299, chunk_frames=1,
                    timeout_s=0.3, extra_modules=[HELPERS]) as pool:  # fmt: skip
        pool.submit("stall", paths["stall"])
        events = collect(pool, consumer_delay_s=0.6)
    assert [type(e) for e in events["stall"]] == [FramesChunk, VideoFailed]
    assert outcome(events["stall"]) == "timeout"


def test_close_kills_busy_workers(faulty_copies):
    paths = faulty_copies("stallspin")
    pool = DecodePool(1, "faulty", chunk_frames=1, timeout_s=600, extra_modules=[HELPERS])
    pool.submit("x", paths["stallspin"])
    first = next(pool.events())  # the worker now spins forever holding the GIL
    assert isinstance(first, FramesChunk)
    pids = pool.worker_pids
    pool.close()
    assert not wait_gone(pids, timeout_s=5)
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("y", paths["stallspin"])


def test_copies_of_url_videos_go_with_the_workers_killed_on_them(faulty_copies, tmp_path):
    # A worker killed mid-video (its timeout, or close() on Ctrl-C) never ran the clean-up
    # of the local copy of a URL's object: each kill left a whole copy in the temporary folder.
    paths = faulty_copies("hang", "stallspin")
    urls = {stem: path.as_uri() for stem, path in paths.items()}
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp / f"vidfeat-pool-{socket.gethostname()}-{dead}-abc" / f"{dead}-vidfeat-x"
    stale.mkdir(parents=True)  # a SIGKILLed job's
    (stale / "v.mp4").write_bytes(b"copy")
    elsewhere = tmp / f"vidfeat-pool-another-host-{dead}-abc"  # a shared (NFS) folder
    elsewhere.mkdir()
    real_tmp = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    try:
        pool = DecodePool(1, "faulty", chunk_frames=1, timeout_s=3, extra_modules=[HELPERS])
    finally:
        tempfile.tempdir = real_tmp
    try:
        assert not stale.parent.exists()  # its pid is gone, and its workers with it
        assert elsewhere.exists()  # that pid is another host's: not judged here
        (scratch,) = tmp.glob(f"vidfeat-pool-{socket.gethostname()}-*")
        pool.submit("hang", urls["hang"])
        assert outcome(collect(pool)["hang"]) == "timeout"
        assert list(scratch.iterdir()) == []  # the killed worker's copy is gone
        pool.submit("spin", urls["stallspin"])
        assert isinstance(next(pool.events()), FramesChunk)  # now spinning on its copy
        assert [p.name for p in scratch.glob("*/*")] == ["stallspin.mp4"]
    finally:
        pool.close()
    assert list(tmp.glob("vidfeat-pool-*")) == [elsewhere]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and prctl")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_parent_leaves_no_orphan_workers(faulty_copies, sig):
    paths = faulty_copies("stallspin", "stall")
    code = "import sys; from tests.vidfeat.pool_helpers import main; main(sys.argv[1:])"
    parent = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, paths.values())],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        assert ready, "the pool never reported its workers"
        line = parent.stdout.readline()  # printed once both workers are stuck
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        os.kill(parent.pid, sig)
        parent.wait(timeout=30)
        # SIGTERM unwinds through DecodePool.close(); after SIGKILL the kernel's
        # parent-death signal has to do it.
        assert parent.returncode == (128 + sig if sig == signal.SIGTERM else -sig)
        assert not wait_gone(pids)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_invalid_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown decoder"):
        DecodePool(1, "nonexistent")
    with pytest.raises(ConfigError):
        DecodePool(0, "pyav")
    with pytest.raises(ConfigError):
        DecodePool(1, "pyav", timeout_s=0)
    with pytest.raises(ModuleNotFoundError):
        DecodePool(1, "pyav", extra_modules=["tests.no_such_module"])


def test_workers_see_the_environment_of_their_pool_not_of_the_fork_server(clips, monkeypatch):
    """The fork server may start long before a pool (``vidfeat extract`` starts it first
    thing); what the environment holds when the pool is made (e.g. S3 credentials) counts."""
    monkeypatch.delenv(ENV_MARK, raising=False)
    start_fork_server()
    for mark in ("1", "2"):
        monkeypatch.setenv(ENV_MARK, mark)
        with DecodePool(1, fps=1, frame_transform=env_mark, extra_modules=[HELPERS]) as pool:
            pool.submit("a", clips["a"])
            chunks = [e for e in collect(pool)["a"] if isinstance(e, FramesChunk)]
        assert {float(v) for c in chunks for v in c.frames.ravel()} == {float(mark)}
