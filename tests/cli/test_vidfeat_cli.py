"""`vidfeat`: checks that end the command before any output, one line each, exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from tests.heads.stores import make_cluster_store
from vidfeat import __version__
from vidfeat_cli.vidfeat import main


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def manifest(tmp_path, make_video):
    video = make_video("clip.mp4", seconds=1.0, fps=10)
    path = tmp_path / "m.csv"
    path.write_text(f"video_id,path,labels\nv0,{video},a\n")
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_creates_no_store(tmp_path, manifest):
    out = tmp_path / "s.zarr"
    line = one_line_error(invoke("extract", manifest, "--out", out, "--device", "cuda"))
    assert "CUDA is not available" in line and not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, manifest):
    out = tmp_path / "s.zarr"
    out.write_text("not a store")
    assert "is a file, not a vidfeat" in one_line_error(invoke("extract", manifest, "--out", out))
    assert out.read_text() == "not a store"


def test_bad_shard_is_one_line(tmp_path, manifest):
    out = tmp_path / "s.zarr"
    assert "--shard" in one_line_error(invoke("extract", manifest, "--out", out, "--shard", "3/2"))
    assert not out.exists()


def test_info_on_a_missing_store(tmp_path):
    assert "no feature store" in one_line_error(invoke("info", tmp_path / "nope.zarr"))


def test_info_json_and_quiet(tmp_path):
    attrs = {"backbone": {"name": "synthetic", "weights_id": "w1"}, "pca": None}
    store = make_cluster_store(tmp_path / "s.zarr", 6, attrs=attrs)
    result = invoke("-q", "info", store, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["ok"] == 6 and summary["backbone"] == "synthetic"


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.split()[-1] == __version__


@pytest.fixture
def pca_inputs(tmp_path):
    store = make_cluster_store(tmp_path / "s.zarr", 10)
    pca = tmp_path / "p.npz"
    fit = invoke("pca", "fit", store, "--dim", 4, "--sample-frames", 50, "--out", pca)
    assert fit.exit_code == 0, fit.output
    return store, pca


@pytest.mark.parametrize("blocked", ["o.zarr.locks", "o.zarr"])
def test_a_file_where_the_store_needs_a_directory(tmp_path, pca_inputs, blocked):
    store, pca = pca_inputs
    (tmp_path / blocked).write_text("in the way")
    line = one_line_error(invoke("pca", "apply", store, "--pca", pca, "--out", tmp_path / "o.zarr"))
    said = {"o.zarr.locks": ": a file is in the way", "o.zarr": " is a file, not a vidfeat"}
    assert f"{tmp_path / blocked}{said[blocked]}" in line


@pytest.mark.parametrize(
    ("attrs", "backbone"),
    [
        ({"backbone": "my-cnn"}, "my-cnn"),
        ({}, None),
        ({"backbone": {"name": "cnn"}, "n": [1]}, "cnn"),
    ],
    ids=["name", "none", "free-form"],
)
def test_info_reads_stores_made_through_the_api_with_free_form_attrs(tmp_path, attrs, backbone):
    # The README's "bring your own features" example, then `vidfeat info` on its store.
    import numpy as np

    import vidfeat

    feats = np.random.default_rng(0).random((5, 2048), dtype=np.float32)
    with vidfeat.create_store(tmp_path / "mine.zarr", dim=2048, attrs=attrs) as w:
        w.write("vid001", feats, labels=["cat"], timestamps=None)
    result = invoke("info", tmp_path / "mine.zarr", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["ok"] == 1 and summary["backbone"] == backbone
