"""Manifest parsing and validation against real files on disk."""

from __future__ import annotations

import logging
import os
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
        "007,videos/a.mp4,cat; dog ;cat,train,g1\n"
        f"b,{absolute},,test,\n"
    )
    a, b = read_manifest(manifest)
    assert a == ManifestEntry(
        "007", tmp_path / "videos" / "a.mp4", ("cat", "dog"), "train", "g1", 2
    )
    assert b.path == absolute and b.labels == () and b.split == "test" and b.line == 3


def test_paths_are_absolute_and_tidy_whatever_the_working_folder(tmp_path, monkeypatch):
    # Given as "lists/../videos/a.mp4" from another folder, the store recorded that text, which
    # means nothing from anywhere else. A symlinked folder keeps its ".." (it is another file).
    video = _touch(tmp_path / "data" / "videos" / "a.mp4")
    _touch(tmp_path / "real" / "b.mp4")
    (tmp_path / "data" / "lists").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "real" / "sub", target_is_directory=True)
    (tmp_path / "real" / "sub").mkdir()
    _touch(tmp_path / "data" / "c.mp4")  # where "link/../c.mp4" would point if read lexically
    manifest = tmp_path / "data" / "lists" / "m.csv"
    rows = "a,../videos/a.mp4,x\nb,../link/../b.mp4,y\nc,../link/../c.mp4,z\n"
    manifest.write_text("video_id,path,labels\n" + rows)
    monkeypatch.chdir(tmp_path)
    a, b, c = read_manifest(Path("data") / "lists" / "m.csv")
    assert a.path == video and a.path.is_absolute()
    assert b.path == tmp_path / "data" / "lists" / ".." / "link" / ".." / "b.mp4"
    assert b.path.samefile(tmp_path / "real" / "b.mp4")
    # real/c.mp4 does not exist: missing, not the other file data/c.mp4.
    assert c.path == tmp_path / "data" / "lists" / ".." / "link" / ".." / "c.mp4"
    assert not c.path.exists()


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "video_id,path,labels\n"
        "a,a.mp4,x\n"
        "a,a.mp4,y\n"  # duplicate id
        ",a.mp4,z\n"  # empty id
        "c,a.mp4,z,extra\n"  # one field too many
        "d,,z\n"  # empty path
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert err.value.problems == [
        "line 3: duplicate video_id 'a' (first on line 2)",
        "line 4: empty video_id",
        "line 5: 4 fields, the header has 3",
        "line 6: empty path",
    ]
    assert "4 problem(s)" in str(err.value)


def test_one_trailing_extra_field_on_every_row_is_refused(tmp_path: Path) -> None:
    # pandas would make video_id the index and read paths as ids, with no error.
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels\na,a.mp4,x,\nb,a.mp4,y,\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert err.value.problems == [
        "line 2: 4 fields, the header has 3",
        "line 3: 4 fields, the header has 3",
    ]


def test_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "video_id,path,labels\n"
        'a,a.mp4,"cat;\ndog"\n'  # lines 2-3: a label list with a quoted newline
        "\n"  # line 4: blank, skipped
        "b,a.mp4,x\n"  # line 5
        "a,a.mp4,x\n"  # line 6
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert err.value.problems == ["line 6: duplicate video_id 'a' (first on line 2)"]
    manifest.write_text('video_id,path,labels\na,a.mp4,"cat;\ndog"\n\nb,a.mp4,x\n')
    a, b = read_manifest(manifest)
    assert (a.line, a.labels, b.line) == (2, ("cat", "dog"), 5)


def test_directories_fifos_and_devices_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "folder.mp4").mkdir()
    os.mkfifo(tmp_path / "pipe.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels\na,folder.mp4,x\nb,pipe.mp4,x\nc,/dev/null,x\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert err.value.problems == [
        f"line 2: {tmp_path / 'folder.mp4'} is a directory, not a video file",
        f"line 3: {tmp_path / 'pipe.mp4'} is a FIFO (named pipe), not a video file",
        "line 4: /dev/null is a character device, not a video file",
    ]


def test_missing_files_are_not_manifest_errors(tmp_path: Path, caplog) -> None:
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels\na,a.mp4,x\nb,gone.mp4,y\n")
    with caplog.at_level(logging.WARNING, logger="vidfeat.manifest"):
        _, gone = read_manifest(manifest)
    assert gone.path == tmp_path / "gone.mp4"
    assert "1 of 2 videos" in caplog.text and "(missing)" in caplog.text


def test_a_manifest_whose_every_video_is_missing_says_what_to_check(tmp_path, caplog) -> None:
    # A fresh checkout's demo.csv: 80 videos recorded as failed, and a rerun after making them
    # skipped them all as done. Not refused (Ray workers may see videos the driver does not).
    manifest = tmp_path / "demo.csv"
    manifest.write_text("video_id,path,labels\na,../videos/a.mp4,x\nb,../videos/b.mp4,y\n")
    with caplog.at_level(logging.WARNING, logger="vidfeat.manifest"):
        entries = read_manifest(manifest)
    assert len(entries) == 2
    assert "none of the 2 videos" in caplog.text and "make demo" in caplog.text
    assert "--retry-failed" in caplog.text


def test_missing_columns_and_missing_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,file\n1,a.mp4\n")
    with pytest.raises(ManifestError, match=r"missing required column.*video_id, path, labels"):
        read_manifest(manifest)
    # What the columns were probably meant to be: another tool's names, a typo, a separator.
    for header, hints in (
        ("id,file,label", ["rename 'id' to 'video_id'", "rename 'file' to 'path'", "'label' to"]),
        ("video_id,pth,labels", ["rename 'pth' to 'path'"]),
        ("video_id;path;labels", ["comma-separated; this one looks separated by semicolons"]),
        ("video_path,labels", ["rename 'video_path' to 'path'"]),  # one hint per column
    ):
        manifest.write_text(header + "\n" + "a,b,c\n")
        with pytest.raises(ManifestError) as info:
            read_manifest(manifest)
        assert all(hint in str(info.value) for hint in hints), str(info.value)
        assert str(info.value).count("rename") <= header.count(",") + 1
    with pytest.raises(ManifestError) as info:  # two claims on one column: only the alias
        manifest.write_text("video_path,labels\na,b\n")
        read_manifest(manifest)
    assert "to 'video_id'" not in str(info.value)
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

    from data_manifests.make_demo import CLASSES, split_of

    root = Path(__file__).resolve().parents[2]
    rows = list(csv.DictReader((root / "data_manifests" / "demo.csv").open()))
    assert len(rows) == 8 * len(CLASSES)
    assert {r["labels"] for r in rows} == {name for name, _, _ in CLASSES}
    assert all(r["path"] == f"../demo/videos/{r['labels']}/{r['video_id']}.mp4" for r in rows)
    assert [r["split"] for r in rows] == [split_of(j, 8) for _ in CLASSES for j in range(8)]
    # Every class has validation and test videos, so training on the demo warns about none.
    assert {(r["labels"], r["split"]) for r in rows} == {
        (name, s) for name, _, _ in CLASSES for s in ("train", "val", "test")
    }


def test_make_demo_refuses_too_few_videos_per_class_as_a_usage_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    script = root / "data_manifests" / "make_demo.py"
    out = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path / "d"), "--per-class", "2"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--per-class must be at least 3" in out.stderr and not (tmp_path / "d").exists()


def test_parquet_nulls_are_empty_cells_and_lists_are_labels(tmp_path: Path) -> None:
    # pandas turned a null label into the label "nan", and a null split into a crash (exit 70);
    # a list of labels became one label "['cat' 'indoor']".
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    for name in ("a", "b", "c"):
        _touch(tmp_path / f"{name}.mp4")
    manifest = tmp_path / "m.parquet"
    pd.DataFrame(
        {
            "video_id": ["a", "b", "c"],
            "path": ["a.mp4", "b.mp4", "c.mp4"],
            "labels": [["cat", "indoor"], None, ["dog"]],
            "split": [None, "train", "test"],
        }
    ).to_parquet(manifest)
    a, b, c = read_manifest(manifest)
    assert (a.labels, a.split) == (("cat", "indoor"), "")
    assert (b.labels, b.split) == ((), "train")
    assert c.labels == ("dog",)
    pd.DataFrame(
        {"video_id": ["a", None], "path": ["a.mp4", "b.mp4"], "labels": ["x", "y"]}
    ).to_parquet(manifest)
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert "line 3: empty video_id" in info.value.problems


def test_repeated_columns_nul_ids_and_unreadable_sources_are_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels,video_id\na,a.mp4,cat,x1\n")
    with pytest.raises(ManifestError, match=r"repeats column.*video_id"):
        read_manifest(manifest)  # the last one silently won
    manifest.write_text('video_id,path,labels\na,a.mp4,cat\n"c\x00",a.mp4,cat\n')
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)  # the writer refused it only after other videos were written
    assert info.value.problems == ["line 3: video_id 'c\\x00' holds a NUL character"]
    with pytest.raises(ManifestError, match="is a directory"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="standard input"):
        read_manifest("-")


def test_a_relative_path_starting_with_a_tilde_is_a_file_name(tmp_path: Path) -> None:
    # "~draft.mp4" names no user's home: Path.expanduser raised (exit 70); it is a file here.
    video = _touch(tmp_path / "~nosuchuser-draft.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels\na,~nosuchuser-draft.mp4,cat\n")
    (entry,) = read_manifest(manifest)
    assert entry.path == video


def test_a_manifest_url_is_refused_as_given(tmp_path: Path) -> None:
    from vidfeat.config import ExtractConfig
    from vidfeat.errors import ConfigError

    # Path() folded "https://" to "https:/" and the message named a file that never was.
    with pytest.raises(ConfigError, match=r"manifest https://example\.com/m\.csv: a URL"):
        ExtractConfig(manifest="https://example.com/m.csv", out=tmp_path / "s.zarr")


def test_a_column_named_in_another_case_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels,Split,GROUP\na,a.mp4,x,test,g\n")
    with pytest.raises(ManifestError, match="Split, GROUP: column names are lower case") as exc:
        read_manifest(manifest)
    assert "rename 'Split' to 'split'" in str(exc.value)


def test_columns_that_are_not_read_are_named_with_the_likely_intended_one(tmp_path, caplog):
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,labels,splt,title\na,a.mp4,x,test,A cat\n")
    with caplog.at_level(logging.WARNING, logger="vidfeat.manifest"):
        (entry,) = read_manifest(manifest)
    assert entry.split == ""  # not read: the warning is what tells the user
    assert "splt (did you mean split?), title are not read" in caplog.text
    caplog.clear()
    manifest.write_text("video_id,path,labels,split,group\na,a.mp4,x,test,g\n")
    with caplog.at_level(logging.WARNING, logger="vidfeat.manifest"):
        read_manifest(manifest)
    assert "not read" not in caplog.text
