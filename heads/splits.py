"""Train/val/test splits: taken from a ``split`` column when one exists, else made here.

Made splits are deterministic (a seed, never process state), stratified per class and
group-aware: when a ``group`` column exists (e.g. clips cut from one source video), every
group lands in exactly one split, so near-duplicates never leak from train into test.

Stratification is greedy, in the spirit of iterative stratification (Sechidis et al. 2011):
each class gets an integer quota per split (rounded with a carry across classes, so many tiny
classes still fill the test set), then units (groups, or single videos) are placed rarest label
first into the split that still wants that label most.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from vidfeat import atomic
from vidfeat.errors import ConfigError, VidfeatError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_NO_LABEL = "\0none"  # stratum for videos without labels


def _clean(values: pd.Series) -> pd.Series:
    """Strings with missing values as ''."""
    return values.astype(object).where(values.notna(), "").astype(str).str.strip()


def read_split_file(path: str | Path) -> pd.DataFrame:
    """Read a CSV (or Parquet) with ``video_id`` and a ``split`` and/or ``group`` column; a
    manifest works, read as ``vidfeat extract`` reads it."""
    from vidfeat.manifest import read_table

    try:
        df = read_table(path)
    except VidfeatError as exc:
        raise ConfigError(f"cannot read split file {path}: {exc}") from exc
    if "video_id" not in df.columns or not {"split", "group"} & set(df.columns):
        raise ConfigError(
            f"split file {path} needs a video_id column and a split and/or group column; "
            f"found: {', '.join(df.columns)}"
        )
    if df["video_id"].duplicated().any():
        dupes = df.loc[df["video_id"].duplicated(), "video_id"].tolist()[:5]
        raise ConfigError(f"split file {path} repeats video ids, e.g. {dupes}")
    return df[[c for c in ("video_id", "split", "group") if c in df.columns]]


def merge_split_file(videos: pd.DataFrame, split_file: pd.DataFrame) -> pd.DataFrame:
    """Take ``split``/``group`` from the split file; videos it does not list are dropped."""
    listed = videos["video_id"].isin(split_file["video_id"])
    if not listed.any():
        raise ConfigError("the split file lists none of the store's videos")
    if not listed.all():
        log.warning("%d videos are not in the split file and are left out", int((~listed).sum()))
    # A typo in the file's ids would otherwise only show as classes short of videos.
    unknown = sorted(set(split_file["video_id"]) - set(videos["video_id"]))
    if unknown:
        log.warning(
            "the split file names %d video(s) the store has no features for, e.g. %s: "
            "they are ignored",
            len(unknown),
            unknown[:3],
        )
    cols = [c for c in ("split", "group") if c in split_file.columns]
    base = videos.loc[listed].drop(columns=[c for c in cols if c in videos.columns])
    return base.merge(split_file[["video_id", *cols]], on="video_id", how="left")


def normalise_split_names(values: pd.Series) -> pd.Series:
    """Map split names (train/training, val/valid/validation/dev, test/testing) to SPLITS."""
    cleaned = _clean(values).str.lower()
    bad = sorted(set(cleaned) - set(_ALIASES))
    if bad:
        raise ConfigError(f"unknown split names {bad}; use train, val or test")
    return cleaned.map(_ALIASES)


def assign_splits(
    videos: pd.DataFrame,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> pd.DataFrame:
    """``video_id, split`` for each row of ``videos`` (columns video_id, labels[, split, group]).

    A non-empty ``split`` column is used as given (val carved out of train if it has none);
    otherwise test_fraction of all videos go to test and val_fraction of the rest to val.
    """
    groups = _units(videos)
    labels = [tuple(x) for x in videos["labels"]]
    given = _clean(videos["split"]) if "split" in videos.columns else None
    if given is not None and (given != "").any():
        if (given == "").any():
            raise ConfigError(
                f"{int((given == '').sum())} videos have no split while others do; "
                "give every video a split (or none, to split automatically)"
            )
        split = normalise_split_names(given).to_numpy(dtype=object)
        _warn_groups_across_splits(groups, split)
    else:
        split = np.full(len(videos), "train", dtype=object)
        test = _two_way(labels, groups, np.ones(len(split), bool), test_fraction, seed)
        split[test] = "test"
    if not (split == "val").any():
        pool = split == "train"
        val = _two_way(labels, groups, pool, val_fraction, seed + 1)
        split[val] = "val"
    out = pd.DataFrame({"video_id": videos["video_id"].to_numpy(), "split": split})
    _warn_thin_classes(labels, split, given=given is not None and (given != "").any())
    return out


def _units(videos: pd.DataFrame) -> np.ndarray:
    """A group key per video: its ``group`` when given, else its own id."""
    ids = videos["video_id"].astype(str).to_numpy(dtype=object)
    if "group" not in videos.columns:
        return np.array(["v:" + v for v in ids], dtype=object)
    group = _clean(videos["group"]).to_numpy(dtype=object)
    return np.array(
        [("g:" + g) if g else ("v:" + v) for g, v in zip(group, ids, strict=True)], dtype=object
    )


def _quotas(totals: Counter, fraction: float) -> dict[str, int]:
    """Per-label count wanted in the held-out side, rounded with a carry across labels."""
    quotas, carry = {}, 0.0
    for label in sorted(totals, key=lambda k: (totals[k], k)):
        exact = fraction * totals[label] + carry
        # At least one video of each label stays on the training side.
        k = max(0, min(math.floor(exact + 0.5), totals[label] - 1))
        carry = min(1.0, max(-1.0, exact - k))
        quotas[label] = k
    return quotas


def _two_way(
    labels: list[tuple[str, ...]], groups: np.ndarray, pool: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask (over all videos) of the videos in ``pool`` moved to the held-out side."""
    held = np.zeros(len(labels), dtype=bool)
    idx = np.flatnonzero(pool)
    if fraction <= 0 or len(idx) < 2:
        return held
    members: dict[str, list[int]] = {}
    for i in idx:
        members.setdefault(groups[i], []).append(int(i))
    strata = {
        g: Counter(x for i in m for x in (labels[i] or (_NO_LABEL,))) for g, m in members.items()
    }
    totals = sum(strata.values(), Counter())
    want = {"held": _quotas(totals, fraction)}
    want["keep"] = {k: totals[k] - v for k, v in want["held"].items()}
    size_want = {"held": fraction * len(idx), "keep": (1 - fraction) * len(idx)}
    have = {"held": Counter(), "keep": Counter()}
    size = {"held": 0, "keep": 0}
    # Sort keys first so the result never depends on the store's row order, then shuffle.
    keys = sorted(members)
    order = np.random.default_rng(seed).permutation(len(keys))
    keys = [keys[i] for i in order]
    keys.sort(key=lambda g: (min(totals[k] for k in strata[g]), -len(members[g])))
    for g in keys:
        rare = min(strata[g], key=lambda k: (totals[k], k))
        side = max(
            ("keep", "held"),
            key=lambda s: (want[s][rare] - have[s][rare], size_want[s] - size[s]),
        )
        have[side].update(strata[g])
        size[side] += len(members[g])
        if side == "held":
            held[members[g]] = True
    return held


def _warn_groups_across_splits(groups: np.ndarray, split: np.ndarray) -> None:
    per_group = pd.Series(split).groupby(pd.Series(groups)).nunique()
    shared = [g[2:] for g in per_group.index[per_group > 1] if g.startswith("g:")]
    if shared:
        log.warning("%d groups span several given splits, e.g. %s", len(shared), shared[:3])


def _warn_thin_classes(labels: list[tuple[str, ...]], split: np.ndarray, *, given: bool) -> None:
    present: dict[str, set[str]] = {}
    for labs, s in zip(labels, split, strict=True):
        for label in labs:
            present.setdefault(label, set()).add(s)
    for s in SPLITS:
        if not (split == s).any():  # not thin classes: no video was meant to go there
            why = "the given splits name none" if given else "its fraction is 0"
            log.warning("no %s videos: %s", s, why)
            continue
        missing = sorted(k for k, v in present.items() if s not in v)
        if missing:
            log.warning(
                "%d classes have no %s videos (too few videos), e.g. %s",
                len(missing),
                s,
                missing[:5],
            )


def inherit_splits(
    videos: pd.DataFrame,
    parent_splits: pd.DataFrame,
    *,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    given: bool = False,
) -> pd.DataFrame:
    """``video_id, split`` for ``videos`` when a run continues from a parent run's split.

    Videos the parent split keep their split, so none of its training videos lands in the new
    test set; the others are split afresh (stratified, seeded). With ``given`` (a split file was
    merged into ``videos``) its splits are used as they are, and a leak is only warned about.
    """
    fractions = {"test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed}
    if given:
        splits = assign_splits(videos, **fractions)
        seen = splits.merge(parent_splits, on="video_id", suffixes=("", "_parent"))
        leaked = int(((seen["split_parent"] == "train") & (seen["split"] != "train")).sum())
        if leaked:
            log.warning(
                "%d val/test videos were training videos of the parent run: "
                "their metrics are optimistic",
                leaked,
            )
        return splits
    known = videos["video_id"].isin(parent_splits["video_id"])
    parts = [parent_splits[parent_splits["video_id"].isin(videos["video_id"])]]
    if (~known).any():
        parts.append(assign_splits(videos.loc[~known].reset_index(drop=True), **fractions))
    splits = pd.concat(parts, ignore_index=True)[["video_id", "split"]]
    return videos[["video_id"]].merge(splits, on="video_id", how="left")


def save_splits(splits: pd.DataFrame, path: str | Path) -> None:
    """Write ``video_id,split`` CSV (atomically)."""
    with atomic.atomic_open(path, "w", newline="") as fh:
        splits[["video_id", "split"]].to_csv(fh, index=False)


def load_splits(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["split"] = normalise_split_names(df["split"])
    return df
