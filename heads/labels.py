"""Class names in logit order: the label map a run builds from its store's ok videos
(``build_label_map``) and saves with every checkpoint, so predictions name their classes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vidfeat.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelMap:
    """Class names in logit order, and whether videos may carry several labels."""

    labels: tuple[str, ...]
    multilabel: bool

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"a label map needs unique class names, got {self.labels!r}")
        object.__setattr__(self, "labels", tuple(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, labels: Iterable[str]) -> np.ndarray:
        """Multi-hot (C,) float32; labels outside the map are ignored."""
        return self.encode_all([labels]).dense()[0]

    def encode_all(self, videos: Iterable[Iterable[str]]) -> MultiHot:
        """Each video's labels as one row of a sparse multi-hot matrix; labels outside the map
        are ignored, and a label given twice counts once."""
        index = {name: i for i, name in enumerate(self.labels)}
        # Videos often share a label set: each distinct set is looked up once.
        rows: dict[tuple[str, ...], list[int]] = {}
        lengths: list[int] = []
        indices: list[int] = []
        for labels in videos:
            key = tuple(labels)
            row = rows.get(key)
            if row is None:
                row = rows[key] = sorted({index[n] for n in key if n in index})
            lengths.append(len(row))
            indices.extend(row)
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return MultiHot(indptr, np.asarray(indices, dtype=np.int32), len(self.labels))

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "multilabel": bool(self.multilabel)}

    @classmethod
    def from_dict(cls, data: dict) -> LabelMap:
        return cls(labels=tuple(data["labels"]), multilabel=bool(data["multilabel"]))


@dataclass(frozen=True, eq=False)
class MultiHot:
    """(N, C) multi-hot targets kept sparse: row i's classes are
    ``indices[indptr[i]:indptr[i + 1]]``, ascending.

    Held dense, targets take 4 bytes per video per class: 15 KB a video with YouTube-8M's 3,862
    classes, 60 GB for its 3.9M training videos. Sparse, they take 8 bytes per video and 4 per
    label, and a batch's rows are made dense only when the batch is built.
    """

    indptr: np.ndarray  # (N + 1,) int64
    indices: np.ndarray  # (nnz,) int32
    n_classes: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.indptr) - 1, self.n_classes

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def dense(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(len(rows), C) float32 multi-hot of ``rows`` (default: every row), in that order."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} videos")
        rows = rows % max(len(self), 1)  # negative rows count from the end, as in numpy
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        counts = stops - starts
        out = np.zeros((len(rows), self.n_classes), dtype=np.float32)
        # Every (row, label) pair at once: each label's position is its row's start plus its
        # rank within the row.
        first = np.cumsum(counts) - counts
        at = np.repeat(starts - first, counts) + np.arange(int(counts.sum()))
        out[np.repeat(np.arange(len(rows)), counts), self.indices[at]] = 1.0
        return out

    def __getitem__(self, rows: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Dense rows, as an (N, C) array would give them: (C,) for one row, else (len, C)."""
        if isinstance(rows, (int, np.integer)):
            return self.dense([int(rows)])[0]
        return self.dense(rows)

    def class_counts(self) -> np.ndarray:
        """(C,) int64 videos per class."""
        return np.bincount(self.indices, minlength=self.n_classes).astype(np.int64)

    def row_lengths(self) -> np.ndarray:
        """(N,) int64 labels per video."""
        return np.diff(self.indptr)

    @classmethod
    def from_dense(cls, targets: np.ndarray) -> MultiHot:
        """From an (N, C) array whose non-zero entries are the labels."""
        targets = np.asarray(targets)
        rows, cols = np.nonzero(targets)  # row-major: each row's classes ascending
        indptr = np.zeros(len(targets) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(targets)), out=indptr[1:])
        return cls(indptr, cols.astype(np.int32), targets.shape[1])


def multilabel_loss(loss: str, data: LabelMap | bool) -> bool:
    """Whether a run trained with ``--loss loss`` has sigmoid (multi-label) outputs rather than
    softmax: ``auto`` follows the data (its label map's ``multilabel``: whether any video
    carries several labels)."""
    if loss != "auto":
        return loss == "multi"
    return data.multilabel if isinstance(data, LabelMap) else bool(data)


def _nothing_to_train_on(videos: pd.DataFrame, ok: pd.DataFrame) -> str:
    """Why no video can train: none extracted, or none carries a label, and what to do."""
    retry = "vidfeat info STORE says why, and extract --retry-failed tries again"
    if videos.empty:
        return "the store holds no videos: nothing to train on"
    if ok.empty:
        return (
            f"none of the store's {len(videos)} videos was extracted (all failed): nothing to "
            f"train on; {retry}"
        )
    failed = videos[videos["status"] != "ok"]
    labelled_failed = sum(bool(labels) for labels in failed["labels"])
    extracted = "1 extracted video carries" if len(ok) == 1 else f"{len(ok)} extracted videos carry"
    if labelled_failed:
        return (
            f"the store's {extracted} no labels, and the {labelled_failed} labelled failed: "
            f"nothing to train on; {retry}"
        )
    return (
        f"the store's {extracted} no labels: nothing to train on; labels come from the "
        "manifest's labels column when the videos are extracted"
    )


def build_label_map(
    videos: pd.DataFrame, classes: Sequence[str] | None = None
) -> tuple[LabelMap, pd.DataFrame]:
    """Label map over the ok videos (all their labels, sorted, or ``classes`` in that order).

    Returns the map and the ok videos that carry at least one of its labels (others are left
    out with a warning), with ``labels`` restricted to the map.
    """
    ok = videos[videos["status"] == "ok"]
    seen = sorted({name for labels in ok["labels"] for name in labels})
    if classes is not None:
        unknown = sorted(set(classes) - set(seen))
        if unknown:
            raise ConfigError(f"classes not found in the store's videos: {unknown}")
        names = tuple(classes)
    else:
        names = tuple(seen)
    if not names:
        raise ConfigError(_nothing_to_train_on(videos, ok))
    keep_set = set(names)
    kept_labels = [tuple(x for x in labels if x in keep_set) for labels in ok["labels"]]
    has_label = np.array([bool(x) for x in kept_labels], dtype=bool)
    if not has_label.all():
        log.warning(
            "%d ok videos have none of the %d classes; left out", (~has_label).sum(), len(names)
        )
    kept = ok.loc[has_label].copy()
    kept["labels"] = [x for x, keep in zip(kept_labels, has_label, strict=True) if keep]
    multilabel = any(len(x) > 1 for x in kept["labels"])
    return LabelMap(names, multilabel), kept.reset_index(drop=True)
