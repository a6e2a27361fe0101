"""YouTube-8M's ``vocabulary.csv``: Google's class index -> class name, kept as published."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping

import fsspec

from vidfeat.errors import ConfigError

COLUMNS = (
    "Index",
    "TrainVideoCount",
    "KnowledgeGraphId",
    "Name",
    "WikiUrl",
    "Vertical1",
    "Vertical2",
    "Vertical3",
    "WikiDescription",
)
# The store joins labels with ';' (store-format.md), so a name may not contain it.
_FORBIDDEN = ";"


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Class names by Google's index. ``names[i]`` is the name of class index ``i``;
    ``graph_ids[i]`` its Knowledge Graph id ("/m/03bt1gh") where the file gives one (not
    stored with a store's vocabulary)."""

    names: Mapping[int, str]
    # Not part of what a vocabulary is (stores keep names only): equal names, equal vocabulary.
    graph_ids: Mapping[int, str] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for index, name in self.names.items():
            if not name.strip() or _FORBIDDEN in name:
                raise ConfigError(f"vocabulary: class {index} has an unusable name {name!r}")
            if name in seen:
                raise ConfigError(f"vocabulary: {name!r} names both {seen[name]} and {index}")
            seen[name] = index

    @property
    def indices(self) -> dict[str, int]:
        """Class name -> Google's index."""
        return {name: index for index, name in self.names.items()}

    def name(self, index: int) -> str:
        try:
            return self.names[index]
        except KeyError:
            raise ConfigError(f"label index {index} is not in the vocabulary") from None

    def to_json(self) -> list[list]:
        """``[[index, name], ...]`` sorted by index (for store attrs)."""
        return [[i, self.names[i]] for i in sorted(self.names)]

    @classmethod
    def from_json(cls, data: list) -> Vocabulary:
        return cls({int(i): str(n) for i, n in data})


def read_vocabulary(path: str) -> Vocabulary:
    """Read Google's vocabulary CSV (local or any fsspec URL)."""
    try:
        with fsspec.open(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read vocabulary {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("Index", "Name") if c not in (reader.fieldnames or ())]
    if missing:
        raise ConfigError(f"vocabulary {path}: no column {missing} (expected {', '.join(COLUMNS)})")
    names: dict[int, str] = {}
    graph_ids: dict[int, str] = {}
    for line, row in enumerate(reader, start=2):
        try:
            index = int(row["Index"])
        except (TypeError, ValueError):
            raise ConfigError(
                f"vocabulary {path}:{line}: Index {row['Index']!r} is not an integer"
            ) from None
        if index in names:
            raise ConfigError(f"vocabulary {path}:{line}: index {index} appears twice")
        names[index] = (row["Name"] or "").strip()
        if graph_id := (row.get("KnowledgeGraphId") or "").strip():
            graph_ids[index] = graph_id
    if not names:
        raise ConfigError(f"vocabulary {path} has no classes")
    return Vocabulary(names, graph_ids)
