"""Prediction files: the format follows the file suffix, and YouTube-8M vocabulary indices.

``.csv`` (``video_id,predictions`` with "label:score" pairs, or Kaggle's YouTube-8M
``VideoId,LabelConfidencePairs`` with ``fmt="yt8m"``), ``.parquet`` and ``.jsonl`` hold the
same table; ``.npz`` holds the raw (N, C) scores of every class.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from heads.labels import LabelMap
from vidfeat import atomic
from vidfeat.errors import ConfigError
from vidfeat.store.base import LABEL_SEPARATOR

# suffix -> formats that may be written to it (the first is the default for that suffix)
SUFFIX_FORMATS: dict[str, tuple[str, ...]] = {
    ".csv": ("csv", "yt8m"),
    ".parquet": ("parquet",),
    ".jsonl": ("jsonl",),
    ".npz": ("npz",),
}
FORMATS = tuple(dict.fromkeys(f for fmts in SUFFIX_FORMATS.values() for f in fmts))
STDOUT_FORMATS = ("csv", "yt8m", "jsonl")  # text formats that can go to stdout
# Google's vocabulary.csv for YouTube-8M: Index,TrainVideoCount,KnowledgeGraphId,Name,...
VOCABULARY_COLUMNS = ("Index", "KnowledgeGraphId", "Name")


def resolve_format(out: Path | None, fmt: str | None) -> str:
    """The format to write: from ``out``'s suffix, checked against an explicit ``fmt``."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if out is None:
        fmt = fmt or "csv"
        if fmt not in STDOUT_FORMATS:
            raise ConfigError(f"--format {fmt} is binary: give a file with --out")
        return fmt
    allowed = SUFFIX_FORMATS.get(out.suffix.lower())
    if allowed is None:
        suffixes = ", ".join(SUFFIX_FORMATS)
        raise ConfigError(f"cannot tell the format of {out}: use a suffix among {suffixes}")
    if fmt is not None and fmt not in allowed:
        raise ConfigError(
            f"--format {fmt} does not match {out.name}: a {out.suffix} file holds "
            + " or ".join(allowed)
        )
    if allowed[0] == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError("writing .parquet needs pyarrow: pip install 'vidfeat[parquet]'")
    return fmt or allowed[0]


def read_vocabulary(path: str | Path) -> dict[str, int]:
    """Label -> vocabulary index from Google's vocabulary.csv (by Name and KnowledgeGraphId)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read vocabulary {path}: {exc}") from exc
    missing = [c for c in VOCABULARY_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(
            f"vocabulary {path} lacks column(s) {', '.join(missing)} (expected YouTube-8M's "
            "Index,TrainVideoCount,KnowledgeGraphId,Name,...)"
        )
    try:
        index = [int(i) for i in table["Index"]]
    except ValueError as exc:
        raise ConfigError(f"vocabulary {path}: Index must hold integers ({exc})") from None
    mapping = dict(zip(table["KnowledgeGraphId"], index, strict=True))
    mapping.update(zip(table["Name"], index, strict=True))
    mapping.pop("", None)
    return mapping


def vocabulary_indices(labels: tuple[str, ...], vocabulary: dict[str, int] | None) -> list[int]:
    """The vocabulary index of each label, for YouTube-8M's submission format: the label
    itself when it is an index (a store imported from YouTube-8M keeps them so), else its
    entry in ``vocabulary`` (by name or Knowledge Graph id)."""
    names = [lbl for lbl in labels if not lbl.isdigit()]
    if names and vocabulary is None:
        raise ConfigError(
            f"the run's labels are names ({', '.join(names[:3])}, ...), but the yt8m format "
            "needs vocabulary indices: pass --vocabulary vocabulary.csv"
        )
    unknown = [lbl for lbl in names if lbl not in (vocabulary or {})]
    if unknown:
        raise ConfigError(f"labels not in the vocabulary: {', '.join(unknown[:5])}")
    return [int(lbl) if lbl.isdigit() else (vocabulary or {})[lbl] for lbl in labels]


def write_table(table: pd.DataFrame, out: Path, fmt: str) -> None:
    """Write a prediction table atomically (the old file or the new one, never half)."""
    writers = {
        "csv": (lambda fh: table.to_csv(fh, index=False), "w"),
        "yt8m": (lambda fh: table.to_csv(fh, index=False), "w"),
        "jsonl": (lambda fh: table.to_json(fh, orient="records", lines=True), "w"),
        "parquet": (lambda fh: table.to_parquet(fh, index=False), "wb"),
    }
    write, mode = writers[fmt]
    with atomic.atomic_open(out, mode) as fh:
        write(fh)


def write_scores(
    out: Path, video_ids: list[str], scores: np.ndarray, class_names: tuple[str, ...]
) -> None:
    """``.npz`` with ``video_id`` (N,), ``scores`` (N, C) float32 and ``class_names`` (C,)."""

    with atomic.atomic_open(out, "wb") as fh:
        np.savez(
            fh,
            video_id=np.array(video_ids, dtype=str),
            scores=np.asarray(scores, dtype=np.float32),
            class_names=np.array(class_names, dtype=str),
        )


def format_top_k(scores: np.ndarray, names: tuple[str, ...], k: int, sep: str = ":") -> str:
    """'label:score label:score ...' of the k best classes (ties by class index)."""
    order = np.argsort(-scores, kind="stable")[:k]
    return " ".join(f"{names[i]}{sep}{scores[i]:.6f}" for i in order)


def write_predictions(
    stem: Path, video_ids: list[str], scores: np.ndarray, labels: np.ndarray, label_map: LabelMap
) -> None:
    """``stem``.npz (all scores) and ``stem``.csv (top-20 label:score pairs and true labels)."""
    with atomic.atomic_open(stem.with_suffix(".npz"), "wb") as fh:
        np.savez(
            fh,
            video_id=np.array(video_ids, dtype=str),
            scores=scores.astype(np.float32),
            labels=labels.astype(np.uint8),
            class_names=np.array(label_map.labels, dtype=str),
        )
    k = min(20, len(label_map))
    rows = {
        "video_id": video_ids,
        "labels": [LABEL_SEPARATOR.join(np.array(label_map.labels)[y > 0]) for y in labels],
        "predictions": [format_top_k(s, label_map.labels, k) for s in scores],
    }
    with atomic.atomic_open(stem.with_suffix(".csv"), "w", newline="") as fh:
        pd.DataFrame(rows).to_csv(fh, index=False)
