"""Manifest parsing and validation against real files on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidfeat.errors import ManifestError
from vidfeat.manifest import ManifestEntry, read_manifest, write_manifest


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_relative_paths_labels_split_and_group(tmp_path: Path) -> None:
    _touch(tmp_path / "videos" / "a.mp4")
    absolute = _touch(tmp_path / "elsewhere" / "b.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "video_id,path,labels,split,group\n"
        "007,videos/a.mp4,cat; dog ,train,g1\n"
        f"b,{absolute},,test,\n"
    )
    a, b = read_manifest(manifest)
    assert a == ManifestEntry(
        "007", tmp_path / "videos" / "a.mp4", ("cat", "dog"), "train", "g1", 2
    )
    assert b.path == absolute and b.labels == () and b.split == "test" and b.line == 3


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "video_id,path,labels\n"
        "a,a.mp4,x\n"
        "a,a.mp4,y\n"  # duplicate id
        ",a.mp4,z\n"  # empty id
        "c,missing.mp4,z\n"  # missing file
        "d,,z\n"  # empty path
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    problems = err.value.problems
    assert len(problems) == 4
    assert "line 3: duplicate video_id 'a' (first on line 2)" in problems
    assert "line 4: empty video_id" in problems
    assert any(p.startswith("line 5: file not found") and "missing.mp4" in p for p in problems)
    assert "line 6: empty path" in problems
    assert "4 problem(s)" in str(err.value)


def test_missing_columns_and_missing_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,file\n1,a.mp4\n")
    with pytest.raises(ManifestError, match=r"missing required column.*video_id, path, labels"):
        read_manifest(manifest)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("video_id,path,labels\n")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(empty)


def test_check_files_can_be_skipped(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels\nx,later.mp4,a\n")
    assert read_manifest(manifest, check_files=False)[0].path == tmp_path / "later.mp4"


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    video = _touch(tmp_path / "v" / "a.mp4")
    entries = [ManifestEntry("a", video, ("x", "y"), "val", "g")]
    write_manifest(entries, tmp_path / "out.csv")
    (back,) = read_manifest(tmp_path / "out.csv")
    assert (back.video_id, back.path, back.labels, back.split, back.group) == (
        "a",
        video,
        ("x", "y"),
        "val",
        "g",
    )


def test_committed_demo_manifest_matches_the_generator(tmp_path: Path) -> None:
    import csv

    from data_manifests.make_demo import CLASSES

    root = Path(__file__).resolve().parents[2]
    rows = list(csv.DictReader((root / "data_manifests" / "demo.csv").open()))
    assert len(rows) == 8 * len(CLASSES)
    assert {r["labels"] for r in rows} == {name for name, _, _ in CLASSES}
    assert all(r["path"] == f"../demo/videos/{r['labels']}/{r['video_id']}.mp4" for r in rows)
