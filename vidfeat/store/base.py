"""The storage contract: what every backend (Zarr, HDF5) must provide.

A store is a root (its metadata) plus *parts*. Each writer owns exactly one part, so N concurrent
shard jobs never touch the same file or chunk. A part holds, per named stream, a flat ``(F, D)``
frame-feature array, plus shared timestamps and a per-video table whose ``offset``/``n_frames``
columns index into them (Zarr has no ragged arrays). Parts become visible only through an atomic
commit, so readers never see a half-written video. See docs/store-format.md for the on-disk layout.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vidfeat.registry import Registry
from vidfeat.store.schema import StoreMeta

if TYPE_CHECKING:
    from vidfeat.errors import StoreIntegrityError
    from vidfeat.store.chunks import ChunkCache

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


def video_id_problem(video_id: object) -> str | None:
    """Why ``video_id`` cannot name a video in a store (None: it can). One rule for the writer
    and for manifests, which say it with the line it is on."""
    if not isinstance(video_id, str) or not video_id.strip():
        return "must be a non-empty string"
    if "\x00" in video_id:  # no store key or file name can hold it
        return "holds a NUL character"
    return None


# ``reason`` of an ok video in a store with an "audio" stream when the video has no audio track
# (its audio features are the no-audio value, see docs/audio.md).
NO_AUDIO_NOTE = "no_audio"

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


def feature_array(stream: str, schema_version: int) -> str:
    """Path of a stream's (F, D) frame array inside a part (schema 1 had one, unnamed)."""
    return "features" if schema_version == 1 else f"streams/{stream}/features"


def mean_array(stream: str, schema_version: int) -> str:
    """Path of a stream's (V, D) float32 video-level array inside a part."""
    return "mean" if schema_version == 1 else f"streams/{stream}/mean"


def layout_problem(meta: StoreMeta, array: str, shape: tuple[int, ...], dtype: np.dtype) -> str:
    """What contradicts the root metadata in a stream array's width or stored type ("" when
    nothing does): read by the metadata alone, such an array would come back the wrong width
    or undecoded. Byte order is the array's own business."""
    for stream, spec in meta.streams.items():
        if array == feature_array(stream, meta.schema_version):
            want = np.dtype(spec.dtype)
        elif array == mean_array(stream, meta.schema_version):
            want = np.dtype(np.float32)
        else:
            continue
        if len(shape) != 2 or shape[1] != spec.dim:
            return f"its shape is {tuple(shape)}, but stream {stream!r} is {spec.dim}-d"
        have = np.dtype(dtype)
        if (have.kind, have.itemsize) != (want.kind, want.itemsize):
            return f"it holds {have}, but the root metadata says {want}"
    return ""


def frame_arrays(meta: StoreMeta) -> list[str]:
    """Arrays with one row per frame: the streams' features (frame level) and timestamps."""
    feats = [feature_array(s, meta.schema_version) for s in meta.streams]
    return [*(feats if meta.level == "frame" else []), "timestamps_s"]


def part_arrays(meta: StoreMeta) -> list[str]:
    """Every array a committed part of this store must hold."""
    means = [mean_array(s, meta.schema_version) for s in meta.streams]
    return [*frame_arrays(meta), *means, *TABLE_DTYPES]


@dataclasses.dataclass
class VideoRecord:
    """One video waiting to be committed. Failures have ``features`` of shape (0, D)."""

    video_id: str
    features: dict[str, np.ndarray]  # stream -> (T, D) stored dtype; empty for video level
    timestamps_s: np.ndarray  # (T,) float64
    means: dict[str, np.ndarray]  # stream -> (D,) float32 mean of the (dequantized) frames
    table: dict  # the TABLE_DTYPES columns except offset and n_frames

    @property
    def n_frames(self) -> int:
        return len(self.timestamps_s)


class PartWriter(abc.ABC):
    """Appends committed batches of videos to one part."""

    @abc.abstractmethod
    def commit(self, records: list[VideoRecord], fence: Callable[[], None] = lambda: None) -> None:
        """Write the records and make them visible atomically (all or nothing).

        ``fence`` runs after the data is written and before the commit point; it raises to
        stop a writer that no longer owns the part from publishing.
        """

    @abc.abstractmethod
    def close(self) -> None: ...


class PartReader(abc.ABC):
    """Reads one committed part (a Zarr group, or one HDF5 segment).

    Every read goes through :meth:`read_rows`, which raises :class:`StoreIntegrityError` for a
    chunk that fails its checksum or is missing, so no caller can get numbers nobody vouches for.
    """

    name: str  # the part, e.g. "main" or "shard-00003-of-00008"
    label: str  # where it lives, for messages: the part, or the HDF5 segment file
    n_videos: int
    n_frames: int

    @abc.abstractmethod
    def read_rows(self, array: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of ``array`` (a path from :func:`part_arrays`), checked."""

    def row_pieces(self, array: str, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Rows [start, stop) of ``array``, checked, as (first row - start, rows) pieces that
        may be read-only views of shared buffers: readers that keep decoded chunks hand out
        views of them, so a caller copies each row once, into its own buffer."""
        yield 0, self.read_rows(array, start, stop)

    @abc.abstractmethod
    def chunk_ranges(self, array: str) -> list[tuple[int, int]]:
        """The row ranges of the array's chunks that hold committed rows (for verify)."""

    def rows(self, array: str) -> int:
        """Committed rows of ``array``."""
        per_frame = array in ("timestamps_s", "features") or array.endswith("/features")
        return self.n_frames if per_frame else self.n_videos

    def table(self) -> dict[str, np.ndarray]:
        """Committed rows of the per-video table, column -> (V,) array."""
        return {col: self.read_rows(col, 0, self.n_videos) for col in TABLE_DTYPES}

    def use_cache(self, cache: ChunkCache) -> None:  # noqa: B027 - optional hook
        """Keep decoded chunks in ``cache`` (shared by the parts of one reader)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open handles."""


class Backend(abc.ABC):
    """One storage format. Backends live in private modules and register themselves."""

    name: str
    suffixes: tuple[str, ...] = ()
    # Whether the store's root is a directory (so that an empty one may become a store).
    root_is_dir: bool = True

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
    def iter_parts(
        self, meta: StoreMeta, damage: list[StoreIntegrityError] | None = None
    ) -> Iterator[PartReader]:
        """Every committed part, in a stable order, read according to ``meta``. A part that
        cannot be opened raises, or, given a ``damage`` list (``vidfeat verify``), is added to
        it and left out, and the other parts are still yielded."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release any open handles, those of the parts it yielded included."""


BACKENDS: Registry[type[Backend]] = Registry("store format")
