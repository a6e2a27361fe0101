import logging
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from heads.splits import (
    assign_splits,
    load_splits,
    merge_split_file,
    read_split_file,
    save_splits,
)
from vidfeat.errors import ConfigError


def _videos(counts: dict[str, int], groups: int | None = None, seed: int = 0) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(seed)
    for label, n in counts.items():
        for i in range(n):
            rows.append({"video_id": f"{label}-{i:03d}", "labels": (label,)})
    df = pd.DataFrame(rows)
    if groups:
        df["group"] = [f"g{int(g)}" for g in rng.integers(0, groups, size=len(df))]
    return df


def test_deterministic_and_independent_of_row_order():
    videos = _videos({"a": 50, "b": 30, "c": 20})
    first = assign_splits(videos, seed=3)
    again = assign_splits(videos, seed=3)
    shuffled = assign_splits(videos.sample(frac=1, random_state=1), seed=3)
    key = first.set_index("video_id")["split"]
    assert first.equals(again)
    assert shuffled.set_index("video_id")["split"].reindex(key.index).equals(key)
    other_seed = assign_splits(videos, seed=4).set_index("video_id")["split"]
    assert not other_seed.equals(key)


def test_stratified_fractions_per_class():
    counts = {"a": 100, "b": 50, "c": 25, "d": 10}
    videos = _videos(counts)
    split = assign_splits(videos, test_fraction=0.2, val_fraction=0.1, seed=0)
    label = videos["labels"].str[0]
    for name, n in counts.items():
        per = Counter(split.loc[label == name, "split"])
        assert abs(per["test"] - 0.2 * n) <= 1
        assert abs(per["val"] - 0.1 * 0.8 * n) <= 1
        assert per["train"] + per["val"] + per["test"] == n


def test_groups_never_span_splits():
    videos = _videos({"a": 120, "b": 80}, groups=40)
    split = assign_splits(videos, seed=1)
    joined = videos.assign(split=split["split"].to_numpy())
    assert joined.groupby("group")["split"].nunique().max() == 1
    sizes = Counter(split["split"])
    assert set(sizes) == {"train", "val", "test"}
    assert 0.1 < sizes["test"] / len(videos) < 0.35  # whole groups move, so only roughly 20%


def test_given_split_column_is_used_and_val_carved_from_train():
    videos = _videos({"a": 40, "b": 40})
    videos["split"] = ["Testing" if i % 5 == 0 else "training" for i in range(len(videos))]
    split = assign_splits(videos, seed=0)
    assert (split["split"][videos["split"] == "Testing"] == "test").all()
    train_side = split["split"][videos["split"] == "training"]
    assert set(train_side) == {"train", "val"}
    assert abs((train_side == "val").sum() - 0.1 * len(train_side)) <= 2


def test_given_split_with_val_is_kept_verbatim():
    videos = _videos({"a": 6})
    videos["split"] = ["train", "train", "validation", "dev", "test", "train"]
    assert assign_splits(videos)["split"].tolist() == [
        "train",
        "train",
        "val",
        "val",
        "test",
        "train",
    ]


def test_partial_or_unknown_split_names_are_refused():
    videos = _videos({"a": 4})
    videos["split"] = ["train", "", "test", "train"]
    with pytest.raises(ConfigError, match="no split"):
        assign_splits(videos)
    videos["split"] = ["train", "holdout", "test", "train"]
    with pytest.raises(ConfigError, match="holdout"):
        assign_splits(videos)


def test_tiny_classes_degrade_gracefully(caplog):
    # Ten classes of two videos and one singleton: no crash, singletons train, test not empty.
    counts = {f"k{i}": 2 for i in range(10)} | {"solo": 1}
    videos = _videos(counts)
    with caplog.at_level(logging.WARNING, logger="heads.splits"):
        split = assign_splits(videos, seed=0)
    assert split.loc[videos["video_id"] == "solo-000", "split"].item() == "train"
    sizes = Counter(split["split"])
    assert 3 <= sizes["test"] <= 6  # ~20% of 21 despite each class rounding to 0.4
    label = videos["labels"].str[0]
    for name in counts:  # every class keeps a training video
        assert (split.loc[label == name, "split"] == "train").any()
    assert "no val videos" in caplog.text and "no test videos" in caplog.text


def test_multilabel_videos_split_by_rarest_label():
    rows = [
        {"video_id": f"v{i}", "labels": ("common",) + (("rare",) if i < 10 else ())}
        for i in range(100)
    ]
    split = assign_splits(pd.DataFrame(rows), seed=0)
    rare = Counter(split["split"][:10])
    assert rare["test"] == 2 and rare["train"] >= 7


def test_split_file_round_trip_and_merge(tmp_path):
    videos = _videos({"a": 3}).assign(status="ok")
    path = tmp_path / "splits.csv"
    pd.DataFrame(
        {"video_id": ["a-000", "a-001"], "split": ["train", "test"], "path": ["x.mp4", "y.mp4"]}
    ).to_csv(path, index=False)
    merged = merge_split_file(videos, read_split_file(path))
    assert merged["video_id"].tolist() == ["a-000", "a-001"]  # a-002 is not listed
    assert merged["split"].tolist() == ["train", "test"]
    save_splits(assign_splits(merged), tmp_path / "out.csv")
    assert load_splits(tmp_path / "out.csv")["split"].tolist() == ["train", "test"]


def test_split_file_ids_the_store_lacks_are_named(tmp_path, caplog):
    videos = _videos({"a": 2})
    path = tmp_path / "splits.csv"
    path.write_text("video_id,split\na-000,train\na-001,test\nghost,train\nA-000,val\n")
    with caplog.at_level("WARNING", logger="heads.splits"):
        merged = merge_split_file(videos, read_split_file(path))
    assert merged["video_id"].tolist() == ["a-000", "a-001"]
    assert "names 2 video(s) the store has no features for, e.g. ['A-000', 'ghost']" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="heads.splits"):
        merge_split_file(videos, read_split_file(path).iloc[:2])
    assert caplog.text == ""  # every listed id is in the store, every store id listed


def test_split_file_needs_split_or_group(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("video_id,label\na,b\n")
    with pytest.raises(ConfigError, match="split and/or group"):
        read_split_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_split_file(tmp_path / "missing.csv")


def test_a_manifest_is_read_as_a_split_file_as_extract_reads_it(tmp_path):
    # Spaces after the commas (which extract accepts) made the columns " split" and the ids
    # "a-000 ", and a Parquet manifest could not be read at all.
    videos = _videos({"a": 2})
    spaced = tmp_path / "m.csv"
    spaced.write_text(
        "video_id, path, labels, split\na-000 , x.mp4, a, train\na-001, y.mp4, a, test\n"
    )
    merged = merge_split_file(videos, read_split_file(spaced))
    assert merged["split"].tolist() == ["train", "test"]
    pytest.importorskip("pyarrow")
    parquet = tmp_path / "m.parquet"
    pd.DataFrame({"video_id": ["a-000", "a-001"], "split": ["test", None]}).to_parquet(parquet)
    assert read_split_file(parquet)["split"].tolist() == ["test", ""]


def test_a_split_the_given_column_never_names_is_said_plainly(caplog):
    # YouTube-8M's train* files alone: every video is "train", val is carved out of it, and
    # there is no test split at all, which is not a matter of classes with too few videos.
    videos = _videos({"a": 30, "b": 30}).assign(split="train")
    with caplog.at_level(logging.WARNING, logger="heads.splits"):
        split = assign_splits(videos, seed=0)
    assert set(split["split"]) == {"train", "val"}
    assert "no test videos: the given splits name none" in caplog.text
    assert "classes have no test videos" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="heads.splits"):
        assign_splits(videos.drop(columns="split"), test_fraction=0.0, seed=0)
    assert "no test videos: its fraction is 0" in caplog.text
