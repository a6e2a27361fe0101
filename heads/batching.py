"""Which videos go into which batch: length bucketing, class-balanced draws, the DataLoader.

The sampler lives in the main process and hands out (index, epoch) keys, so every random choice
is a pure function of (seed, epoch) here and of (seed, epoch, video index) in
``heads.data.FeatureDataset``: batches are identical for any ``num_workers``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from heads.config import DataConfig
from heads.data import FeatureDataset, SampleKey, collate
from heads.labels import MultiHot


class BucketBatchSampler(Sampler[list[SampleKey]]):
    """Batches of (index, epoch) keys.

    Training (shuffle): a seeded permutation per epoch is cut into pools of ``bucket_batches``
    batches; each pool is sorted by length and cut into batches, and all batches are shuffled.
    Evaluation: all videos sorted by length (ties by index), in order. ``bucket=False`` keeps the
    permutation (or index order) as is. With ``weights`` (training only), an epoch is as many
    seeded draws with replacement, video i drawn with probability weights[i].
    ``set_start(k)`` skips the first k batches of the epoch (a run resumed mid-epoch).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        bucket: bool = True,
        bucket_batches: int = 16,
        seed: int = 0,
        weights: np.ndarray | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.weights = weights  # (N,) probabilities summing to 1, or None
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucket = bucket
        self.pool = batch_size * bucket_batches
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, batch: int) -> None:
        self.start = batch

    def _batches(self) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable") if self.bucket else np.arange(n)
            return [order[i : i + bs] for i in range(0, n, bs)]
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n) if self.weights is None else rng.choice(n, n, p=self.weights)
        if not self.bucket:
            return _cut_for_training(perm, bs)
        batches = []
        for p, q in _pool_bounds(n, self.pool):
            pool = perm[p:q]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += _cut_for_training(pool, bs)
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for batch in self._batches()[self.start :]:
            yield [(int(i), self.epoch) for i in batch]

    def __len__(self) -> int:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            return -(-n // bs)
        if not self.bucket:
            return _training_batch_count(n, bs)
        bounds = _pool_bounds(n, self.pool)
        return sum(_training_batch_count(q - p, bs) for p, q in bounds)


def _cut_for_training(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` cut into batches; a last batch of one video joins the batch before it, since
    BatchNorm cannot train on a single example (it raises on one value per channel). At a
    batch size of 1 every batch is one video (heads with BatchNorm refuse that size)."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if batch_size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def _pool_bounds(n: int, pool: int) -> list[tuple[int, int]]:
    """[start, stop) of each bucketing pool; a last pool of one video joins the one before."""
    bounds = [(p, min(p + pool, n)) for p in range(0, n, pool)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _training_batch_count(n: int, batch_size: int) -> int:
    count = -(-n // batch_size)
    return count - 1 if batch_size > 1 and count > 1 and n % batch_size == 1 else count


def balanced_weights(targets: MultiHot) -> np.ndarray:
    """(N,) draw probabilities ∝ 1 / (videos of each video's rarest label): every class is
    drawn about equally often (exactly so for single-label data)."""
    # (C,) float64: choice() wants probabilities summing to 1 to double precision.
    counts = np.maximum(targets.class_counts().astype(np.float64), 1.0)
    per_label = 1.0 / counts[targets.indices]  # (nnz,)
    per_video = np.zeros(len(targets))  # (N,); 0 for a video without labels
    labelled = targets.row_lengths() > 0
    per_video[labelled] = np.maximum.reduceat(per_label, targets.indptr[:-1][labelled])
    return per_video / per_video.sum()


class _InheritedSessions(logging.Filter):
    """Drops asyncio's "Unclosed client session"/"Unclosed connector" reports in a DataLoader
    worker. A forked worker holds a copy of the parent's object-store client (s3fs, gcsfs) with
    its HTTP session; the worker reads through a client of its own, and the copy is collected
    unclosed when the worker ends. It must not be closed there: its connections are the
    parent's, so the report says nothing a user could act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Unclosed client session", "Unclosed connector"))


def worker_init(worker_id: int) -> None:
    """Each DataLoader worker's set-up (``worker_init_fn``)."""
    logging.getLogger("asyncio").addFilter(_InheritedSessions())


def make_loader(
    dataset: FeatureDataset,
    cfg: DataConfig,
    *,
    shuffle: bool,
    seed: int = 0,
    pin_memory: bool = False,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with length bucketing and padding collate."""
    balanced = shuffle and cfg.sampler == "balanced"
    sampler = BucketBatchSampler(
        dataset.lengths,
        cfg.batch_size,
        shuffle=shuffle,
        bucket=cfg.bucket,
        bucket_batches=cfg.bucket_batches,
        seed=seed,
        weights=balanced_weights(dataset.targets) if balanced else None,
    )
    workers = cfg.num_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        multiprocessing_context=multiprocessing_context if workers > 0 else None,
        worker_init_fn=worker_init if workers > 0 else None,
        # Its own generator, so creating loaders never advances the global torch RNG (which
        # dropout draws from and which a resumed run restores).
        generator=torch.Generator().manual_seed(seed),
    )
