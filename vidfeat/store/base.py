"""The storage contract: what every backend (Zarr, HDF5) must provide.

A store is a root (its metadata) plus *parts*. Each writer owns exactly one part, so N concurrent
shard jobs never touch the same file or chunk. A part holds a flat ``(F, D)`` frame-feature array
and a per-video table whose ``offset``/``n_frames`` columns index into it (Zarr has no ragged
arrays). Parts become visible only through an atomic commit, so readers never see a half-written
video. See docs/store-format.md for the on-disk layout.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vidfeat.registry import Registry

SCHEMA_VERSION = 1

# Per-video table columns and their on-disk dtypes. "str" columns are UTF-8 strings.
STRING_COLUMNS = (
    "video_id",
    "labels",
    "status",
    "reason",
    "source_path",
    "decoder",
    "split",
    "group",
)
TABLE_DTYPES: dict[str, str] = {
    **{name: "str" for name in STRING_COLUMNS},
    "n_frames": "int32",
    "offset": "int64",  # first row of this video in the part's frame arrays
    "duration_s": "float64",
    "native_fps": "float64",
}
LABEL_SEPARATOR = ";"

# Chunks of at most 1 MiB and at most 256 frames. Training reads one video at a time (typically
# 100-360 frames at 1 fps), and a read decompresses every chunk it touches: with 1024-frame
# uint8-1024 chunks, a 168-frame read cost 3.7 ms in zarr against 2.3 ms with 256-frame ones.
# Fewer frames per chunk than that made float32-2048 reads slower (per-chunk overhead).
TARGET_CHUNK_BYTES = 1 << 20
MAX_CHUNK_FRAMES = 256


def frame_chunk_rows(dim: int, itemsize: int) -> int:
    """Rows per chunk of the (F, D) feature array."""
    by_bytes = TARGET_CHUNK_BYTES // max(1, dim * itemsize)
    return int(max(16, min(MAX_CHUNK_FRAMES, by_bytes)))


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    """Root metadata: everything that determines what the stored features mean."""

    dim: int
    dtype: str  # stored dtype of frame features: float32 | float16 | uint8
    quantization: dict | None
    attrs: dict
    schema_version: int = SCHEMA_VERSION
    created: dict = dataclasses.field(default_factory=dict)  # version/time; not part of identity

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StoreMeta:
        return cls(
            dim=int(data["dim"]),
            dtype=str(data["dtype"]),
            quantization=data.get("quantization"),
            attrs=dict(data.get("attrs") or {}),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
            created=dict(data.get("created") or {}),
        )


@dataclasses.dataclass
class VideoRecord:
    """One video waiting to be committed. Failures have ``features`` of shape (0, D)."""

    video_id: str
    features: np.ndarray  # (T, D) stored dtype
    timestamps_s: np.ndarray  # (T,) float64
    mean: np.ndarray  # (D,) float32, mean of the (dequantized) frames; zeros for failures
    table: dict  # the TABLE_DTYPES columns except offset and n_frames


class PartWriter(abc.ABC):
    """Appends committed batches of videos to one part."""

    @abc.abstractmethod
    def commit(self, records: list[VideoRecord]) -> None:
        """Write the records and make them visible atomically (all or nothing)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class PartReader(abc.ABC):
    """Reads one committed part."""

    name: str

    @abc.abstractmethod
    def table(self) -> dict[str, np.ndarray]:
        """Committed rows of the per-video table, column -> (V,) array."""

    @abc.abstractmethod
    def frames(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the (F, D) feature array, stored dtype."""

    @abc.abstractmethod
    def timestamps(self, start: int, stop: int) -> np.ndarray: ...

    @abc.abstractmethod
    def means(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32 video-level means."""


class Backend(abc.ABC):
    """One storage format. Backends live in private modules and register themselves."""

    name: str
    suffixes: tuple[str, ...] = ()

    def __init__(self, path: Path) -> None:
        self.path = path

    @abc.abstractmethod
    def exists(self) -> bool: ...

    @abc.abstractmethod
    def create_root(self, meta: StoreMeta) -> None:
        """Create the root atomically; if another process won the race, leave theirs."""

    @abc.abstractmethod
    def read_meta(self) -> StoreMeta: ...

    @abc.abstractmethod
    def open_part_writer(self, part: str, meta: StoreMeta) -> PartWriter: ...

    @abc.abstractmethod
    def iter_parts(self) -> Iterator[PartReader]:
        """Every committed part, in a stable order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release any open handles."""


BACKENDS: Registry[type[Backend]] = Registry("store format")
