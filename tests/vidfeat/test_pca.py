"""PCA fitting, the YouTube-8M PCA file format, and deriving quantized stores."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from vidfeat import create_store, open_store
from vidfeat.errors import ConfigError, StoreError, StoreMismatchError
from vidfeat.pca import (
    FeatureReduction,
    PCATransform,
    apply_pca_to_store,
    fit_pca,
    load_pca,
)
from vidfeat.pca.fit import StreamingMoments, sample_positions
from vidfeat.store.info import describe_features

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LowRankStore:
    path: Path
    frames: dict[str, np.ndarray]  # video_id -> (T, D) float32
    basis: np.ndarray  # (rank, D) orthonormal rows: the planted subspace

    @property
    def all_frames(self) -> np.ndarray:  # in video-id order, like the fit's sample
        return np.concatenate([self.frames[k] for k in sorted(self.frames)])


def write_low_rank_store(
    path: Path,
    n_videos: int = 24,
    dim: int = 48,
    rank: int = 6,
    noise: float = 0.05,
    seed: int = 0,
    reverse: bool = False,
    failures: int = 1,
) -> LowRankStore:
    """Features = mean + rank-``rank`` signal with distinct variances + small isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T
    stds = np.linspace(6.0, 1.5, rank)
    offset = rng.normal(0, 3, dim)
    frames = {}
    for i in range(n_videos):
        z = rng.standard_normal((int(rng.integers(4, 13)), rank)) * stds
        x = offset + z @ basis + noise * rng.standard_normal((len(z), dim))
        frames[f"v{i:03d}"] = x.astype(np.float32)
    order = sorted(frames, reverse=reverse)
    with create_store(path, dim=dim, attrs={"backbone": "synthetic", "fps": 1.0}) as w:
        for k, vid in enumerate(order):
            ts = 0.5 + np.arange(len(frames[vid]), dtype=np.float64)
            w.write(vid, frames[vid], labels=[f"c{k % 3}"], timestamps=ts, source_path=f"{vid}.mp4")
        for j in range(failures):
            w.write_failure(
                f"bad{j}",
                status="decode_error",
                reason="moov atom not found",
                labels=["c0"],
                source_path=f"bad{j}.mp4",
            )
    return LowRankStore(path, frames, basis)


@pytest.fixture(scope="module")
def low_rank(tmp_path_factory: pytest.TempPathFactory) -> LowRankStore:
    # Read-only for every test, so one copy serves the module.
    return write_low_rank_store(tmp_path_factory.mktemp("pca") / "feats.zarr")


def fit(store: LowRankStore, dim: int, **kw) -> PCATransform:
    with open_store(store.path) as reader:
        return fit_pca(reader, dim, **kw)


def yt8m_reference(x: np.ndarray, folder: Path, k: int) -> np.ndarray:
    """YouTube-8M's feature_extractor.py, transcribed: _load_pca() then apply_pca()."""
    pca_mean = np.load(folder / "mean.npy")[:, 0]
    pca_eigenvals = np.load(folder / "eigenvals.npy")[:k, 0]
    pca_eigenvecs = np.load(folder / "eigenvecs.npy").T[:, :k]
    return ((x - pca_mean) @ pca_eigenvecs) / np.sqrt(pca_eigenvals + 1e-4)


def write_yt8m_dir(folder: Path, dim: int, seed: int = 0, orthogonal: np.ndarray | None = None):
    rng = np.random.default_rng(seed)
    q = orthogonal if orthogonal is not None else np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "mean.npy", rng.normal(0, 1, (dim, 1)).astype(np.float32))
    np.save(folder / "eigenvals.npy", np.sort(rng.uniform(1e-3, 4, (dim, 1)), axis=0)[::-1])
    np.save(folder / "eigenvecs.npy", q.astype(np.float32))
    return folder


def quantize_reference(x: np.ndarray) -> np.ndarray:
    # The formula, written out independently of vidfeat.pca.quantize.
    return np.round((np.clip(x, -2.0, 2.0) + 2.0) * 255.0 / 4.0).astype(np.uint8)


def dequantize_reference(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float64) * 4.0 / 255.0 + 4.0 / 512.0 - 2.0


# --------------------------------------------------------------------------- fitting


def test_fit_on_all_frames_matches_sklearn_whitened_pca(low_rank: LowRankStore) -> None:
    x = low_rank.all_frames
    ours = fit(low_rank, 6, batch_frames=7)  # many small batches exercise the streaming merge
    ref = PCA(n_components=6, whiten=True, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(ours.mean, ref.mean_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.eigenvalues, ref.explained_variance_, rtol=1e-5)
    # Components agree up to sign; the variances are distinct so each is identified.
    corr = np.sum(ours.components * ref.components_, axis=1)
    np.testing.assert_allclose(np.abs(corr), 1.0, atol=1e-5)
    ref_features = ref.transform(x) * np.sign(corr)
    # sklearn whitens by sqrt(variance); we add YouTube-8M's eps=1e-4 inside the sqrt.
    ref_features *= np.sqrt(ref.explained_variance_ / (ref.explained_variance_ + 1e-4))
    np.testing.assert_allclose(ours.apply(x), ref_features, atol=2e-4)
    assert ours.variance_kept == pytest.approx(ref.explained_variance_ratio_.sum(), rel=1e-6)
    assert ours.fit_info["n_frames"] == len(x) and ours.fit_info["n_videos"] == 24


def test_fit_on_a_sample_recovers_the_planted_subspace(low_rank: LowRankStore) -> None:
    n_total = len(low_rank.all_frames)
    pca = fit(low_rank, 6, sample_frames=n_total // 2, seed=3)
    assert pca.fit_info["n_frames"] == n_total // 2
    # Cosines of the principal angles between the fitted and the planted subspace.
    cosines = np.linalg.svd(pca.components.astype(np.float64) @ low_rank.basis.T, compute_uv=False)
    assert cosines.min() > 0.999
    whitened = pca.apply(low_rank.all_frames)
    np.testing.assert_allclose(whitened.std(axis=0), 1.0, atol=0.25)


def test_fit_is_reproducible_and_independent_of_write_order(tmp_path: Path) -> None:
    a = write_low_rank_store(tmp_path / "a.zarr")
    b = write_low_rank_store(tmp_path / "b.h5", reverse=True)
    kw = {"sample_frames": 60, "seed": 11}
    assert fit(a, 4, **kw).sha256 == fit(b, 4, **kw).sha256
    assert fit(a, 4, **kw).sha256 != fit(a, 4, sample_frames=60, seed=12).sha256


def test_fit_signs_are_deterministic(low_rank: LowRankStore) -> None:
    comps = fit(low_rank, 6).components
    pivots = comps[np.arange(6), np.argmax(np.abs(comps), axis=1)]
    assert np.all(pivots > 0)


def test_fit_streams_bounded_batches_reading_each_video_once(
    low_rank: LowRankStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    original = StreamingMoments.update
    monkeypatch.setattr(
        StreamingMoments, "update", lambda self, b: (batches.append(len(b)), original(self, b))
    )
    with open_store(low_rank.path) as reader:
        reads: list[str] = []
        read = reader.read
        monkeypatch.setattr(reader, "read", lambda vid, **kw: (reads.append(vid), read(vid))[1])
        fit_pca(reader, 4, sample_frames=100, batch_frames=16)
    longest = max(len(f) for f in low_rank.frames.values())
    assert sum(batches) == 100
    assert len(batches) > 1 and max(batches) < 16 + longest
    assert len(reads) == len(set(reads))


def test_streaming_moments_match_numpy_for_any_batching() -> None:
    rng = np.random.default_rng(5)
    # A large offset is where a naive sum(x x^T) - n mean mean^T loses all precision.
    x = 1e4 + rng.standard_normal((301, 7)) @ rng.standard_normal((7, 7))
    for cuts in ([], [1, 2, 150], list(range(0, 301, 13))):
        moments = StreamingMoments(7)
        for part in np.split(x, cuts):
            moments.update(part)
        np.testing.assert_allclose(moments.mean, x.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(moments.covariance(), np.cov(x, rowvar=False), rtol=1e-8)


def test_sample_positions_are_seeded_unique_and_cover_all_when_asked() -> None:
    n_frames = np.array([5, 0, 12, 3, 40])
    a = sample_positions(n_frames, 20, seed=1)
    assert [list(p) for p in a] == [list(p) for p in sample_positions(n_frames, 20, seed=1)]
    assert sum(len(p) for p in a) == 20
    for pos, n in zip(a, n_frames, strict=True):
        assert len(np.unique(pos)) == len(pos) and np.all((pos >= 0) & (pos < n))
    assert [len(p) for p in sample_positions(n_frames, 1000, seed=1)] == list(n_frames)


@pytest.mark.parametrize(
    ("dim", "kw", "match"),
    [
        (49, {}, r"min\(frames, dim\) = 48"),  # more components than feature dimensions
        (10, {"sample_frames": 9}, "from 9 sampled frames"),  # more than frames
        (0, {}, ">= 1"),
    ],
)
def test_fit_refuses_impossible_sizes(low_rank: LowRankStore, dim: int, kw: dict, match: str):
    with pytest.raises(ConfigError, match=match):
        fit(low_rank, dim, **kw)


def test_fit_refuses_a_store_without_successful_videos(tmp_path: Path) -> None:
    with create_store(tmp_path / "empty.zarr", dim=8) as w:
        w.write_failure("x", status="decode_error", reason="empty file")
    with open_store(tmp_path / "empty.zarr") as reader, pytest.raises(StoreError, match="no succ"):
        fit_pca(reader, 2)


def test_fit_refuses_constant_features(tmp_path: Path) -> None:
    with create_store(tmp_path / "c.zarr", dim=8) as w:
        for i in range(3):
            w.write(f"v{i}", np.full((4, 8), 0.25, np.float32))
    with open_store(tmp_path / "c.zarr") as reader, pytest.raises(ConfigError, match="identical"):
        fit_pca(reader, 2)


def test_rank_deficient_frames_warn_and_stay_finite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = write_low_rank_store(tmp_path / "r.zarr", rank=2, noise=0.0)
    with caplog.at_level(logging.WARNING, logger="vidfeat.pca"):
        pca = fit(store, 4)
    assert "2 of 4 components have variance <= eps" in caplog.text
    assert np.all(pca.eigenvalues >= 0) and np.all(np.isfinite(pca.apply(store.all_frames)))


def test_more_components_than_videos_warn(
    low_rank: LowRankStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vidfeat.pca"):
        fit(low_rank, 6)
    assert "videos" not in caplog.text  # 24 videos for 6 components
    with caplog.at_level(logging.WARNING, logger="vidfeat.pca"):
        fit(low_rank, 30)
    assert "fitting 30 components on frames of only 24 videos" in caplog.text


# --------------------------------------------------------------------------- the transform


def test_save_load_round_trip_and_truncation(low_rank: LowRankStore, tmp_path: Path) -> None:
    pca = fit(low_rank, 6, seed=2)
    path = pca.save(tmp_path / "new_dir" / "pca.npz")
    assert [p.name for p in path.parent.iterdir()] == ["pca.npz"]  # no temporary left behind
    loaded = load_pca(path)
    assert loaded.sha256 == pca.sha256 and loaded.fit_info == pca.fit_info
    assert loaded.variance_kept == pytest.approx(pca.variance_kept)
    np.testing.assert_array_equal(loaded.apply(low_rank.all_frames), pca.apply(low_rank.all_frames))
    first3 = load_pca(path, dim=3)
    assert first3.output_dim == 3 and first3.variance_kept < pca.variance_kept
    np.testing.assert_allclose(
        first3.apply(low_rank.all_frames), pca.apply(low_rank.all_frames)[:, :3]
    )
    with pytest.raises(ConfigError, match="cannot keep 7"):
        load_pca(path, dim=7)


def test_apply_refuses_other_input_sizes(low_rank: LowRankStore) -> None:
    pca = fit(low_rank, 3)
    with pytest.raises(ConfigError, match=r"expects \(N, 48\)"):
        pca.apply(np.zeros((2, 47), np.float32))
    with pytest.raises(ConfigError, match=r"expects \(N, 48\)"):
        pca.apply(np.zeros(48, np.float32))


def test_bad_pca_files_are_clear_errors(low_rank: LowRankStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_pca(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read"):
        load_pca(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(ConfigError, match="missing"):
        load_pca(tmp_path / "other.npz")
    # Parameters edited after saving no longer match the recorded digest.
    pca = fit(low_rank, 3)
    pca.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as z:
        arrays = dict(z)
    arrays["components"][0, 0] += 0.01
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(ConfigError, match="corrupt"):
        load_pca(tmp_path / "edited.npz")


def test_transform_validates_its_parameters() -> None:
    ok = {"mean": np.zeros(4), "components": np.eye(4)[:2], "eigenvalues": np.ones(2)}
    PCATransform(**ok, source="fitted")
    with pytest.raises(ConfigError, match="shapes disagree"):
        PCATransform(**{**ok, "mean": np.zeros(5)}, source="fitted")
    with pytest.raises(ConfigError, match="do not match 2 components"):
        PCATransform(**{**ok, "eigenvalues": np.ones(3)}, source="fitted")
    with pytest.raises(ConfigError, match="NaN"):
        PCATransform(**{**ok, "mean": np.full(4, np.nan)}, source="fitted")
    with pytest.raises(ConfigError, match="source"):
        PCATransform(**ok, source="magic")


# --------------------------------------------------------------------------- YouTube-8M files


def test_yt8m_directory_applies_youtube8m_formula(tmp_path: Path) -> None:
    folder = write_yt8m_dir(tmp_path / "yt8m", dim=16)
    x = np.random.default_rng(1).normal(0, 2, (9, 16)).astype(np.float32)
    pca = load_pca(folder, dim=8)
    assert (pca.source, pca.input_dim, pca.output_dim) == ("yt8m", 16, 8)
    np.testing.assert_allclose(pca.apply(x), yt8m_reference(x, folder, 8), rtol=1e-4, atol=1e-4)
    # The transposed matrix gives different features: orientation matters and is YouTube-8M's.
    q = np.load(folder / "eigenvecs.npy")
    np.save(folder / "eigenvecs.npy", q.T)
    assert not np.allclose(load_pca(folder, dim=8).apply(x), pca.apply(x), atol=1e-2)


def test_yt8m_directory_defaults_to_1024_of_2048(tmp_path: Path) -> None:
    # A signed permutation is orthogonal and cheap to build at YouTube-8M's real size.
    rng = np.random.default_rng(0)
    q = np.eye(2048)[rng.permutation(2048)] * rng.choice([-1.0, 1.0], 2048)[:, None]
    folder = write_yt8m_dir(tmp_path / "yt8m", dim=2048, orthogonal=q)
    pca = load_pca(folder)
    assert (pca.input_dim, pca.output_dim) == (2048, 1024)
    x = rng.normal(0, 1, (3, 2048)).astype(np.float32)
    np.testing.assert_allclose(pca.apply(x), yt8m_reference(x, folder, 1024), rtol=1e-4, atol=1e-4)


def test_yt8m_directory_accepts_flat_vectors(tmp_path: Path) -> None:
    folder = write_yt8m_dir(tmp_path / "yt8m", dim=8)
    reference = load_pca(folder, dim=4)
    for name in ("mean.npy", "eigenvals.npy"):
        np.save(folder / name, np.load(folder / name)[:, 0])
    assert load_pca(folder, dim=4).sha256 == reference.sha256


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("eigenvecs.npy", None, "missing eigenvecs.npy"),
        ("eigenvecs.npy", np.zeros((8, 7)), r"must be \(8, 8\)"),
        ("eigenvals.npy", np.ones((6, 1)), "must have 8 values"),
        ("mean.npy", np.zeros((8, 2)), r"shape \(D, 1\) or \(D,\)"),
        ("eigenvals.npy", -np.ones((8, 1)), "must be > -eps"),
        ("mean.npy", b"garbage", "cannot read"),
    ],
)
def test_malformed_yt8m_directories_are_clear_errors(tmp_path: Path, name, value, match) -> None:
    folder = write_yt8m_dir(tmp_path / "yt8m", dim=8)
    if value is None:
        (folder / name).unlink()
    elif isinstance(value, bytes):
        (folder / name).write_bytes(value)
    else:
        np.save(folder / name, value)
    with pytest.raises(ConfigError, match=match):
        load_pca(folder, dim=4)


def test_yt8m_directory_refuses_more_components_than_dimensions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot keep 9"):
        load_pca(write_yt8m_dir(tmp_path / "yt8m", dim=8), dim=9)


# --------------------------------------------------------------------------- derived stores


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_apply_quantized_follows_youtube8m_formulas_end_to_end(
    low_rank: LowRankStore, tmp_path: Path, suffix: str
) -> None:
    pca = fit(low_rank, 6)
    out = tmp_path / f"q{suffix}"
    summary = apply_pca_to_store(low_rank.path, pca, out, quantize=True)
    assert (summary["written"], summary["failures_copied"], summary["skipped"]) == (24, 1, 0)
    with open_store(out) as r, open_store(low_rank.path) as parent:
        assert (r.dim, r.dtype, r.quantization) == (
            6,
            np.dtype(np.uint8),
            {"scheme": "yt8m_uint8", "min": -2.0, "max": 2.0},
        )
        assert r.attrs["backbone"] == "synthetic"  # parent attrs are kept
        assert r.attrs["pca"]["sha256"] == pca.sha256 and r.attrs["pca"]["output_dim"] == 6
        assert r.attrs["parent_store"]["path"] == str(low_rank.path.resolve())
        assert (r.attrs["parent_store"]["dim"], r.attrs["parent_store"]["dtype"]) == (48, "float32")
        saturated = 0
        for vid, frames in low_rank.frames.items():
            reduced = pca.apply(frames).astype(np.float64)
            codes = r.read(vid, raw=True)
            assert codes.dtype == np.uint8
            np.testing.assert_array_equal(codes, quantize_reference(reduced))
            features = r.read(vid)
            assert features.dtype == np.float32
            np.testing.assert_allclose(features, dequantize_reference(codes), atol=1e-6)
            # Inside [-2, 2] the round trip is off by at most half a step plus the 1/512 bias.
            inside = np.abs(reduced) <= 2
            err = np.abs(features - reduced)[inside]
            assert err.max() <= 2.0 / 255 + 4.0 / 512 + 1e-6
            # Outside, values clip to the end codes.
            assert np.all(codes[reduced > 2] == 255) and np.all(codes[reduced < -2] == 0)
            saturated += int((~inside).sum())
            np.testing.assert_array_equal(r.timestamps(vid), parent.timestamps(vid))
            assert r.labels(vid) == parent.labels(vid)
        assert saturated > 0  # whitened Gaussian frames do leave [-2, 2]: clipping is exercised
        bad = r.videos.set_index("video_id").loc["bad0"]
        assert (bad["status"], bad["reason"], bad["source_path"]) == (
            "decode_error",
            "moov atom not found",
            "bad0.mp4",
        )
        assert r.ok_ids == parent.ok_ids


def test_apply_float_keeps_exact_projections(low_rank: LowRankStore, tmp_path: Path) -> None:
    pca = fit(low_rank, 5)
    apply_pca_to_store(low_rank.path, pca, tmp_path / "f.zarr")
    with open_store(tmp_path / "f.zarr") as r:
        assert (r.dim, r.dtype, r.quantization) == (5, np.dtype(np.float32), None)
        for vid, frames in low_rank.frames.items():
            np.testing.assert_array_equal(r.read(vid), pca.apply(frames))


def test_apply_refuses_mismatched_pca_and_same_output(low_rank: LowRankStore, tmp_path: Path):
    other = write_low_rank_store(tmp_path / "other.zarr", dim=32)
    pca32 = fit(other, 4)
    with pytest.raises(ConfigError, match="expects 32-d features but the input has 48-d"):
        apply_pca_to_store(low_rank.path, pca32, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()
    with pytest.raises(ConfigError, match="must differ"):
        apply_pca_to_store(low_rank.path, fit(low_rank, 4), low_rank.path)


def test_rerun_with_another_pca_is_refused(low_rank: LowRankStore, tmp_path: Path) -> None:
    apply_pca_to_store(
        low_rank.path, fit(low_rank, 4, seed=0, sample_frames=50), tmp_path / "o.zarr"
    )
    with pytest.raises(StoreMismatchError, match="pca"):
        apply_pca_to_store(
            low_rank.path, fit(low_rank, 4, seed=1, sample_frames=50), tmp_path / "o.zarr"
        )


_KILL_AFTER = textwrap.dedent(
    """
    import os, signal, sys
    from vidfeat.pca import apply_pca_to_store, load_pca
    def die(done, total):
        if done == int(sys.argv[4]):
            os.kill(os.getpid(), signal.SIGKILL)
    apply_pca_to_store(sys.argv[1], load_pca(sys.argv[2]), sys.argv[3], quantize=True,
                       progress=die)
    """
)


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path: Path) -> None:
    store = write_low_rank_store(tmp_path / "src.zarr", n_videos=40)
    pca_path = fit(store, 6).save(tmp_path / "pca.npz")
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-c", _KILL_AFTER, str(store.path), str(pca_path), str(out), "30"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with open_store(out) as r:
        n_committed = len(r.videos)
    assert 0 < n_committed < 30  # some batches landed, the last one was lost
    summary = apply_pca_to_store(store.path, load_pca(pca_path), out, quantize=True)
    assert summary["skipped"] == n_committed
    assert summary["written"] + summary["failures_copied"] == 41 - n_committed
    apply_pca_to_store(store.path, load_pca(pca_path), tmp_path / "clean.zarr", quantize=True)
    with open_store(out) as a, open_store(tmp_path / "clean.zarr") as b:
        assert sorted(a.videos["video_id"]) == sorted(b.videos["video_id"])
        assert len(a.videos) == 41
        for vid in b.ok_ids:
            np.testing.assert_array_equal(a.read(vid, raw=True), b.read(vid, raw=True))


def test_feature_reduction_rules(low_rank: LowRankStore) -> None:
    with pytest.raises(ConfigError, match="needs a PCA"):
        FeatureReduction(None, quantize=True)
    none = FeatureReduction()
    assert (none.output_dim(2048), none.dtype, none.quantization, none.attrs()) == (
        2048,
        None,
        None,
        {"pca": None},
    )
    pca = fit(low_rank, 4)
    reduce = FeatureReduction(pca, quantize=True)
    assert (reduce.output_dim(48), reduce.dtype) == (4, "uint8")
    with pytest.raises(ConfigError, match="expects 48-d"):
        reduce.output_dim(2048)
    frames = low_rank.frames["v000"]
    np.testing.assert_array_equal(reduce(frames), quantize_reference(pca.apply(frames)))


def test_describe_features_reports_size_per_frame(low_rank: LowRankStore, tmp_path: Path) -> None:
    n_frames = len(low_rank.all_frames)
    with open_store(low_rank.path) as r:
        info = describe_features(r)
    assert (info["dim"], info["dtype"], info["bytes_per_frame"]) == (48, "float32", 192)
    assert (info["n_frames"], info["feature_bytes"], info["pca"]) == (
        n_frames,
        n_frames * 192,
        None,
    )
    apply_pca_to_store(low_rank.path, fit(low_rank, 6), tmp_path / "q.zarr", quantize=True)
    with open_store(tmp_path / "q.zarr") as r:
        info = describe_features(r)
    assert (info["dim"], info["dtype"], info["bytes_per_frame"]) == (6, "uint8", 6)
    assert info["quantization"]["scheme"] == "yt8m_uint8"
    assert (info["pca"]["source"], info["pca"]["input_dim"]) == ("fitted", 48)


def test_importing_pca_does_not_import_torch() -> None:
    code = "import sys, vidfeat.pca; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_info_names_an_audio_streams_pca_by_its_file(tmp_path: Path) -> None:
    # --audio-pca records VGGish's own parameters by file and sha256, not as a fitted PCA.
    from vidfeat.store.info import format_summary, store_summary

    vggish_pca = {"file": "vggish_pca_params.npz", "sha256": "ab" * 32}
    streams = {"rgb": 4, "audio": {"dim": 2, "attrs": {"pca": vggish_pca}}}
    path = tmp_path / "s.zarr"
    with create_store(path, streams=streams) as w:
        w.write("v", {"rgb": np.ones((2, 4), np.float32), "audio": np.ones((2, 2), np.float32)})
    text = format_summary(store_summary(path))
    assert "vggish_pca_params.npz (sha256 abababababababab)" in text
    assert "None -> None" not in text


def test_apply_keeps_the_no_audio_note_of_the_copied_audio_stream(tmp_path: Path) -> None:
    # An ok video without an audio track has zeros in its audio stream and reason "no_audio";
    # without the note, a reduced store would pass those zeros off as heard silence.
    src, out = tmp_path / "src.zarr", tmp_path / "out.zarr"
    rgb = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    with create_store(src, streams={"rgb": 4, "audio": 2}) as w:
        for i, note in enumerate(["", "no_audio"]):
            audio = np.full((6, 2), 0.0 if note else 1.0, np.float32)
            w.write(f"v{i}", {"rgb": rgb[6 * i : 6 * i + 6], "audio": audio}, note=note)
    pca = PCATransform(
        mean=np.zeros(4), components=np.eye(4)[:2], eigenvalues=np.ones(2), source="fitted"
    )
    apply_pca_to_store(src, pca, out, stream="rgb")
    with open_store(src) as a, open_store(out) as b:
        for table in (a.videos, b.videos):
            assert table.set_index("video_id")["reason"].to_dict() == {"v0": "", "v1": "no_audio"}
        np.testing.assert_array_equal(b.read("v1", "audio"), a.read("v1", "audio"))


def test_reducing_the_audio_stream_records_its_pca_with_that_stream(tmp_path: Path) -> None:
    # The store attr `pca` is the rgb stream's: reducing audio once overwrote it (rgb's own
    # PCA record was lost) and left audio's attrs saying only VGGish's PCA made it.
    rgb_pca = {"source": "yt8m", "input_dim": 2048, "output_dim": 4, "sha256": "cd" * 32}
    vggish_pca = {"file": "vggish_pca_params.npz", "sha256": "ab" * 32}
    audio = {"dim": 4, "attrs": {"pca": vggish_pca, "no_audio_value": 0.0}}
    src, out = tmp_path / "src.zarr", tmp_path / "out.zarr"
    with create_store(src, streams={"rgb": 4, "audio": audio}, attrs={"pca": rgb_pca}) as w:
        ones = np.ones((3, 4), np.float32)
        w.write("v", {"rgb": ones, "audio": np.arange(12, dtype=np.float32).reshape(3, 4)})
    pca = PCATransform(
        mean=np.zeros(4), components=np.eye(4)[:2], eigenvalues=np.ones(2), source="fitted"
    )
    apply_pca_to_store(src, pca, out, stream="audio")
    with open_store(out) as r:
        assert r.attrs["pca"] == rgb_pca
        assert r.attrs["parent_store"]["pca"] == vggish_pca
        assert r.attrs["parent_store"]["stream"] == "audio"
        attrs = r.streams["audio"].attrs
        assert attrs["pca"] == vggish_pca and attrs["reduced_by"] == pca.provenance()
        assert "no_audio_value" not in attrs
        assert r.streams["rgb"].attrs == {}
        # Whitened by sqrt(eigenvalue + 1e-4), as YouTube-8M's PCA is.
        np.testing.assert_allclose(r.read("v", "audio"), [[0, 1], [4, 5], [8, 9]], rtol=1e-4)
    # Reducing rgb keeps its provenance where it always was.
    apply_pca_to_store(src, pca, tmp_path / "rgb.zarr", stream="rgb")
    with open_store(tmp_path / "rgb.zarr") as r:
        assert r.attrs["pca"] == pca.provenance() and r.attrs["parent_store"]["pca"] == rgb_pca
        assert r.streams["audio"].attrs == audio["attrs"]


def test_pca_reduced_features_are_stored_in_the_dtype_asked_for(tmp_path: Path) -> None:
    # With a PCA and no quantization the stored dtype is the caller's (--dtype float16 was
    # silently stored as float32); quantization alone forces uint8.
    pca = PCATransform(
        mean=np.zeros(4), components=np.eye(4)[:2], eigenvalues=np.ones(2), source="fitted"
    )
    assert FeatureReduction(pca).dtype is None
    assert FeatureReduction(pca, quantize=True).dtype == "uint8"
    assert FeatureReduction(None).dtype is None


def test_fit_on_a_video_level_store_says_it_has_no_frames(tmp_path: Path) -> None:
    path = tmp_path / "v.zarr"
    with create_store(path, level="video", streams={"rgb": 4}) as w:
        for i in range(6):
            w.write(f"v{i}", {"rgb": np.full(4, float(i))})
    with open_store(path) as r, pytest.raises(ConfigError, match="is video-level"):
        fit_pca(r, dim=2)
