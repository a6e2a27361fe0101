"""Read a feature store, whatever its backend, as one logical table of videos."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidfeat.convert import copy_into
from vidfeat.errors import ConfigError, StoreError, StoreIntegrityError, VideoNotFoundError
from vidfeat.pca.quantize import dequantize
from vidfeat.store.base import LABEL_SEPARATOR, Backend, PartReader, feature_array, mean_array
from vidfeat.store.chunks import DEFAULT_CACHE_MB, ChunkCache
from vidfeat.store.schema import StoreMeta, StreamSpec

log = logging.getLogger(__name__)

PUBLIC_COLUMNS = (
    "video_id",
    "labels",
    "n_frames",
    "status",
    "reason",
    "source_path",
    "duration_s",
    "native_fps",
    "decoder",
    "split",
    "group",
    "part",
)


def split_labels(joined: str) -> tuple[str, ...]:
    return tuple(x for x in str(joined).split(LABEL_SEPARATOR) if x)


class StoreReader:
    """A snapshot of the committed videos at open time.

    Cheap to construct (reads only the per-video tables); frames are read on demand, and up to
    ``cache_mb`` MiB of decoded chunks are kept for later reads. Open one reader per process: a
    DataLoader worker must open its own, never inherit one across fork.
    """

    def __init__(self, backend: Backend, cache_mb: float = DEFAULT_CACHE_MB) -> None:
        self._backend = backend
        self.path: Path = backend.path
        self.meta: StoreMeta = backend.read_meta()
        self._parts: list[PartReader] = list(backend.iter_parts(self.meta))
        cache = ChunkCache.of_mb(cache_mb)
        for part in self._parts:
            part.use_cache(cache)
        table = self._build_table()
        # Where each video lives, and whether it is readable; kept out of the public table and
        # in numpy, since every read looks a video up.
        self._loc = table[["_part_no", "offset", "n_frames", "_row"]].to_numpy(dtype=np.int64)
        self._ok = (table["status"] == "ok").to_numpy(dtype=bool)
        self._failures = table["_failures"].to_numpy(dtype=np.int64)
        self.videos: pd.DataFrame = table[list(PUBLIC_COLUMNS)]
        # A pandas index rather than a dict: its hash table holds no Python object per video.
        self._index = pd.Index(self.videos["video_id"])

    # -- metadata -------------------------------------------------------------------------
    @property
    def format(self) -> str:
        return self._backend.name

    @property
    def attrs(self) -> dict:
        return dict(self.meta.attrs)

    @property
    def streams(self) -> dict[str, StreamSpec]:
        """Stream name -> its ``dim``, ``dtype``, ``quantization`` and provenance ``attrs``."""
        return dict(self.meta.streams)

    @property
    def level(self) -> str:
        """``"frame"`` (per-frame features) or ``"video"`` (one vector per video, no frames)."""
        return self.meta.level

    @property
    def verified(self) -> bool:
        """Whether every chunk carries a checksum that reads check (schema 2 and later)."""
        return self.meta.checksummed

    def stream_name(self, stream: str | None = None) -> str:
        """``stream``, checked; ``None`` means the only stream, and is an error with several."""
        names = list(self.meta.streams)
        if stream is None:
            if len(names) != 1:
                raise ConfigError(
                    f"store {self.path} has streams {', '.join(names)}; choose one "
                    "(stream= in Python, --stream on the command line)"
                )
            return names[0]
        if stream not in self.meta.streams:
            raise ConfigError(
                f"store {self.path} has no stream {stream!r}; it has {', '.join(names)}"
            )
        return stream

    @property
    def dim(self) -> int:
        """The only stream's dim (an error naming the streams when there are several)."""
        return self.meta.streams[self.stream_name()].dim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta.streams[self.stream_name()].dtype)

    @property
    def quantization(self) -> dict | None:
        return self.meta.streams[self.stream_name()].quantization

    @property
    def ok_ids(self) -> list[str]:
        return self.videos.loc[self.videos["status"] == "ok", "video_id"].tolist()

    def failed_attempts(self) -> dict[str, tuple[str, int]]:
        """Videos recorded as failed and never as extracted: id -> (the latest failure's
        status, how many failures the store records for it)."""
        failed = ~self._ok
        rows = self.videos.loc[failed, ["video_id", "status"]]
        return {
            str(vid): (str(status), int(n))
            for vid, status, n in zip(
                rows["video_id"], rows["status"], self._failures[failed], strict=True
            )
        }

    def __len__(self) -> int:
        return len(self.videos)

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id in self._index

    # -- table ----------------------------------------------------------------------------
    def _build_table(self) -> pd.DataFrame:
        frames = []
        for part_no, part in enumerate(self._parts):
            cols = part.table()
            df = pd.DataFrame({k: _as_column(v) for k, v in cols.items()})
            df["part"] = part.name
            df["_part_no"] = part_no
            df["_row"] = np.arange(len(df))
            frames.append(df)
        if not frames:
            cols = [*PUBLIC_COLUMNS, "offset", "_part_no", "_row", "_failures"]
            return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
        df = pd.concat(frames, ignore_index=True)
        df["labels"] = _label_tuples(df["labels"])
        failed_rows = (df["status"] != "ok").astype(np.int64)
        # A video may have several rows: a failure later retried, or two jobs with different
        # sharding. The first successful row wins; otherwise the most recent failure.
        if not df["video_id"].duplicated().any():  # the usual case: nothing to choose between
            df["_failures"] = failed_rows
            return df.reset_index(drop=True)
        df["_failures"] = failed_rows.groupby(df["video_id"]).transform("sum")
        df["_ok"] = df["status"] == "ok"
        df["_order"] = np.arange(len(df))
        ok_first = df.sort_values(["video_id", "_ok", "_order"], ascending=[True, False, True])
        first_ok = ok_first[ok_first["_ok"]].drop_duplicates("video_id", keep="first")
        failed_only = df[~df["video_id"].isin(first_ok["video_id"])]
        last_fail = failed_only.drop_duplicates("video_id", keep="last")
        out = pd.concat([first_ok, last_fail]).sort_values("_order")
        n_dupes = len(df) - len(out)
        if n_dupes:
            log.debug("%s: %d superseded rows hidden", self.path, n_dupes)
        return out.drop(columns=["_ok", "_order"]).reset_index(drop=True)

    def _locate(self, video_id: str) -> tuple[PartReader, int, int, int]:
        try:
            i = self._index.get_loc(video_id)
        except (KeyError, TypeError):
            raise VideoNotFoundError(f"video {video_id!r} is not in store {self.path}") from None
        if not self._ok[i]:
            row = self.videos.iloc[i]
            raise VideoNotFoundError(
                f"video {video_id!r} failed during extraction ({row['status']}: {row['reason']})"
            )
        part_no, offset, n, table_row = (int(x) for x in self._loc[i])
        return self._parts[part_no], offset, n, table_row

    # -- features -------------------------------------------------------------------------
    def read(self, video_id: str, stream: str | None = None, *, raw: bool = False) -> np.ndarray:
        """(T, D) features of one stream: float32 (dequantized if stored as uint8), or the
        stored dtype if ``raw``. ``stream=None`` means the only stream."""
        name = self.stream_name(stream)
        return self.read_streams(video_id, [name], raw=raw)[name]

    def read_streams(
        self, video_id: str, streams: list[str] | None = None, *, raw: bool = False
    ) -> dict[str, np.ndarray]:
        """Several streams of one video (default: all), located once: name -> (T, D_name)."""
        names = [self.stream_name(s) for s in (streams or list(self.meta.streams))]
        if self.meta.level != "frame":
            raise StoreError(
                f"store {self.path} is video-level: it holds no frames; use mean(video_id)"
            )
        part, offset, n, _ = self._locate(video_id)
        out = {}
        for name in names:
            array = feature_array(name, self.meta.schema_version)
            data = self._checked(part, array, offset, offset + n, video_id)
            out[name] = data if raw else self.to_float(data, name)
        return out

    def read_into(
        self,
        video_id: str,
        out: np.ndarray,
        streams: Sequence[str],
        frames: slice | np.ndarray | None = None,
    ) -> None:
        """Write frames of one video, float32 (dequantized), into ``out``: (len(frames),
        sum of the streams' dims), the streams side by side in the order given.

        ``frames`` are the video's frame numbers (a slice of step 1, or an index array; None:
        all); only their rows are read. Each row is converted once, from the part's (cached) chunk
        straight into ``out``, so a batch reader can fill a preallocated padded batch. A
        video-level store gives its one vector per stream (``out`` of one row, ``frames`` None).
        """
        if self.meta.level != "frame":
            cols = 0
            for name in streams:
                vector = self.mean(video_id, name)
                out[0, cols : cols + len(vector)] = vector
                cols += len(vector)
            return
        part, offset, n, _ = self._locate(video_id)
        frames, lo, hi, count = _checked_frames(video_id, frames, n)
        width = sum(self.meta.streams[self.stream_name(name)].dim for name in streams)
        if out.shape != (count, width):
            raise ConfigError(f"{video_id}: out must be ({count}, {width}), got {out.shape}")
        cols = 0
        for name in streams:
            spec = self.meta.streams[self.stream_name(name)]
            dest = out[:, cols : cols + spec.dim]
            array = feature_array(name, self.meta.schema_version)
            for at, piece in self._pieces(part, array, offset + lo, offset + hi, video_id):
                if isinstance(frames, slice):
                    self._to_float_into(piece, dest[at : at + len(piece)], spec.quantization)
                    continue
                inside = (frames >= lo + at) & (frames < lo + at + len(piece))
                picked = piece[frames[inside] - (lo + at)]
                dest[inside] = self._to_float_into(picked, None, spec.quantization)
            cols += spec.dim

    @staticmethod
    def _to_float_into(data: np.ndarray, out: np.ndarray | None, q: dict | None) -> np.ndarray:
        if q is not None:
            return dequantize(data, q["min"], q["max"], out=out)
        if out is None:
            return np.asarray(data, dtype=np.float32)
        copy_into(out, data)
        return out

    def _pieces(
        self, part: PartReader, array: str, start: int, stop: int, vid: str
    ) -> Iterator[tuple[int, np.ndarray]]:
        try:
            for at, piece in part.row_pieces(array, start, stop):
                yield at, self._finite(piece, part, array, vid)
        except StoreIntegrityError as exc:
            raise exc.for_video(vid) from exc

    def _checked(self, part: PartReader, array: str, start: int, stop: int, vid: str) -> np.ndarray:
        try:
            data = part.read_rows(array, start, stop)
        except StoreIntegrityError as exc:
            raise exc.for_video(vid) from exc
        return self._finite(data, part, array, vid)

    def _finite(self, data: np.ndarray, part: PartReader, array: str, vid: str) -> np.ndarray:
        # Schema-1 writers checked finiteness before the float16 cast, so inf can be stored.
        # Schema-2 writers check after the cast and checksums vouch for the bytes since.
        suspect = not self.meta.checksummed and data.dtype.kind == "f"
        if suspect and not np.isfinite(data).all():
            raise StoreIntegrityError(
                "non-finite values (inf or NaN) stored",
                store=self.path,
                part=part.label,
                array=array,
                video=vid,
            )
        return data

    def to_float(self, data: np.ndarray, stream: str | None = None) -> np.ndarray:
        """Stored features -> float32, applying the stream's dequantization if any."""
        q = self.meta.streams[self.stream_name(stream)].quantization
        return self._to_float_into(data, None, q)

    def timestamps(self, video_id: str) -> np.ndarray:
        """(T,) float64 seconds, shared by every stream of the video."""
        part, offset, n, _ = self._locate(video_id)
        return np.asarray(
            self._checked(part, "timestamps_s", offset, offset + n, video_id), dtype=np.float64
        )

    def mean(self, video_id: str, stream: str | None = None) -> np.ndarray:
        """(D,) float32 video-level vector: the mean of the frames, or a video-level store's."""
        part, _, _, row = self._locate(video_id)
        array = mean_array(self.stream_name(stream), self.meta.schema_version)
        return self._checked(part, array, row, row + 1, video_id)[0]

    def labels(self, video_id: str) -> tuple[str, ...]:
        if video_id not in self:
            raise VideoNotFoundError(f"video {video_id!r} is not in store {self.path}")
        return self.videos["labels"].iat[self._index.get_loc(video_id)]

    def close(self) -> None:
        self._backend.close()  # the parts it yielded too, in the order that is cheap for it

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        raise StoreError(
            "a StoreReader cannot be pickled; open the store inside each worker process"
        )


def _checked_frames(
    video_id: str, frames: slice | np.ndarray | None, n: int
) -> tuple[slice | np.ndarray, int, int, int]:
    """``frames`` of a video of ``n`` frames, checked (a frame outside it would be read from
    the neighbouring video's rows): (frames, first row, last row + 1, frames read)."""
    if frames is None:
        return slice(0, n), 0, n, n
    if isinstance(frames, slice):
        lo = 0 if frames.start is None else frames.start
        hi = n if frames.stop is None else frames.stop
        if frames.step not in (None, 1) or not 0 <= lo <= hi <= n:
            raise ConfigError(f"{video_id}: frames must be a step-1 slice within 0..{n}")
        return slice(lo, hi), lo, hi, hi - lo
    frames = np.asarray(frames)
    if frames.ndim != 1 or (len(frames) and frames.dtype.kind not in "iu"):
        raise ConfigError(f"{video_id}: frames must be a 1-D array of frame numbers")
    lo, hi = _bounds(frames)
    if lo < 0 or hi > n:
        raise ConfigError(f"{video_id}: frames must be in 0..{n - 1}, got {lo}..{hi - 1}")
    return frames, lo, hi, len(frames)


def _bounds(frames: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the frame numbers ``frames`` (0, 0 for none)."""
    if not len(frames):
        return 0, 0
    return int(frames.min()), int(frames.max()) + 1


def _as_column(values: np.ndarray) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """A table column as pandas stores it. Zarr returns numpy StringDType and HDF5 object
    arrays of str; where pandas keeps strings in Arrow (pandas 3 with pyarrow), they go there
    directly, without a Python object per value, whose freed memory a process keeps."""
    if values.dtype.kind not in ("T", "U", "O"):
        return values
    if _ARROW_STRINGS is not None:
        import pyarrow as pa

        try:
            strings = pa.array(values, type=pa.large_string())
        except pa.ArrowException:
            # pyarrow before 26 takes no numpy StringDType (zarr's strings on numpy 2): one
            # Python object per value after all, as where pandas keeps no Arrow strings.
            strings = pa.array(values.astype(object), type=pa.large_string())
        return pd.array(strings, dtype=_ARROW_STRINGS)
    return values.astype(object)


def _label_tuples(joined: pd.Series) -> np.ndarray:
    """Each row's labels as a tuple; rows with the same labels share one tuple."""
    codes, uniques = pd.factorize(joined, use_na_sentinel=False)
    tuples = np.empty(len(uniques), dtype=object)
    for i, text in enumerate(uniques):
        tuples[i] = split_labels(text)
    return tuples[codes]


def _arrow_strings() -> pd.api.extensions.ExtensionDtype | None:
    """The string dtype pandas infers, where it is Arrow-backed (else None)."""
    dtype = pd.Series(["x"]).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return dtype
    return None


_ARROW_STRINGS = _arrow_strings()
