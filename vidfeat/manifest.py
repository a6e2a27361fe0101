"""Read and validate video manifests (CSV, or Parquet when pyarrow is installed).

Columns: ``video_id``, ``path``, ``labels`` (``;``-separated, may be empty), optional ``split``
and ``group``. Relative paths resolve against the manifest's folder. Validation collects every
problem with its line number before failing, so a user fixes a manifest in one pass.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from vidfeat.errors import ManifestError

REQUIRED_COLUMNS = ("video_id", "path", "labels")
OPTIONAL_COLUMNS = ("split", "group")
LABEL_SEPARATOR = ";"
MAX_LISTED_PROBLEMS = 50


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    video_id: str
    path: Path
    labels: tuple[str, ...]
    split: str = ""
    group: str = ""
    line: int = 0  # line in the manifest file (header is line 1)


def parse_labels(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(text).split(LABEL_SEPARATOR) if part.strip())


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path).astype(str)
        # Everything as text: ids like "007" must not become integers.
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except ImportError as exc:
        raise ManifestError(f"reading {path.name} needs pyarrow: pip install pyarrow") from exc
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot parse manifest {path}: {exc}") from exc


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> list[ManifestEntry]:
    """Parse and validate a manifest; raise one ManifestError listing every problem."""
    path = Path(path)
    df = _read_table(path)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"manifest {path} is missing required column(s) {', '.join(missing)}",
            [f"found columns: {', '.join(df.columns) or '(none)'}"],
        )
    problems: list[str] = []
    entries: list[ManifestEntry] = []
    first_line: dict[str, int] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2
        rec = row._asdict()
        vid = str(rec["video_id"]).strip()
        raw_path = str(rec["path"]).strip()
        if not vid:
            problems.append(f"line {line}: empty video_id")
        elif vid in first_line:
            problems.append(
                f"line {line}: duplicate video_id {vid!r} (first on line {first_line[vid]})"
            )
        else:
            first_line[vid] = line
        if not raw_path:
            problems.append(f"line {line}: empty path")
            continue
        video_path = Path(raw_path).expanduser()
        if not video_path.is_absolute():
            video_path = path.parent / video_path
        if check_files and not video_path.exists():
            problems.append(f"line {line}: file not found: {video_path}")
        entries.append(
            ManifestEntry(
                video_id=vid,
                path=video_path,
                labels=parse_labels(rec["labels"]),
                split=str(rec.get("split", "") or "").strip(),
                group=str(rec.get("group", "") or "").strip(),
                line=line,
            )
        )
    if not entries and not problems:
        problems.append("the manifest has no rows")
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        raise ManifestError(f"manifest {path} has {len(problems)} problem(s):", shown)
    return entries


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
