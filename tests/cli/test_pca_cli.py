"""`vidfeat pca fit|apply` through click's CliRunner on synthetic low-rank stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.vidfeat.test_pca import (
    LowRankStore,
    dequantize_reference,
    quantize_reference,
    write_low_rank_store,
    write_yt8m_dir,
    yt8m_reference,
)
from vidfeat import open_store
from vidfeat.errors import ConfigError, StoreError
from vidfeat.pca import fit_pca, load_pca
from vidfeat_cli.pca import pca


@pytest.fixture(scope="module")
def low_rank(tmp_path_factory: pytest.TempPathFactory) -> LowRankStore:
    return write_low_rank_store(tmp_path_factory.mktemp("cli") / "feats.zarr")


def invoke(*args: object):
    return CliRunner().invoke(pca, [str(a) for a in args])


def test_fit_writes_the_same_pca_as_the_library(low_rank: LowRankStore, tmp_path: Path) -> None:
    out = tmp_path / "pca.npz"
    result = invoke(
        "fit", low_rank.path, "--dim", 5, "--sample-frames", 80, "--seed", 4, "--out", out
    )
    assert result.exit_code == 0, result.output
    assert "PCA 48 -> 5 fitted on 80 frames" in result.output
    with open_store(low_rank.path) as reader:
        expected = fit_pca(reader, 5, sample_frames=80, seed=4)
    assert load_pca(out).sha256 == expected.sha256
    assert f"{expected.variance_kept:.2%}" in result.output


def test_fit_seed_changes_the_sample(low_rank: LowRankStore, tmp_path: Path) -> None:
    shas = []
    for seed in (1, 1, 2):
        out = tmp_path / f"pca{len(shas)}.npz"
        result = invoke(
            "fit", low_rank.path, "--dim", 3, "--sample-frames", 50, "--seed", seed, "--out", out
        )
        assert result.exit_code == 0, result.output
        shas.append(load_pca(out).sha256)
    assert shas[0] == shas[1] != shas[2]


def test_fit_then_apply_quantized(low_rank: LowRankStore, tmp_path: Path) -> None:
    assert invoke("fit", low_rank.path, "--dim", 6, "--out", tmp_path / "p.npz").exit_code == 0
    out = tmp_path / "q.h5"
    result = invoke("apply", low_rank.path, "--pca", tmp_path / "p.npz", "--out", out, "--quantize")
    assert result.exit_code == 0, result.output
    assert "wrote 24 videos" in result.output and "6-d uint8" in result.output
    transform = load_pca(tmp_path / "p.npz")
    with open_store(out) as r:
        assert r.format == "hdf5" and r.quantization["scheme"] == "yt8m_uint8"
        assert r.attrs["pca"]["sha256"] == transform.sha256
        for vid, frames in low_rank.frames.items():
            codes = r.read(vid, raw=True)
            np.testing.assert_array_equal(codes, quantize_reference(transform.apply(frames)))
            np.testing.assert_allclose(r.read(vid), dequantize_reference(codes), atol=1e-6)
    again = invoke("apply", low_rank.path, "--pca", tmp_path / "p.npz", "--out", out, "--quantize")
    assert again.exit_code == 0 and "wrote 0 videos" in again.output
    assert "25 already there" in again.output


def test_apply_youtube8m_directory(tmp_path: Path) -> None:
    store = write_low_rank_store(tmp_path / "s.zarr", n_videos=4, dim=16, rank=3)
    folder = write_yt8m_dir(tmp_path / "yt8m_pca", dim=16)
    out = tmp_path / "o.zarr"
    result = invoke("apply", store.path, "--pca", folder, "--dim", 8, "--out", out)
    assert result.exit_code == 0, result.output
    with open_store(out) as r:
        assert (r.dim, r.attrs["pca"]["source"]) == (8, "yt8m")
        for vid, frames in store.frames.items():
            np.testing.assert_allclose(
                r.read(vid), yt8m_reference(frames, folder, 8), rtol=1e-4, atol=1e-4
            )


def test_errors_propagate_as_typed_exceptions(low_rank: LowRankStore, tmp_path: Path) -> None:
    # The main `vidfeat` command turns these into a one-line message and exit code 2.
    too_many = invoke("fit", low_rank.path, "--dim", 60, "--out", tmp_path / "p.npz")
    assert isinstance(too_many.exception, ConfigError) and "at most" in str(too_many.exception)
    assert not (tmp_path / "p.npz").exists()
    folder = write_yt8m_dir(tmp_path / "yt8m", dim=16)
    wrong = invoke("apply", low_rank.path, "--pca", folder, "--dim", 8, "--out", tmp_path / "o")
    assert isinstance(wrong.exception, ConfigError)
    assert "expects 16-d features but the input has 48-d" in str(wrong.exception)
    (tmp_path / "not_a_store").mkdir()
    missing = invoke("fit", tmp_path / "not_a_store", "--out", tmp_path / "p.npz")
    assert isinstance(missing.exception, StoreError)


def test_usage_errors_and_help(low_rank: LowRankStore, tmp_path: Path) -> None:
    assert invoke("fit", low_rank.path).exit_code == 2  # --out is required
    assert invoke("fit", low_rank.path, "--dim", 0, "--out", tmp_path / "p").exit_code == 2
    assert (
        invoke("apply", low_rank.path, "--pca", tmp_path / "none.npz", "--out", "x").exit_code == 2
    )
    helptext = invoke("apply", "--help").output
    assert "vidfeat pca apply features.zarr --pca pca.npz" in helptext and "--quantize" in helptext


# --------------------------------------------------------------------------- through `vidfeat`


def test_main_cli_reports_pca_errors_in_one_line(low_rank: LowRankStore, tmp_path: Path) -> None:
    from vidfeat_cli.vidfeat import main

    result = CliRunner().invoke(
        main, ["pca", "fit", str(low_rank.path), "--dim", "60", "--out", str(tmp_path / "p.npz")]
    )
    assert result.exit_code == 2
    assert "cannot fit 60 components" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_extract_with_pca_equals_extract_then_apply(tmp_path: Path, make_video) -> None:
    from vidfeat_cli.vidfeat import main

    clips = [make_video(f"pca_{i}.mp4", seconds=3, fps=10, size=(96 + 32 * i, 72)) for i in (0, 1)]
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "video_id,path,labels\n" + "".join(f"clip{i},{c},l{i}\n" for i, c in enumerate(clips))
    )

    def run(*args: object) -> str:
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    common = ("--fps", "2", "--device", "cpu", "--no-progress")
    run("extract", manifest, "--out", tmp_path / "raw.zarr", *common)
    run("pca", "fit", tmp_path / "raw.zarr", "--dim", 4, "--out", tmp_path / "p.npz")
    run(
        "pca",
        "apply",
        tmp_path / "raw.zarr",
        "--pca",
        tmp_path / "p.npz",
        "--quantize",
        "--out",
        tmp_path / "applied.zarr",
    )
    run(
        "extract",
        manifest,
        "--out",
        tmp_path / "onepass.zarr",
        "--pca",
        tmp_path / "p.npz",
        "--quantize",
        *common,
    )
    with open_store(tmp_path / "applied.zarr") as a, open_store(tmp_path / "onepass.zarr") as b:
        assert (b.dim, b.dtype, b.quantization) == (a.dim, a.dtype, a.quantization)
        assert b.attrs["pca"] == a.attrs["pca"]
        assert sorted(b.ok_ids) == sorted(a.ok_ids) == ["clip0", "clip1"]
        for vid in a.ok_ids:
            codes_a = a.read(vid, raw=True).astype(int)
            codes_b = b.read(vid, raw=True).astype(int)
            assert codes_a.shape == (6, 4)
            # The same frames through the same backbone: at most one code of float jitter.
            assert np.abs(codes_a - codes_b).max() <= 1
            np.testing.assert_array_equal(a.timestamps(vid), b.timestamps(vid))


def test_a_two_stream_store_reduces_the_stream_named_and_keeps_the_other(
    low_rank: LowRankStore, tmp_path: Path
) -> None:
    # rgb (float32, to reduce) beside audio already in YouTube-8M's uint8 codes (to keep).
    from vidfeat import create_store
    from vidfeat.pca.quantize import quantization_attrs

    store = tmp_path / "two.zarr"
    audio = {}
    codes = {"dim": 8, "dtype": "uint8", "quantization": quantization_attrs()}
    streams = {"rgb": 48, "audio": codes}
    rng = np.random.default_rng(1)
    with create_store(store, streams=streams, attrs={"fps": 1}) as w:
        for vid, frames in low_rank.frames.items():
            audio[vid] = rng.integers(0, 256, (len(frames), 8), dtype=np.uint8)
            w.write(vid, {"rgb": frames, "audio": audio[vid]}, labels=["x"])
    unnamed = invoke("fit", store, "--dim", 6, "--out", tmp_path / "p.npz").exception
    assert isinstance(unnamed, ConfigError) and "has streams rgb, audio" in str(unnamed)
    assert "--stream" in str(unnamed)
    fitted = invoke("fit", store, "--dim", 6, "--stream", "rgb", "--out", tmp_path / "p.npz")
    assert fitted.exit_code == 0, fitted.output
    with open_store(low_rank.path) as reader:  # the rgb stream alone fits the same PCA
        assert load_pca(tmp_path / "p.npz").sha256 == fit_pca(reader, 6).sha256
    out = tmp_path / "reduced.zarr"
    args = ["apply", store, "--pca", tmp_path / "p.npz", "--out", out, "--quantize"]
    result = invoke(*args, "--stream", "rgb")
    assert result.exit_code == 0, result.output
    transform = load_pca(tmp_path / "p.npz")
    with open_store(out) as r:
        assert r.streams["rgb"].dim == 6 and r.streams["rgb"].dtype == "uint8"
        assert r.streams["audio"].quantization == quantization_attrs()
        for vid, frames in low_rank.frames.items():
            rgb = quantize_reference(transform.apply(frames))
            np.testing.assert_array_equal(r.read(vid, "rgb", raw=True), rgb)
            np.testing.assert_array_equal(r.read(vid, "audio", raw=True), audio[vid])
