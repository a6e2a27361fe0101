"""Write videos into a store: validation, resume, batched atomic commits, one writer per part."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vidfeat.errors import ConfigError, StoreError, StoreMismatchError
from vidfeat.pca.quantize import dequantize
from vidfeat.sampling import format_fps
from vidfeat.store.base import (
    LABEL_SEPARATOR,
    STRING_COLUMNS,
    Backend,
    StoreMeta,
    VideoRecord,
)

log = logging.getLogger(__name__)

STORED_DTYPES = ("float32", "float16", "uint8")
PART_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Keys of ``attrs`` that describe a run rather than the features; they may differ on resume.
VOLATILE_ATTRS = frozenset({"vidfeat_version", "created_at", "command", "argv", "host"})


def _identity(meta: StoreMeta) -> dict:
    attrs = {k: v for k, v in meta.attrs.items() if k not in VOLATILE_ATTRS}
    if "fps" in attrs:
        # A rate, not text: a store made with "1.0" or "1/1" takes runs with --fps 1.
        with contextlib.suppress(ConfigError):
            attrs["fps"] = format_fps(attrs["fps"])
    return {"dim": meta.dim, "dtype": meta.dtype, "quantization": meta.quantization, **attrs}


def check_compatible(existing: StoreMeta, wanted: StoreMeta, path: Path) -> None:
    """Refuse to mix features made with different settings in one store."""
    have, want = _identity(existing), _identity(wanted)
    diffs = [
        f"{key}: store has {have.get(key)!r}, this run has {want.get(key)!r}"
        for key in sorted(set(have) | set(want))
        if have.get(key) != want.get(key)
    ]
    if diffs:
        raise StoreMismatchError(
            f"{path} was written with different settings; refusing to mix features "
            f"(use a new output path or the original settings): " + "; ".join(diffs)
        )


class StoreWriter:
    """Appends videos to one part of a store. Use as a context manager.

    Videos are buffered and committed in batches (``commit_every`` videos or ``commit_seconds``,
    and on close). A video is visible to readers only after its batch commits; a writer killed
    earlier loses the uncommitted batch, never anything committed.
    """

    def __init__(
        self,
        backend: Backend,
        meta: StoreMeta,
        *,
        part: str = "main",
        commit_every: int = 16,
        commit_seconds: float = 10.0,
    ) -> None:
        if not PART_NAME_RE.match(part):
            raise ConfigError(f"invalid part name {part!r}: use letters, digits, '-' and '_'")
        self.path = backend.path
        self.meta = meta
        self.part = part
        self.commit_every = max(1, int(commit_every))
        self.commit_seconds = float(commit_seconds)
        self._backend = backend
        self._lock_fh = _acquire_lock(_lock_path(backend, part), part)
        self._pending: list[VideoRecord] = []
        self._last_commit = time.monotonic()
        self._committed_ok, self._committed_any = self._scan_committed()
        self._part = backend.open_part_writer(part, meta)
        self._closed = False

    def _scan_committed(self) -> tuple[set[str], set[str]]:
        ok: set[str] = set()
        anyrow: set[str] = set()
        for part in self._backend.iter_parts():
            table = part.table()
            for vid, status in zip(table["video_id"], table["status"], strict=True):
                anyrow.add(str(vid))
                if status == "ok":
                    ok.add(str(vid))
            close = getattr(part, "close", None)
            if close:
                close()
        return ok, anyrow

    def committed_ids(self, status: str = "any") -> set[str]:
        """Ids committed anywhere in the store when this writer opened, plus its own since.

        ``status="ok"`` gives successful videos only (to retry failures on a rerun).
        """
        return set(self._committed_ok if status == "ok" else self._committed_any)

    # -- writing ----------------------------------------------------------------------------
    def write(
        self,
        video_id: str,
        features: np.ndarray,
        labels: Iterable[str] = (),
        timestamps: np.ndarray | None = None,
        **info: object,
    ) -> None:
        """Queue one successfully extracted video. ``features`` is (T, dim)."""
        self._check_id(video_id)
        feats = self._check_features(video_id, features)
        if timestamps is None:
            timestamps_s = np.arange(len(feats), dtype=np.float64)  # 1 fps from t=0
        else:
            timestamps_s = np.asarray(timestamps, dtype=np.float64).reshape(-1)
            if len(timestamps_s) != len(feats):
                raise ConfigError(
                    f"{video_id}: {len(timestamps_s)} timestamps for {len(feats)} frames"
                )
        floats = (
            dequantize(feats, self.meta.quantization["min"], self.meta.quantization["max"])
            if self.meta.quantization
            else feats.astype(np.float32)
        )
        table = self._table_row(video_id, labels, "ok", "", info)
        self._queue(VideoRecord(video_id, feats, timestamps_s, floats.mean(axis=0), table))

    def write_failure(
        self, video_id: str, status: str, reason: str, labels: Iterable[str] = (), **info: object
    ) -> None:
        """Record a video that could not be extracted, with a short status code and a reason."""
        self._check_id(video_id)
        if status == "ok":
            raise ConfigError("write_failure needs a failure status, not 'ok'")
        table = self._table_row(video_id, labels, status, reason, info)
        empty = np.zeros((0, self.meta.dim), dtype=self.meta.dtype)
        mean = np.zeros(self.meta.dim, dtype=np.float32)
        self._queue(VideoRecord(video_id, empty, np.zeros(0), mean, table))

    def _check_id(self, video_id: str) -> None:
        if self._closed:
            raise StoreError(f"writer for {self.path} is closed")
        if not isinstance(video_id, str) or not video_id.strip():
            raise ConfigError(f"video_id must be a non-empty string, got {video_id!r}")
        if video_id in self._committed_ok or any(r.video_id == video_id for r in self._pending):
            raise StoreError(f"video {video_id!r} is already in {self.path}")

    def _check_features(self, video_id: str, features: np.ndarray) -> np.ndarray:
        feats = np.asarray(features)
        if feats.ndim != 2 or feats.shape[1] != self.meta.dim or len(feats) == 0:
            raise ConfigError(
                f"{video_id}: features must be (T>=1, {self.meta.dim}), got {feats.shape}"
            )
        if self.meta.dtype == "uint8":
            if feats.dtype != np.uint8:
                raise ConfigError(f"{video_id}: this store holds quantized uint8 features")
            return feats
        if not np.issubdtype(feats.dtype, np.floating) or not np.isfinite(feats).all():
            raise ConfigError(f"{video_id}: features must be finite floats")
        return feats.astype(self.meta.dtype, copy=False)

    @staticmethod
    def _table_row(
        video_id: str, labels: Iterable[str], status: str, reason: str, info: dict
    ) -> dict:
        labels = [str(x) for x in labels]
        bad = [x for x in labels if LABEL_SEPARATOR in x or not x.strip()]
        if bad:
            raise ConfigError(f"{video_id}: invalid labels {bad} (empty or containing ';')")
        row: dict[str, object] = {c: "" for c in STRING_COLUMNS}
        unknown = set(info) - {
            "source_path",
            "decoder",
            "split",
            "group",
            "duration_s",
            "native_fps",
        }
        if unknown:
            raise ConfigError(f"unknown per-video fields: {sorted(unknown)}")
        row.update({k: "" if v is None else str(v) for k, v in info.items() if k in STRING_COLUMNS})
        row.update(video_id=video_id, labels=LABEL_SEPARATOR.join(labels), status=status)
        row["reason"] = str(reason)
        for key in ("duration_s", "native_fps"):
            value = info.get(key)
            row[key] = math.nan if value is None else float(value)  # type: ignore[arg-type]
        return row

    def _queue(self, record: VideoRecord) -> None:
        self._pending.append(record)
        due = time.monotonic() - self._last_commit >= self.commit_seconds
        if len(self._pending) >= self.commit_every or due:
            self.flush()

    def flush(self) -> None:
        """Commit everything queued so far."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self._part.commit(batch)
        except OSError as exc:  # disk full and friends: committed data stays intact
            raise StoreError(f"could not commit to {self.path}: {exc}; rerun to resume") from exc
        for r in batch:
            self._committed_any.add(r.video_id)
            if r.table["status"] == "ok":
                self._committed_ok.add(r.video_id)
        self._last_commit = time.monotonic()
        log.debug("committed %d videos to %s/%s", len(batch), self.path, self.part)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._part.close()
            self._backend.close()
            self._lock_fh.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        # On error, commit what completed: every queued video is whole, so nothing partial lands.
        self.close()


def _lock_path(backend: Backend, part: str) -> Path:
    base = backend.path.with_name(backend.path.name + ".locks")
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{part}.lock"


def _acquire_lock(path: Path, part: str) -> object:
    fh = open(path, "a+")  # noqa: SIM115 - held for the writer's lifetime
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StoreError(
            f"part {part!r} of {path.parent} is being written by another process; "
            "give each concurrent job its own --shard"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def new_meta(
    dim: int, dtype: str, quantization: dict | None, attrs: dict | None, version: str
) -> StoreMeta:
    """Validate creation arguments into root metadata."""
    if not isinstance(dim, int | np.integer) or dim < 1:
        raise ConfigError(f"dim must be a positive integer, got {dim!r}")
    if dtype not in STORED_DTYPES:
        raise ConfigError(f"dtype must be one of {STORED_DTYPES}, got {dtype!r}")
    if (dtype == "uint8") != (quantization is not None):
        raise ConfigError("uint8 stores need a quantization block, and only they may have one")
    if quantization is not None and not {"scheme", "min", "max"} <= set(quantization):
        raise ConfigError("quantization needs 'scheme', 'min' and 'max'")
    try:
        # Round-trip through JSON so tuples/lists compare equal after a reopen. NaN is refused:
        # it is not JSON, and it never equals itself, so no run could append to the store.
        attrs = json.loads(json.dumps(dict(attrs or {}), allow_nan=False))
        json.dumps(quantization, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"store attrs must be JSON-serialisable, without NaN or infinity: {exc}"
        ) from exc
    created = {
        "vidfeat_version": version,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return StoreMeta(int(dim), dtype, quantization, attrs, created=created)
