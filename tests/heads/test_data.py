import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from heads import checkpoint as ck
from heads.batching import BucketBatchSampler, balanced_weights, make_loader
from heads.config import DataConfig
from heads.data import Batch, FeatureDataset, Sample, collate, effective_length, select_frames
from heads.labels import LabelMap, MultiHot, build_label_map
from heads.synthetic import write_store, write_sum_store
from tests.heads.stores import LABELS, frame_videos, make_frame_store
from vidfeat.errors import ConfigError
from vidfeat.pca.quantize import dequantize, quantization_attrs, quantize
from vidfeat.store import create_store, open_store


@pytest.fixture(params=["zarr", "hdf5"])
def store(request, tmp_path):
    suffix = ".zarr" if request.param == "zarr" else ".h5"
    return make_frame_store(tmp_path / f"frames{suffix}", request.param)


def _dataset(path, cfg=None, train=False, seed=0, classes=None):
    with open_store(path) as reader:
        label_map, videos = build_label_map(reader.videos, classes)
    return FeatureDataset(path, videos, label_map, cfg or DataConfig(), train=train, seed=seed)


# --------------------------------------------------------------------------- frame selection


def test_head_takes_first_frames_after_skip():
    cfg = DataConfig(max_frames=4, skip_first=2)
    assert select_frames(10, cfg, train=True).tolist() == [2, 3, 4, 5]
    assert select_frames(5, cfg, train=True).tolist() == [2, 3, 4]  # shorter: used whole


def test_skip_first_always_leaves_one_frame():
    cfg = DataConfig(max_frames=4, skip_first=10)
    assert select_frames(3, cfg, train=False).tolist() == [2]
    assert effective_length(3, cfg) == 1


def test_uniform_spreads_evenly_and_keeps_ends():
    cfg = DataConfig(max_frames=5, sampling="uniform")
    idx = select_frames(101, cfg, train=False)
    assert idx.tolist() == [0, 25, 50, 75, 100]
    idx = select_frames(37, DataConfig(max_frames=10, sampling="uniform"), train=True)
    gaps = np.diff(idx)
    assert idx[0] == 0 and idx[-1] == 36 and len(idx) == 10
    assert gaps.min() >= 3 and gaps.max() <= 5  # 36 / 9 = 4 frames apart, rounded


def test_random_crop_is_a_window_and_reproducible():
    cfg = DataConfig(max_frames=8, sampling="random-crop", skip_first=3)
    starts = set()
    for seed in range(30):
        idx = select_frames(40, cfg, train=True, rng=np.random.default_rng(seed))
        assert np.array_equal(idx, np.arange(idx[0], idx[0] + 8))
        assert 3 <= idx[0] <= 40 - 8
        starts.add(int(idx[0]))
    assert len(starts) > 10  # really random over seeds
    again = select_frames(40, cfg, train=True, rng=np.random.default_rng(7))
    assert np.array_equal(again, select_frames(40, cfg, train=True, rng=np.random.default_rng(7)))
    # Evaluation is deterministic: the centred window of the frames after skip_first.
    assert select_frames(40, cfg, train=False).tolist() == list(range(3 + 14, 3 + 22))


def test_random_crop_short_video_used_whole():
    cfg = DataConfig(max_frames=50, sampling="random-crop")
    idx = select_frames(12, cfg, train=True, rng=np.random.default_rng(0))
    assert idx.tolist() == list(range(12))


# --------------------------------------------------------------------------- dataset


def test_dataset_reads_the_selected_frames(store):
    cfg = DataConfig(max_frames=10, skip_first=1, sampling="uniform")
    ds = _dataset(store, cfg)
    originals = {vid: x for vid, x, _ in frame_videos()}
    for i in range(len(ds)):
        item = ds[i]
        vid = ds.video_ids[i]
        n = len(originals[vid])
        expected = select_frames(n, cfg, train=False)
        assert item.x.dtype == torch.float32
        assert item.x[:, 0].long().tolist() == expected.tolist()  # column 0 = frame number
        assert torch.all(item.x[:, 1] == int(vid[3:]))
        assert len(item.x) == ds.lengths[i] == effective_length(n, cfg)
        np.testing.assert_array_equal(item.x.numpy(), originals[vid][expected])


def test_random_crop_differs_by_epoch_not_by_call(store):
    ds = _dataset(store, DataConfig(max_frames=5, sampling="random-crop"), train=True, seed=3)
    long_video = int(np.argmax(ds.n_frames))
    a = ds[(long_video, 1)].x
    assert torch.equal(a, ds[(long_video, 1)].x)
    crops = {int(ds[(long_video, e)].x[0, 0]) for e in range(12)}
    assert len(crops) > 3


def test_uint8_store_is_dequantized(tmp_path):
    videos = [(vid, np.clip(x / 30, -2, 2), labels) for vid, x, labels in frame_videos(5)]
    path = write_store(tmp_path / "q.zarr", videos, dim=8, dtype="uint8")
    ds = _dataset(path, DataConfig(max_frames=1000))
    q = quantization_attrs()
    for i in range(len(ds)):
        raw = quantize(dict((v, x) for v, x, _ in videos)[ds.video_ids[i]])
        expected = dequantize(raw, q["min"], q["max"])
        np.testing.assert_array_equal(ds[i].x.numpy(), expected)
        # Quantization is lossy but within half a bin (+ YouTube-8M's half-bin bias).
        assert np.abs(expected - videos[int(ds.video_ids[i][3:])][1]).max() < 4 / 255 + 1e-6


def test_dataset_pickles_without_an_open_reader(store):
    ds = _dataset(store)
    ds[0]  # opens the store in this process
    assert ds._reader is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._reader is None
    assert torch.equal(clone[3].x, ds[3].x)
    ds.close()


# --------------------------------------------------------------------------- collate, batches


def test_collate_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="at least one sample"):
        collate([])


def test_collate_pads_with_zeros_and_keeps_lengths():
    label_map = LabelMap(("a", "b", "c"), multilabel=True)
    xs = [torch.ones(n, 4) * (i + 1) for i, n in enumerate((3, 1, 5))]
    samples = [
        Sample(x, torch.from_numpy(label_map.encode(lbl)), i)
        for i, (x, lbl) in enumerate(zip(xs, (["a"], ["b", "c"], []), strict=True))
    ]
    batch = collate(samples)
    assert batch.x.shape == (3, 5, 4)
    assert batch.lengths.tolist() == [3, 1, 5]
    for i, n in enumerate((3, 1, 5)):
        assert torch.all(batch.x[i, :n] == i + 1)
        assert torch.all(batch.x[i, n:] == 0)
    assert batch.labels.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert batch.index.tolist() == [0, 1, 2]


def _padding_fraction(batches, lengths):
    padded = sum(len(b) * max(lengths[i] for i, _ in b) for b in batches)
    return 1 - sum(lengths) / padded


def test_bucket_sampler_covers_every_video_once_and_reduces_padding():
    lengths = np.random.default_rng(0).integers(1, 300, size=1000)
    kw = {"batch_size": 16, "seed": 5}
    bucketed = BucketBatchSampler(lengths, shuffle=True, bucket_batches=8, **kw)
    plain = BucketBatchSampler(lengths, shuffle=True, bucket=False, **kw)
    for sampler in (bucketed, plain):
        sampler.set_epoch(2)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i, _ in b]
        assert sorted(flat) == list(range(1000))
        assert all(e == 2 for b in batches for _, e in b)
    pad_b = _padding_fraction(list(bucketed), lengths)
    pad_p = _padding_fraction(list(plain), lengths)
    assert pad_b < 0.15 and pad_p > 0.3  # uniform lengths 1..300
    # Buckets: each batch spans a narrow length range; batches come in shuffled order.
    first = [lengths[b[0][0]] for b in bucketed]
    assert not np.all(np.diff(first) >= 0)


def test_bucket_sampler_is_seeded_per_epoch_and_deterministic_for_eval():
    lengths = np.random.default_rng(1).integers(1, 50, size=100)
    a = BucketBatchSampler(lengths, 8, shuffle=True, seed=1)
    b = BucketBatchSampler(lengths, 8, shuffle=True, seed=1)
    a.set_epoch(1), b.set_epoch(1)
    assert list(a) == list(b)
    b.set_epoch(2)
    assert [i for i, _ in next(iter(a))] != [i for i, _ in next(iter(b))]
    ev = BucketBatchSampler(lengths, 8, shuffle=False)
    order = [i for batch in ev for i, _ in batch]
    assert order == list(np.argsort(lengths, kind="stable"))
    assert order == [i for batch in ev for i, _ in batch]


def _collect(ds, cfg, epochs=(1, 2), context=None):
    loader = make_loader(ds, cfg, shuffle=True, seed=11, multiprocessing_context=context)
    out = []
    for epoch in epochs:
        loader.batch_sampler.set_epoch(epoch)
        out.append([tuple(t.clone() for t in batch) for batch in loader])
    return out


@pytest.mark.parametrize("workers,context", [(2, "fork"), (2, "spawn"), (4, "fork")])
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_batches_identical_for_any_worker_count(tmp_path, workers, context):
    path = make_frame_store(tmp_path / "s.zarr")
    cfg = DataConfig(max_frames=6, sampling="random-crop", batch_size=4, bucket_batches=2)
    ds = _dataset(path, cfg, train=True, seed=9)
    reference = _collect(ds, cfg)
    n = len(ds)
    ds.close()
    parallel_cfg = DataConfig(**{**cfg.to_dict(), "num_workers": workers, "classes": None})
    other = _collect(
        _dataset(path, parallel_cfg, train=True, seed=9), parallel_cfg, context=context
    )
    assert len(reference[0]) == len(other[0]) > 3
    for ref_epoch, epoch in zip(reference, other, strict=True):
        for ref, got in zip(ref_epoch, epoch, strict=True):
            for a, b in zip(ref, got, strict=True):
                assert torch.equal(a, b)
    # Persistent workers still see each new epoch: crops of the same videos change.
    first_frame = [
        {int(i): float(x[0, 0]) for batch in epoch for x, i in zip(batch[0], batch[3], strict=True)}
        for epoch in other
    ]
    assert first_frame[0].keys() == first_frame[1].keys() == set(range(n))
    assert first_frame[0] != first_frame[1]


def test_batches_identical_for_any_chunk_cache_size(tmp_path):
    path = make_frame_store(tmp_path / "s.zarr")
    cfg = DataConfig(max_frames=6, sampling="random-crop", batch_size=4, bucket_batches=2)
    uncached = DataConfig(**{**cfg.to_dict(), "cache_mb": 0, "classes": None})
    reference = _collect(_dataset(path, cfg, train=True, seed=9), cfg)
    other = _collect(_dataset(path, uncached, train=True, seed=9), uncached)
    assert len(reference[0]) > 3
    for ref_epoch, epoch in zip(reference, other, strict=True):
        for ref, got in zip(ref_epoch, epoch, strict=True):
            for a, b in zip(ref, got, strict=True):
                assert torch.equal(a, b)


# --------------------------------------------------------------------------- batch reads

# Lengths that start mid-chunk, end on a chunk boundary and span three chunks (both streams'
# chunks hold 256 rows).
BATCH_LENGTHS = [3, 253, 256, 600, 1, 130, 41, 70, 9]


def _two_dtype_store(path, fmt="zarr"):
    """Stream rgb: uint8-1024 (YouTube-8M quantized); audio: float32-128. Row r of a video holds
    r in audio's column 0, so a misplaced frame shows."""
    rng = np.random.default_rng(3)
    quant = quantization_attrs()
    streams = {
        "rgb": {"dim": 1024, "dtype": "uint8", "quantization": quant},
        "audio": {"dim": 128, "dtype": "float32"},
    }
    with create_store(path, format=fmt, attrs={"backbone": "random"}, streams=streams) as w:
        for v, n in enumerate(BATCH_LENGTHS):
            audio = rng.normal(size=(n, 128)).astype(np.float32)
            audio[:, 0] = np.arange(n)
            rgb = rng.integers(0, 256, size=(n, 1024), dtype=np.uint8)
            w.write(f"vid{v:03d}", {"rgb": rgb, "audio": audio}, labels=(LABELS[v % 3],))
    return path


def _check_against_direct_reads(ds, batch, epoch, streams):
    """``batch`` is each video's frames as read one video at a time, padded with zeros."""
    with open_store(ds.store_path) as reader:
        for b, i in enumerate(batch.index.tolist()):
            frames = ds.frame_indices(i, epoch)
            parts = [reader.read(ds.video_ids[i], name)[frames] for name in streams]
            expected = np.concatenate(parts, axis=1)
            n = len(frames)
            assert batch.lengths[b] == n
            assert batch.x[b, :n].numpy().tobytes() == expected.tobytes()
            assert not batch.x[b, n:].any()
            assert torch.equal(batch.labels[b], torch.from_numpy(ds.targets.dense([i])[0]))
    assert batch.x.shape[1] == int(batch.lengths.max())


@pytest.mark.parametrize(
    ("fmt", "sampling", "max_frames"),
    [("zarr", "head", 1000), ("zarr", "uniform", 50), ("zarr", "random-crop", 100),
     ("hdf5", "uniform", 50)],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_batches_equal_direct_reads_for_any_workers_and_cache(tmp_path, fmt, sampling, max_frames):
    """A batch read whole (uint8 dequantized and float32 copied into one padded buffer, only
    the selected rows read) equals the videos read one by one, for 0 or 2 workers and any
    chunk cache; streams are concatenated in the order asked."""
    path = _two_dtype_store(tmp_path / f"two.{'zarr' if fmt == 'zarr' else 'h5'}", fmt)
    seen = []
    for streams in (("rgb", "audio"), ("audio", "rgb")):
        for cache_mb, workers in ((0, 0), (None, 0), (1, 2)):
            cfg = DataConfig(
                max_frames=max_frames, sampling=sampling, batch_size=3, bucket_batches=2,
                cache_mb=cache_mb, num_workers=workers, streams=streams,
            )  # fmt: skip
            ds = _dataset(path, cfg, train=True, seed=4)
            batches = _collect(ds, cfg, epochs=(1,))[0]
            for batch in batches:
                _check_against_direct_reads(ds, Batch(*batch), 1, streams)
            seen.append(sorted(i for batch in batches for i in batch[3].tolist()))
            ds.close()
    assert seen[0] == list(range(len(BATCH_LENGTHS))) and all(s == seen[0] for s in seen)


def test_video_level_batches_are_the_streams_vectors(tmp_path):
    path = write_sum_store(tmp_path / "v.zarr", 12, level="video")
    ds = _dataset(path, DataConfig(streams=("audio", "rgb")))
    batch = ds.__getitems__([5, 0, 11])
    assert batch.lengths.tolist() == [1, 1, 1] and batch.x.shape == (3, 1, 12)
    with open_store(path) as reader:
        for b, i in enumerate((5, 0, 11)):
            vid = ds.video_ids[i]
            expected = np.concatenate([reader.mean(vid, "audio"), reader.mean(vid, "rgb")])
            assert batch.x[b, 0].numpy().tobytes() == expected.tobytes()


def test_collate_passes_a_read_batch_through_and_pads_samples_alike(store):
    ds = _dataset(store, DataConfig(max_frames=20))
    batch = ds.__getitems__([4, 1, 7])
    assert collate(batch) is batch
    again = collate([ds[i] for i in (4, 1, 7)])
    for a, b in zip(batch, again, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- label map


def _table(rows):
    return pd.DataFrame(
        [{"video_id": v, "labels": tuple(lbl), "status": s, "n_frames": 5} for v, lbl, s in rows]
    )


def test_label_map_sorted_over_ok_videos_and_multilabel_detection():
    videos = _table(
        [("a", ["zebra"], "ok"), ("b", ["ant", "zebra"], "ok"), ("c", ["moth"], "timeout")]
    )
    label_map, kept = build_label_map(videos)
    assert label_map.labels == ("ant", "zebra")  # moth only on a failed video
    assert label_map.multilabel
    assert kept["video_id"].tolist() == ["a", "b"]
    assert label_map.encode(["zebra", "unknown"]).tolist() == [0.0, 1.0]


def test_sparse_targets_equal_the_dense_multi_hot_rows():
    label_map = LabelMap(("a", "b", "c", "d"), multilabel=True)
    videos = [("c", "a"), ("b",), (), ("d", "d", "x"), ("c", "a"), ("x",), ("a", "b", "c", "d")]
    targets = label_map.encode_all(videos)
    dense = np.zeros((len(videos), 4), np.float32)  # written out by hand from the lists above
    for row, cols in enumerate([[0, 2], [1], [], [3], [0, 2], [], [0, 1, 2, 3]]):
        dense[row, cols] = 1.0
    assert targets.shape == (7, 4) and len(targets) == 7
    np.testing.assert_array_equal(targets.dense(), dense)
    for rows in ([6, 0, 2], [2], [5, 5, 1], []):  # any order, repeats, empty rows
        np.testing.assert_array_equal(targets.dense(rows), dense[rows].reshape(len(rows), 4))
    assert targets.class_counts().tolist() == [3, 2, 3, 2]
    assert targets.row_lengths().tolist() == [2, 1, 0, 1, 2, 0, 4]
    again = MultiHot.from_dense(dense)
    np.testing.assert_array_equal(again.indptr, targets.indptr)
    np.testing.assert_array_equal(again.indices, targets.indices)
    for labels, row in zip(videos, dense, strict=True):
        np.testing.assert_array_equal(label_map.encode(labels), row)


def test_balanced_weights_skip_unlabelled_videos_and_favour_rare_labels():
    targets = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]], np.float32)
    weights = balanced_weights(MultiHot.from_dense(targets))
    # 1 / (videos of the rarest label): a 3, a 3, b 1 (rarest of a, b), none, c 1.
    expected = np.array([1 / 3, 1 / 3, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(weights, expected / expected.sum())


def test_label_map_class_subset_excludes_other_videos():
    videos = _table([("a", ["x"], "ok"), ("b", ["y", "x"], "ok"), ("c", ["z"], "ok")])
    label_map, kept = build_label_map(videos, classes=("y", "z"))
    assert label_map.labels == ("y", "z")
    assert not label_map.multilabel  # "x" is outside the subset
    assert kept["video_id"].tolist() == ["b", "c"]
    assert kept["labels"].tolist() == [("y",), ("z",)]
    with pytest.raises(ConfigError, match="not found"):
        build_label_map(videos, classes=("y", "nope"))


def test_label_map_round_trip(tmp_path):
    label_map = LabelMap(("b", "a"), multilabel=False)
    ck.write_json(tmp_path / ck.LABEL_MAP, label_map.to_dict())
    assert LabelMap.from_dict(ck.read_json(tmp_path / ck.LABEL_MAP)) == label_map


@pytest.mark.parametrize("bucket", [True, False])
@pytest.mark.parametrize("n", [9, 17, 33, 41])
def test_training_batches_never_hold_a_single_video(n, bucket):
    # BatchNorm cannot train on one example; a lone leftover joins the batch before it.
    lengths = np.random.default_rng(n).integers(1, 50, n)
    sampler = BucketBatchSampler(lengths, 8, shuffle=True, bucket=bucket, bucket_batches=2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert min(len(b) for b in batches) > 1
        assert sorted(i for b in batches for i, _ in b) == list(range(n))
        assert len(batches) == len(sampler)


@pytest.mark.parametrize("bucket", [True, False])
def test_a_batch_size_of_one_gives_one_video_per_batch_as_counted(bucket):
    # The lone last video was merged as at any size, but len() did not count the merge: the
    # schedule then waited for batches that never came (a hang, or ZeroDivisionError).
    sampler = BucketBatchSampler(np.arange(1, 35), 1, shuffle=True, bucket=bucket)
    batches = list(sampler)
    assert [len(b) for b in batches] == [1] * 34 and len(sampler) == 34


# --------------------------------------------------------------------------- chunk cache hint


def test_cache_hint_names_a_size_that_serves_later_epochs_from_memory(tmp_path, caplog):
    from heads.run import hint_cache_size
    from vidfeat.errors import StoreIntegrityError

    rng = np.random.default_rng(0)
    videos = [
        (f"v{i:02d}", rng.normal(size=(40 + 7 * i, 64)).astype(np.float32), (LABELS[i % 2],))
        for i in range(12)
    ]
    path = write_store(tmp_path / "f.zarr", videos, dim=64, dtype="float32")
    ds = _dataset(path, DataConfig(max_frames=1000, cache_mb=0))
    assert ds.stored_mib == sum(len(x) for _, x, _ in videos) * 64 * 4 / 2**20
    empty = FeatureDataset(path, ds_videos(path).iloc[:0], ds.label_map, ds.cfg)
    sets = {"train": ds, "val": empty, "test": empty}
    with caplog.at_level("INFO", logger="heads.run"):
        suggested = hint_cache_size(sets, ds.cfg)
    assert suggested is not None and f"--cache-mb {suggested}" in caplog.text
    assert hint_cache_size(sets, DataConfig(cache_mb=suggested)) is None  # it fits now

    # With the suggested cache, a second epoch needs nothing from the files.
    cached = _dataset(path, DataConfig(max_frames=1000, cache_mb=suggested))
    first = [cached[i].x.clone() for i in range(len(cached))]
    (features,) = [p for p in path.rglob("features") if p.is_dir()]
    features.rename(features.with_name("moved"))
    for i in range(len(cached)):
        assert torch.equal(cached[i].x, first[i])
    with pytest.raises(StoreIntegrityError):  # without it, every epoch reads the files again
        ds[0]


def ds_videos(path):
    with open_store(path) as reader:
        return build_label_map(reader.videos)[1]


def test_sparse_targets_index_like_the_dense_array_they_replace():
    dense = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], np.float32)
    targets = MultiHot.from_dense(dense)
    for i in (0, 1, 2, -1, -3):
        np.testing.assert_array_equal(targets[i], dense[i])
    np.testing.assert_array_equal(targets[[2, -1, 0]], dense[[2, -1, 0]])
    with pytest.raises(IndexError):
        targets[3]
    with pytest.raises(IndexError):
        targets[[0, -4]]
