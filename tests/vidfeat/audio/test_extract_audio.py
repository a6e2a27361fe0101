"""`vidfeat extract --audio vggish`: an "audio" stream beside "rgb", killed and resumed.

Runs the real InceptionV3 for the rgb stream and VGGish with random weights (saved to a
.pth in the published layout) for the audio stream.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.vidfeat.audio.media_audio import write_media
from vidfeat import open_store
from vidfeat.backbones.vggish import VGGish
from vidfeat.store.info import format_summary, store_summary
from vidfeat_cli.vidfeat import main

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("extract_audio")
    torch.manual_seed(1)
    weights = d / "vggish-random.pth"
    torch.save(VGGish().state_dict(), weights)
    rng = np.random.default_rng(2)
    pca = d / "vggish_pca_params.npz"
    np.savez(
        pca,
        pca_eigen_vectors=rng.standard_normal((128, 128)) * 0.02,
        pca_means=rng.standard_normal(128),
    )
    rows = []
    for i in range(8):
        path = d / f"s{i}.mp4"
        write_media(
            path,
            audio_codec="aac",
            rate=44100,
            channels=2,
            audio_seconds=1.5,
            video_seconds=1.5,
            audio_start_s=0.3 * (i % 3),
        )
        rows.append((f"s{i}", path))
    silent = d / "silent.mp4"
    write_media(silent, audio_codec=None, video_seconds=2.0)
    rows.append(("silent", silent))
    manifest = d / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "path", "labels"])
        w.writerows([(vid, str(p), "x") for vid, p in rows])
    args = ["--audio", "vggish", "--audio-weights", str(weights), "--audio-pca", str(pca)]
    return {"dir": d, "manifest": manifest, "args": args, "ids": [v for v, _ in rows]}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--no-progress"])
    return result.exit_code, result.output


def _extract_proc(manifest: Path, store: Path, audio_args: list[str]) -> subprocess.Popen:
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
        "--workers",
        "1",
        "--commit-every",
        "1",
        "--no-progress",
        *audio_args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_commits(store: Path, proc: subprocess.Popen, limit_s: float = 300) -> int:
    deadline = time.time() + limit_s
    while time.time() < deadline and proc.poll() is None:
        if (store / "zarr.json").exists():
            with open_store(store) as r:
                if r.ok_ids:
                    return len(r.ok_ids)
        time.sleep(0.2)
    raise AssertionError(f"no commit before the job ended: {proc.communicate()}")


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted run."""
    store = setup["dir"] / "reference.zarr"
    code, out = _cli(
        "extract", str(setup["manifest"]), "--out", str(store), "--device", "cpu", *setup["args"]
    )
    assert code == 0, out
    assert "1 extracted without an audio track" in out
    return store


def test_killed_extraction_with_audio_resumes_to_the_uninterrupted_result(setup, reference):
    d, manifest, audio_args = setup["dir"], setup["manifest"], setup["args"]
    store = d / "killed.zarr"
    proc = _extract_proc(manifest, store, audio_args)
    _wait_for_commits(store, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    with open_store(store) as r:
        interrupted = set(r.ok_ids)
        assert 1 <= len(interrupted) < len(setup["ids"])
    code, out = _cli("extract", str(manifest), "--out", str(store), "--device", "cpu", *audio_args)
    assert code == 0, out
    assert f"{len(interrupted)} already done" in out
    with open_store(store) as r, open_store(reference) as ref:
        assert sorted(r.ok_ids) == sorted(ref.ok_ids) == sorted(setup["ids"])
        assert set(r.streams) == {"rgb", "audio"}
        for vid in ref.ok_ids:
            got, want = r.read_streams(vid), ref.read_streams(vid)
            assert len(got["audio"]) == len(got["rgb"]) == len(r.timestamps(vid))
            np.testing.assert_allclose(got["rgb"], want["rgb"], rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(got["audio"], want["audio"], rtol=1e-4, atol=1e-4)
        rows = r.videos.set_index("video_id")
        assert rows.loc["silent", "reason"] == "no_audio"
        assert (rows.drop("silent")["reason"] == "").all()
        assert not r.read("silent", "audio").any()  # the PCA-space origin
        assert r.read("s0", "audio").std() > 0


def test_audio_stream_attrs_and_info(setup, reference):
    with open_store(reference) as r:
        spec = r.streams["audio"]
        assert (spec.dim, spec.dtype) == (128, "float32")
        backbone = spec.attrs["backbone"]
        assert backbone["name"] == "vggish" and len(backbone["weights_sha256"]) == 64
        front_end = backbone["front_end"]
        assert (front_end["window_s"], front_end["hop_s"], front_end["mel_bands"]) == (
            0.025,
            0.01,
            64,
        )
        assert len(spec.attrs["pca"]["sha256"]) == 64
    summary = store_summary(reference)
    assert summary["no_audio"] == 1
    assert "1 ok video(s) without an audio track" in format_summary(summary)
    code, out = _cli(
        "extract",
        str(setup["manifest"]),
        "--out",
        str(reference),
        "--device",
        "cpu",
        *setup["args"][:4],
    )  # no --audio-pca: other audio features
    assert code == 2 and "audio" in out


def test_missing_audio_weights_stop_with_the_file_names(setup, tmp_path):
    code, out = _cli(
        "extract",
        str(setup["manifest"]),
        "--out",
        str(tmp_path / "x.zarr"),
        "--device",
        "cpu",
        "--audio",
        "vggish",
    )
    assert code == 2
    assert "vggish-10086976.pth" in out and "vggish_model.ckpt" in out
    assert not (tmp_path / "x.zarr").exists()
