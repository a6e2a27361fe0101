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
        index = {name: i for i, name in enumerate(self.labels)}
        out = np.zeros(len(self.labels), dtype=np.float32)
        for name in labels:
            if name in index:
                out[index[name]] = 1.0
        return out

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "multilabel": bool(self.multilabel)}

    @classmethod
    def from_dict(cls, data: dict) -> LabelMap:
        return cls(labels=tuple(data["labels"]), multilabel=bool(data["multilabel"]))


def multilabel_loss(loss: str, data: LabelMap | bool) -> bool:
    """Whether a run trained with ``--loss loss`` has sigmoid (multi-label) outputs rather than
    softmax: ``auto`` follows the data (its label map's ``multilabel``: whether any video
    carries several labels)."""
    if loss != "auto":
        return loss == "multi"
    return data.multilabel if isinstance(data, LabelMap) else bool(data)


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
        raise ConfigError("no labelled videos in the store: nothing to train on")
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
