"""The commands on stores and videos in S3 (moto's server): extract, info, verify, pca, heads.

Each runs against an ``s3://`` URL and is compared with the same command on local files.
Endpoint and credentials come only from the environment (see tests/s3_server.py).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from heads.synthetic import write_order_store
from tests.ports import free_port
from tests.s3_server import SECRET_KEY, s3, s3_endpoint  # noqa: F401 - fixtures
from vidfeat import open_store
from vidfeat.location import RemotePath
from vidfeat_cli.heads import main as heads_main
from vidfeat_cli.vidfeat import main as vidfeat_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = ("--epochs", "2", "--hidden-size", "8", "--fc-size", "8", "--seed", "3")


def invoke(main, *args: object):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def assert_no_secret(url: str, output: str) -> None:
    assert SECRET_KEY not in output
    fs, key = RemotePath(url).filesystem()
    for prefix in (key, key + ".locks", key + ".parts"):
        for obj in fs.find(prefix):
            assert SECRET_KEY.encode() not in fs.cat_file(obj), obj


# ------------------------------------------------------------------------------ heads
def test_heads_train_and_evaluate_from_s3_equal_local(s3, tmp_path: Path) -> None:  # noqa: F811
    bucket = s3.bucket()
    remote, local = f"{bucket}/order.zarr", tmp_path / "order.zarr"
    for where in (remote, local):
        write_order_store(where, 24, dim=16, min_len=8, max_len=16)
    runs = {}
    # The S3 run reads in DataLoader workers (each opens the store); results do not depend on it.
    for name, store, workers in (("s3", remote, 1), ("local", local, 0)):
        out = tmp_path / f"run-{name}"
        args = ("-m", "bilstm", "-o", out, "--num-workers", workers, *SMALL)
        result = invoke(heads_main, "-v", "train", store, *args)
        assert result.exit_code == 0, result.output
        assert SECRET_KEY not in result.output
        runs[name] = out
    metrics = {n: json.loads((r / "test_metrics.json").read_text()) for n, r in runs.items()}
    for m in metrics.values():
        m.pop("train_wall_s")  # the only field that may differ: time
    assert metrics["s3"] == metrics["local"]
    config = json.loads((runs["s3"] / "config.json").read_text())
    assert config["store"]["path"] == remote  # the URL, not a folded local path
    # evaluate finds the training store by its URL; a store of other features is refused.
    result = invoke(heads_main, "evaluate", runs["s3"], "--json")
    assert result.exit_code == 0, result.output
    # As a command of its own (its DataLoader worker logs to the real stderr): the worker's
    # inherited copy of the S3 client is not reported as an "Unclosed client session" error.
    done = subprocess.run(
        [sys.executable, "-m", "vidfeat_cli.heads", "evaluate", str(runs["s3"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "test on s3://" in done.stdout, done.stderr
    assert "ERROR" not in done.stderr and "Unclosed" not in done.stderr, done.stderr
    other = f"{bucket}/other.zarr"
    write_order_store(other, 8, dim=12, min_len=8, max_len=16)
    result = invoke(heads_main, "evaluate", runs["s3"], "--store", other)
    assert result.exit_code == 2 and "dim" in result.output, result.output


def test_info_verify_and_pca_on_s3(s3, tmp_path: Path) -> None:  # noqa: F811
    store = f"{s3.bucket()}/order.zarr"
    write_order_store(store, 8, dim=16, min_len=8, max_len=16)
    result = invoke(vidfeat_main, "info", store, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["path"] == store and summary["videos"] == 8, summary
    assert invoke(vidfeat_main, "verify", store).exit_code == 0
    pca = tmp_path / "pca.npz"
    result = invoke(vidfeat_main, "pca", "fit", store, "--dim", "4", "--out", pca)
    assert result.exit_code == 0, result.output
    reduced = store.replace("order.zarr", "reduced.zarr")
    result = invoke(vidfeat_main, "pca", "apply", store, "--pca", pca, "--out", reduced)
    assert result.exit_code == 0, result.output
    with open_store(reduced) as r:
        assert r.dim == 4 and len(r.ok_ids) == 8
        assert r.attrs["parent_store"]["path"] == store


# ------------------------------------------------------------------------------ extract
def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "path", "labels"])
        w.writerows(rows)
    return path


@pytest.mark.slow
def test_extract_s3_videos_into_s3_equals_local(s3, make_video, tmp_path: Path) -> None:  # noqa: F811
    clip = make_video("s3_clip.mp4", seconds=1.5, fps=12)
    bucket = s3.bucket()
    fs, key = RemotePath(f"{bucket}/videos/clip.mp4").filesystem()
    fs.put_file(str(clip), key)
    local = write_manifest(tmp_path / "local.csv", [("clip", str(clip), "a")])
    remote = write_manifest(
        tmp_path / "remote.csv",
        [
            ("clip", f"{bucket}/videos/clip.mp4", "a"),
            ("gone", f"{bucket}/videos/gone.mp4", "a"),
            ("folder", f"{bucket}/videos", "a"),  # a prefix reads as an empty object
        ],
    )
    store, local_store = f"{bucket}/feats.zarr", tmp_path / "feats.zarr"
    args = ("--device", "cpu", "--no-progress", "--timeout", "120")
    result = invoke(vidfeat_main, "-v", "extract", remote, "--out", store, *args)
    assert result.exit_code == 1, result.output  # "gone" and "folder" failed, recorded
    assert "DEBUG" in result.output  # debug logs were on, and hold no secret
    assert_no_secret(store, result.output)
    result = invoke(vidfeat_main, "extract", local, "--out", local_store, *args)
    assert result.exit_code == 0, result.output
    with open_store(store) as r, open_store(local_store) as lr:
        assert r.ok_ids == ["clip"]
        gone = r.videos.set_index("video_id").loc["gone"]
        assert gone["status"] == "missing" and gone["source_path"].startswith("s3://")
        folder = r.videos.set_index("video_id").loc["folder"]
        assert folder["status"] == "not_video" and "is a prefix" in folder["reason"], folder
        np.testing.assert_array_equal(r.read("clip"), lr.read("clip"))
        np.testing.assert_array_equal(r.timestamps("clip"), lr.timestamps("clip"))
    # A rerun resumes (every video is done, two as recorded failures); other settings are
    # refused.
    result = invoke(vidfeat_main, "extract", remote, "--out", store, *args)
    assert result.exit_code == 1, result.output  # "gone" is still a failure of this job
    assert "3 already done (2 of them failed)" in result.output
    result = invoke(vidfeat_main, "extract", remote, "--out", store, "--fps", "2", *args)
    assert result.exit_code == 2 and "fps: store has '1', this run has '2'" in result.output


# ------------------------------------------------------------------------------ import-yt8m
def test_import_yt8m_into_s3_equals_local(s3, tmp_path: Path) -> None:  # noqa: F811
    from tests.vidfeat.yt8m.helpers import FRAME, SEGMENT, VOCABULARY
    from vidfeat.yt8m.segments import read_segments

    remote, local = f"{s3.bucket()}/yt8m.zarr", tmp_path / "yt8m.zarr"
    for out in (remote, local):
        args = ("import-yt8m", FRAME, SEGMENT, "--out", out, "--vocabulary", VOCABULARY)
        result = invoke(vidfeat_main, *args, "--no-progress")
        assert result.exit_code == 0, result.output
    with open_store(remote) as r, open_store(local) as lr:
        assert r.ok_ids == lr.ok_ids and len(r.ok_ids) > 0
        cols = ["video_id", "labels", "split", "source_path"]
        assert r.videos[cols].equals(lr.videos[cols])
        for vid in r.ok_ids:
            for stream in r.streams:
                np.testing.assert_array_equal(
                    r.read(vid, stream, raw=True), lr.read(vid, stream, raw=True)
                )
    segments = read_segments(remote)
    assert len(segments) > 0 and segments.equals(read_segments(local))
    # A rerun skips every file already imported.
    args = ("import-yt8m", FRAME, SEGMENT, "--out", remote, "--vocabulary", VOCABULARY)
    result = invoke(vidfeat_main, *args, "--no-progress")
    assert result.exit_code == 0, result.output
    with open_store(remote) as r:
        assert len(r.videos) == len(lr.videos)


# ------------------------------------------------------------------------------ environment


@pytest.mark.parametrize(
    ("broken", "said"),
    [("no credentials", "credentials"), ("no endpoint", "endpoint"), ("https to http", "ssl")],
)
def test_a_wrong_object_store_environment_cannot_run(s3, tmp_path: Path, broken, said) -> None:  # noqa: F811
    # The user's environment, not a bug: exit 2 and one line saying where settings come from.
    store = f"{s3.bucket()}/s.zarr"
    write_order_store(store, 4, dim=4, min_len=2, max_len=3)
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true"}
    if broken == "no credentials":
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    elif broken == "no endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    else:  # TLS to a plain-HTTP server (or a certificate not trusted): was "operation not
        # permitted", OpenSSL's error code 1 read as the system's EPERM
        env["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL"].replace("http://", "https://")
    commands = (
        ["vidfeat_cli.vidfeat", "info", store],
        ["vidfeat_cli.heads", "train", store, "-m", "logistic", "-o", tmp_path / "run"],
    )
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", *map(str, command)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: object store: "), done.stderr
        assert said in lines[0].lower(), lines[0]
        assert "not permitted" not in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_store_in_a_bucket_that_does_not_exist_says_so(s3) -> None:  # noqa: F811
    store = f"s3://no-such-bucket-{os.getpid()}/s.zarr"
    for command in (["info", store], ["verify", store]):
        result = CliRunner().invoke(vidfeat_main, command)
        assert result.exit_code == 2, result.output
        assert f"no feature store at {store}: bucket 'no-such-bucket-" in result.output
