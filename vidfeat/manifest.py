"""Read and validate video manifests (CSV, or Parquet when pyarrow is installed).

Columns: ``video_id``, ``path``, ``labels`` (``;``-separated, may be empty), optional ``split``
and ``group``. Relative paths resolve against the manifest's folder; a URL (``s3://...``) is
kept as it is. Validation collects every
problem with its line number before failing, so a user fixes a manifest in one pass. Line
numbers are physical lines of the file (a quoted field may span several); every row must have
exactly as many fields as the header.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from vidfeat.decode.probe import not_a_file
from vidfeat.errors import ConfigError, ManifestError
from vidfeat.location import Location, RemotePath, as_location
from vidfeat.store.base import LABEL_SEPARATOR, video_id_problem  # the stores' rules, shared

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video_id", "path", "labels")
OPTIONAL_COLUMNS = ("split", "group")
MAX_LISTED_PROBLEMS = 50


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    video_id: str
    path: Location  # a local path, or a URL fsspec opens (fetched by the decode worker)
    labels: tuple[str, ...]
    split: str = ""
    group: str = ""
    line: int = 0  # line in the manifest file (header is line 1)


def parse_labels(text: str) -> tuple[str, ...]:
    """``;``-separated labels, each once (a video's labels are a set, as the store keeps them)."""
    parts = (part.strip() for part in str(text).split(LABEL_SEPARATOR))
    return tuple(dict.fromkeys(part for part in parts if part))


Row = tuple[int, dict[str, str]]  # (line of the row's first physical line, column -> text)


def _read_rows(path: Path) -> tuple[list[str], list[Row], list[str]]:
    """Header, rows and per-row structural problems (wrong field count)."""
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    if not path.is_file():
        kind = not_a_file(path.stat().st_mode) or "not a regular file"
        # A pipe (`<(...)`) would be read once by validation and find nothing after.
        raise ManifestError(f"manifest {path} is {kind}; give a CSV or Parquet file")
    try:
        if path.suffix.lower() == ".parquet":
            return _parquet_rows(path)
        return _csv_rows(path)
    except ImportError as exc:
        raise ManifestError(f"reading {path.name} needs pyarrow: pip install pyarrow") from exc
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot parse manifest {path}: {exc}") from exc


def _parquet_rows(path: Path) -> tuple[list[str], list[Row], list[str]]:
    df = pd.read_parquet(path)
    header = [str(c).strip() for c in df.columns]
    rows = [
        (i + 2, dict(zip(header, map(_parquet_text, r), strict=True)))
        for i, r in enumerate(df.itertuples(False))
    ]
    return header, rows, []


def _parquet_text(value: object) -> str:
    """A Parquet cell as the CSV text it stands for: a null is an empty cell (not "nan"), and
    a list (of labels) is its items joined by the label separator."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return LABEL_SEPARATOR.join(_parquet_text(v) for v in value)
    if value is None or (not isinstance(value, str) and bool(pd.isna(value))):
        return ""
    return str(value)


def _csv_rows(path: Path) -> tuple[list[str], list[Row], list[str]]:
    """Read with the csv module, not pandas: pandas turns one extra field on every row into an
    index column (ids become paths, silently), and numbers lines by records, not lines."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, skipinitialspace=True)
        try:
            header = [c.strip() for c in next(reader, [])]
            rows: list[Row] = []
            problems: list[str] = []
            start = reader.line_num + 1
            for fields in reader:
                # A quoted field may span lines: a row starts where the previous one ended.
                line, start = start, reader.line_num + 1
                if not any(f.strip() for f in fields):
                    continue  # blank line
                if len(fields) != len(header):
                    problems.append(
                        f"line {line}: {len(fields)} fields, the header has {len(header)}"
                    )
                    continue
                rows.append((line, dict(zip(header, fields, strict=True))))
        except csv.Error as exc:
            raise ManifestError(
                f"cannot parse manifest {path}, line {reader.line_num}: {exc}"
            ) from exc
    return header, rows, problems


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A manifest-like file (CSV or Parquet) as a table of stripped text, read as manifests are
    (header spaces, Excel's BOM, nulls as empty cells); for other tools' lists of videos, such
    as a split file. Raises ManifestError on rows of another length than the header."""
    header, rows, problems = _read_rows(Path(path))
    if problems:
        raise ManifestError(
            f"{path} has {len(problems)} problem(s):", problems[:MAX_LISTED_PROBLEMS]
        )
    table = pd.DataFrame([[row[c] for c in header] for _, row in rows], columns=header, dtype=str)
    return table.apply(lambda column: column.str.strip())


def _resolve(folder: Path, raw_path: str) -> Location:
    """The video's location: a URL as it is; a path absolute, relative ones from the
    manifest's ``folder`` (absolute), so the store's ``source_path`` means the same from any
    folder. One Path per row where it can: a manifest of a million rows made five."""
    video_path = as_location(raw_path)  # a URL stays a URL (never joined to the manifest)
    if isinstance(video_path, RemotePath):
        return video_path
    joined = folder / video_path
    # Drop "x/.." lexically, unless a symlink makes that another file (then keep the path).
    tidy = os.path.normpath(joined)
    if tidy == str(joined):
        return joined
    same = joined.exists() and os.path.exists(tidy) and os.path.samefile(tidy, joined)
    return Path(tidy) if same else joined


def _path_problem(video_path: Location) -> tuple[str | None, bool]:
    """Why a listed path can never be a video (a directory, FIFO, device, ...), and whether
    anything is there (one stat for both).

    A file that is missing or cannot be read now is no manifest problem: extraction records
    it as a failed video (``missing``, ``unreadable``) and goes on with the others.
    """
    if isinstance(video_path, RemotePath):
        return None, True  # checked by the decode worker when it fetches the object
    try:
        mode = video_path.stat().st_mode
    except OSError:
        return None, False
    kind = not_a_file(mode)
    return (None if kind is None else f"{video_path} is {kind}, not a video file"), True


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> list[ManifestEntry]:
    """Parse and validate a manifest; raise one ManifestError listing every problem.

    ``check_files``: refuse paths that exist but are not regular files, and log how many
    files are missing (they become per-video failures, not manifest errors).
    """
    if str(path) == "-":
        raise ManifestError("a manifest is not read from standard input; save it to a file")
    path = Path(path)
    columns, rows, problems = _read_rows(path)
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:  # one would silently hide the other
        raise ManifestError(f"manifest {path} repeats column(s) {', '.join(repeated)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(
            f"manifest {path} is missing required column(s) {', '.join(missing)}",
            [
                f"found columns: {', '.join(columns) or '(none)'}",
                *_column_hints(path, columns, missing),
            ],
        )
    _check_other_columns(path, columns)
    entries: list[ManifestEntry] = []
    first_line: dict[str, int] = {}  # video_id -> the line it first appears on
    n_missing = 0
    folder = path.parent.absolute()
    for line, rec in rows:
        vid = rec["video_id"].strip()
        problems.extend(_id_problems(vid, line, first_line))
        video_path, missing = _entry_path(folder, rec["path"].strip(), line, check_files, problems)
        if video_path is None:
            continue
        n_missing += missing
        entries.append(
            ManifestEntry(
                video_id=vid,
                path=video_path,
                labels=parse_labels(rec["labels"]),
                split=rec.get("split", "").strip(),
                group=rec.get("group", "").strip(),
                line=line,
            )
        )
    if not entries and not problems:
        problems.append("the manifest has no rows")
    if problems:
        problems.sort(key=_line_of)
        shown = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        raise ManifestError(f"manifest {path} has {len(problems)} problem(s):", shown)
    if entries and n_missing == len(entries):
        # Every path missing at once is most often a wrong folder or a step not run yet. Not
        # refused: the videos may be on the Ray workers' nodes only (docs/ray.md), or removed
        # after a finished job whose rerun does nothing.
        demo = " (the demo's videos: run `make demo`, or data_manifests/make_demo.py)"
        log.warning(
            "none of the %d videos in %s exists here, e.g. %s; relative paths resolve against "
            "the manifest's folder%s. Missing videos are recorded as failed; after fixing the "
            "paths, rerun with --retry-failed",
            len(entries),
            path,
            entries[0].path,
            demo if path.name == "demo.csv" else "",
        )
    elif n_missing:
        log.warning(
            "%d of %d videos in %s do not exist; they will be recorded as failed (missing)",
            n_missing,
            len(entries),
            path,
        )
    return entries


def _check_other_columns(path: Path, columns: list[str]) -> None:
    """Columns the manifest has besides the ones read. One that differs from an optional
    column only in case (``Split``) is refused: its values would be dropped without a word
    (a curated split replaced by a computed one). Others are named in a warning, with the
    column a misspelt one was probably meant to be."""
    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    others = [c for c in columns if c not in known]
    cased = [c for c in others if c.lower() in known and c.lower() not in columns]
    if cased:
        raise ManifestError(
            f"manifest {path} has column(s) {', '.join(cased)}: column names are lower case",
            [f"rename {c!r} to {c.lower()!r}" for c in cased],
        )
    if others:
        hints = []
        for c in others:
            close = difflib.get_close_matches(c.lower(), known, n=1, cutoff=0.75)
            hints.append(f"{c} (did you mean {close[0]}?)" if close else c)
        log.warning(
            "%s: column(s) %s are not read; a manifest's columns are %s",
            path,
            ", ".join(hints),
            ", ".join(known),
        )


# Names other tools give the required columns (YouTube-8M's CSVs, Kinetics', datasets' own).
_COLUMN_ALIASES = {
    "video_id": ("id", "video", "vid", "youtube_id", "ytid", "name", "clip", "clip_id"),
    "path": ("file", "filename", "file_name", "filepath", "video_path", "location", "url"),
    "labels": ("label", "class", "classes", "category", "categories", "tags", "target"),
}


def _column_hints(path: Path, columns: list[str], missing: list[str]) -> list[str]:
    """What the columns found were probably meant to be: another separator than the comma
    (a CSV read as one column), or another name for a required column (each found column
    named at most once: aliases first, then near misses)."""
    if len(columns) == 1 and path.suffix.lower() != ".parquet":
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if sep in columns[0]:
                return [f"a manifest is comma-separated; this one looks separated by {name}"]
    claimed: dict[str, str] = {}  # found column -> the required one it was probably meant as
    for want in missing:
        alias = [c for c in columns if c.strip().lower() in _COLUMN_ALIASES[want]]
        if alias and alias[0] not in claimed:
            claimed[alias[0]] = want
    for want in (w for w in missing if w not in claimed.values()):
        free = [c for c in columns if c not in claimed]
        close = difflib.get_close_matches(want, free, n=1, cutoff=0.6)
        if close:
            claimed[close[0]] = want
    return [f"rename {found!r} to {want!r}" for found, want in claimed.items()]


def _id_problems(vid: str, line: int, first_line: dict[str, int]) -> list[str]:
    """What is wrong with this line's video_id (empty, or seen before); records a new one."""
    if not vid:
        return [f"line {line}: empty video_id"]
    if problem := video_id_problem(vid):
        return [f"line {line}: video_id {vid!r} {problem}"]
    if vid in first_line:
        return [f"line {line}: duplicate video_id {vid!r} (first on line {first_line[vid]})"]
    first_line[vid] = line
    return []


def _entry_path(
    folder: Path, raw_path: str, line: int, check_files: bool, problems: list[str]
) -> tuple[Location | None, bool]:
    """Where this line's video lives, or None (with the reason added to ``problems``) when the
    line has no usable path, and whether it was found missing (only with ``check_files``). A
    path that exists but is no file is a problem, yet still listed, so that every line's
    problems are reported at once."""
    if not raw_path:
        problems.append(f"line {line}: empty path")
        return None, False
    try:
        video_path = _resolve(folder, raw_path)
    except ConfigError as exc:  # e.g. a URL with credentials in it
        problems.append(f"line {line}: {exc}")
        return None, False
    if not check_files:
        return video_path, False
    problem, exists = _path_problem(video_path)
    if problem:
        problems.append(f"line {line}: {problem}")
    return video_path, not exists


def _line_of(problem: str) -> int:
    head = problem.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 0


def write_manifest(entries: list[ManifestEntry], path: str | os.PathLike) -> None:
    """Write entries as CSV, with paths relative to the manifest where possible."""
    path = Path(path)
    rows = []
    for e in entries:
        try:
            p = os.path.relpath(e.path, path.parent)
        except ValueError:  # different drive on Windows
            p = str(e.path)
        rows.append(
            {
                "video_id": e.video_id,
                "path": p,
                "labels": LABEL_SEPARATOR.join(e.labels),
                "split": e.split,
                "group": e.group,
            }
        )
    pd.DataFrame(rows, columns=[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]).to_csv(path, index=False)
