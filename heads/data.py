"""Stage-2 data path: store -> per-video frame selection -> padded batches.

The store is opened lazily inside whichever process reads (the main process or a DataLoader
worker), never inherited across fork or pickled for spawn. All randomness is a pure function of
(seed, epoch, video index), and the epoch travels with each index from the sampler, which lives
in the main process; batches are therefore identical for any ``num_workers`` and start method,
and with persistent workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from heads.config import DataConfig
from heads.errors import MissingStreamError
from heads.labels import LabelMap, build_label_map
from heads.splits import normalise_split_names
from vidfeat.errors import ConfigError
from vidfeat.store import StoreReader, open_store
from vidfeat.store.schema import StreamSpec

SampleKey = tuple[int, int]  # (index into the dataset, epoch)


# ------------------------------------------------------------------------------ frames


def effective_length(n_frames: int, cfg: DataConfig) -> int:
    """Frames a video contributes after skip_first and max_frames (always >= 1)."""
    skip = min(cfg.skip_first, max(n_frames - 1, 0))
    return max(1, min(cfg.max_frames, n_frames - skip))


def select_frames(
    n_frames: int, cfg: DataConfig, *, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices of the frames to use, in time order.

    skip_first drops leading frames (keeping at least one), then ``max_frames`` are chosen:
    head takes the first, uniform spreads them evenly over the whole remainder (first and
    last included), random-crop takes a random window when training (``rng``) and the centred
    window otherwise. A remainder no longer than max_frames is used whole.
    """
    skip = min(cfg.skip_first, max(n_frames - 1, 0))
    avail = n_frames - skip
    n = cfg.max_frames
    if avail <= n:
        return np.arange(skip, n_frames)
    if cfg.sampling == "uniform":
        return skip + np.linspace(0, avail - 1, n).round().astype(np.int64)
    if cfg.sampling == "random-crop":
        if train:
            if rng is None:
                raise ValueError("random-crop training needs an rng")
            start = int(rng.integers(0, avail - n + 1))
        else:
            start = (avail - n) // 2
        return np.arange(skip + start, skip + start + n)
    return np.arange(skip, skip + n)


# ------------------------------------------------------------------------------ dataset


def open_data_store(store: str | Path, cfg: DataConfig) -> StoreReader:
    """``store`` open for reading, with ``cfg``'s decoded-chunk cache (``--cache-mb``)."""
    cache = {} if cfg.cache_mb is None else {"cache_mb": cfg.cache_mb}
    return open_store(store, **cache)


def _store_videos(
    store: str | Path, reader: StoreReader, label_map: LabelMap | None, split: str | None
) -> tuple[LabelMap, pd.DataFrame]:
    """The store's labelled ok videos (of ``split``), and a label map over all of them."""
    built, kept = build_label_map(reader.videos)
    label_map = label_map if label_map is not None else built
    if split is None:
        return label_map, kept
    if "split" not in kept.columns or not (kept["split"].astype(str) != "").any():
        raise ConfigError(
            f"store {store} has no split column: use split=None for all videos, or "
            "heads.load_run(run_dir).dataset(split) for a trained run's own splits"
        )
    names = normalise_split_names(kept["split"].astype(str))
    return label_map, kept[names == normalise_split_names(pd.Series([split]))[0]]


def resolve_streams(
    reader: StoreReader, wanted: Sequence[str] | None, *, what: str = ""
) -> tuple[str, ...]:
    """``wanted`` checked against the store's streams; None means every stream of the store."""
    held = tuple(reader.streams)
    if wanted is None:
        return held
    missing = [name for name in wanted if name not in held]
    if missing:
        reads = f"{what} reads {', '.join(wanted)}; " if what else ""
        raise MissingStreamError(
            f"store {reader.path} has no stream {', '.join(repr(m) for m in missing)} "
            f"({reads}the store holds: {', '.join(held)})"
        )
    return tuple(wanted)


class Sample(NamedTuple):
    x: torch.Tensor  # (T, D) float32
    labels: torch.Tensor  # (C,) float32 multi-hot
    index: int


class Batch(NamedTuple):
    x: torch.Tensor  # (B, T, D) float32, zero-padded after each video's length
    lengths: torch.Tensor  # (B,) int64
    labels: torch.Tensor  # (B, C) float32 multi-hot
    index: torch.Tensor  # (B,) int64 dataset indices, to map outputs back to video ids

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in self))


class FeatureDataset(Dataset):
    """Videos of a store (one split, or all), as a torch ``Dataset`` of :class:`Sample`.

    ``FeatureDataset("feats.zarr", split="train")`` takes the store's ok, labelled videos (of
    that value of its ``split`` column), a label map over all of them, and ``DataConfig``'s
    frame selection. Batch it with :func:`collate` (padding) or :func:`make_loader`
    (length bucketing too). Training code passes ``videos``, ``label_map`` and ``cfg`` itself.

    Keys are an index or (index, epoch); random crops depend on (seed, epoch, index) only.
    Each frame is the store streams ``streams`` (default ``cfg.streams``; None: all of them)
    concatenated in that order. A video-level store gives each video as one frame: its
    streams' video-level vectors, concatenated. A DataLoader reads a whole batch in one
    ``__getitems__`` call, into one padded buffer.
    """

    def __init__(
        self,
        store: str | Path,
        videos: pd.DataFrame | None = None,
        label_map: LabelMap | None = None,
        cfg: DataConfig | None = None,
        *,
        split: str | None = None,
        streams: Sequence[str] | None = None,
        train: bool = False,
        seed: int = 0,
        reader: StoreReader | None = None,
    ) -> None:
        cfg = cfg if cfg is not None else DataConfig()
        if streams is not None:
            cfg = dataclasses.replace(cfg, streams=tuple(streams))
        if streams is not None or videos is None:
            # One open (or the caller's reader) for the stream check and the videos.
            given = contextlib.nullcontext(reader) if reader is not None else open_store(store)
            with given as opened:
                if streams is not None:  # a missing stream is named now, not mid-epoch
                    resolve_streams(opened, cfg.streams)
                if videos is None:
                    label_map, videos = _store_videos(store, opened, label_map, split)
        if label_map is None:
            raise ConfigError("a label map must come with the videos")
        self.label_map = label_map
        self.store_path = str(store)
        self.video_ids: list[str] = [str(v) for v in videos["video_id"]]
        self.n_frames = np.asarray(videos["n_frames"], dtype=np.int64)  # (N,)
        self.targets = label_map.encode_all(videos["labels"])  # (N, C), sparse
        self.cfg = cfg
        self.train = train
        self.seed = seed
        self.lengths = np.array([effective_length(int(n), cfg) for n in self.n_frames], np.int64)
        # ``reader``: one the caller opened on this store and closes (a run shares one among its
        # splits, so the store's index is built and held once). This process reads through it;
        # another one (a DataLoader worker) opens its own.
        self._reader = reader
        self._pid: int | None = os.getpid() if reader is not None else None
        self._borrowed = reader is not None

    @property
    def dim(self) -> int:
        """Feature dimension D of every frame: the widths of the streams read, summed."""
        return sum(int(spec.dim) for spec in self._specs())

    @property
    def stored_mib(self) -> float:
        """MiB the frames of these videos take in the store's chunks, as stored (what the
        reader's chunk cache holds to keep them all; uint8 streams take a quarter of float32)."""
        row = sum(int(spec.dim) * np.dtype(spec.dtype).itemsize for spec in self._specs())
        frames = len(self) if self._store().level == "video" else int(self.n_frames.sum())
        return frames * row / (1 << 20)

    def _specs(self) -> list[StreamSpec]:
        """The store streams read, in the order their features are concatenated per frame."""
        reader = self._store()
        return [reader.streams[name] for name in self.cfg.streams or reader.streams]

    def __len__(self) -> int:
        return len(self.video_ids)

    def _store(self) -> StoreReader:
        # A reader inherited through fork shares file handles with its parent: reopen.
        if self._reader is None or self._pid != os.getpid():
            self._reader = open_data_store(self.store_path, self.cfg)
            self._pid, self._borrowed = os.getpid(), False
        return self._reader

    def frame_indices(self, index: int, epoch: int = 0) -> np.ndarray:
        """Which stored frames item ``index`` uses in ``epoch``."""
        rng = None
        if self.train and self.cfg.sampling == "random-crop":
            rng = np.random.default_rng([self.seed, epoch, index])
        return select_frames(int(self.n_frames[index]), self.cfg, train=self.train, rng=rng)

    def __getitem__(self, key: int | SampleKey) -> Sample:
        batch = self.__getitems__([key])
        return Sample(batch.x[0], batch.labels[0], int(batch.index[0]))

    def __getitems__(self, keys: Sequence[int | SampleKey]) -> Batch:
        """The videos of ``keys`` as one padded :class:`Batch` (what a DataLoader calls with a
        batch's keys; :func:`collate` passes it through).

        Each video's frames are converted once, from the store's chunks straight into the
        batch (dequantized there for uint8 streams), and only its padding is zeroed: no
        per-video arrays, no second copy to pad them. In a DataLoader worker the batch lives
        in shared memory, so it reaches the main process without another copy.
        """
        pairs = [(int(k), 0) if isinstance(k, (int, np.integer)) else k for k in keys]
        indices = np.array([int(i) for i, _ in pairs], dtype=np.int64)
        reader = self._store()
        names = list(self.cfg.streams or reader.streams)
        dim = self.dim
        if reader.level == "video":
            frames: list[slice | np.ndarray | None] = [None] * len(pairs)
            lengths = np.ones(len(pairs), dtype=np.int64)
        else:
            frames = [_as_slice(self.frame_indices(int(i), int(e))) for i, e in pairs]
            lengths = np.array([_count(f) for f in frames], dtype=np.int64)
        x = batch_buffer((len(pairs), int(lengths.max(initial=0)), dim))
        out = x.numpy()
        for b, (index, pick) in enumerate(zip(indices, frames, strict=True)):
            reader.read_into(self.video_ids[index], out[b, : lengths[b]], names, pick)
            out[b, lengths[b] :] = 0
        labels = torch.from_numpy(self.targets.dense(indices))
        return Batch(x, torch.from_numpy(lengths), labels, torch.from_numpy(indices))

    def close(self) -> None:
        """Close the reader this dataset opened in this process (not one it was given)."""
        if self._reader is not None and self._pid == os.getpid() and not self._borrowed:
            self._reader.close()
        self._reader, self._pid = None, None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"], state["_pid"] = None, None
        return state


def _as_slice(frames: np.ndarray) -> slice | np.ndarray:
    """``frames`` as a slice when it is a run of consecutive indices (read without a gather)."""
    if len(frames) and frames[-1] - frames[0] == len(frames) - 1:
        return slice(int(frames[0]), int(frames[-1]) + 1)
    return frames


def _count(frames: slice | np.ndarray) -> int:
    return frames.stop - frames.start if isinstance(frames, slice) else len(frames)


def batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor for a batch: in shared memory inside a DataLoader
    worker, as torch's default collate does, since a batch built elsewhere is copied into
    shared memory on its way to the main process."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=torch.float32)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=torch.float32).new(storage).view(shape)


def collate(samples: Sequence[Sample] | Batch) -> Batch:
    """Zero-pad to the longest video of the batch. A :class:`Batch` (what
    ``FeatureDataset.__getitems__`` reads) is padded already and passes through."""
    if isinstance(samples, Batch):
        return samples
    if not samples:
        raise ValueError("collate needs at least one sample: a batch cannot be empty")
    lengths = torch.tensor([s.x.shape[0] for s in samples], dtype=torch.int64)
    x = batch_buffer((len(samples), int(lengths.max()), samples[0].x.shape[1]))
    for b, s in enumerate(samples):
        x[b, : len(s.x)] = s.x
        x[b, len(s.x) :] = 0
    labels = torch.stack([s.labels for s in samples])
    index = torch.tensor([s.index for s in samples], dtype=torch.int64)
    return Batch(x, lengths, labels, index)
