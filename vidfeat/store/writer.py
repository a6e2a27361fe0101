"""Write videos into a store: validation, resume, batched atomic commits, one writer per part."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Mapping

import numpy as np

from vidfeat.errors import ConfigError, StoreError
from vidfeat.pca.quantize import dequantize
from vidfeat.signals import signals_held
from vidfeat.store.base import (
    LABEL_SEPARATOR,
    STRING_COLUMNS,
    Backend,
    VideoRecord,
    video_id_problem,
)
from vidfeat.store.claim import claim_part
from vidfeat.store.schema import StoreMeta, StreamSpec

log = logging.getLogger(__name__)

PART_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
Features = np.ndarray | Mapping[str, np.ndarray]


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
        self._claim = claim_part(backend.path, part)
        self._pending: list[VideoRecord] = []
        self._last_commit = time.monotonic()
        try:
            self._committed_ok, self._committed_any, self._failed = self._scan_committed()
            self._part = backend.open_part_writer(part, meta)
        except BaseException:  # a damaged store: release the part for the next attempt
            self._claim.release()
            backend.close()
            raise
        self._closed = False
        # Set when a commit fails: its rows may be half-written, so this writer takes no more
        # (reopening the store discards them and resumes from the last commit).
        self._broken: str | None = None

    def _scan_committed(self) -> tuple[set[str], set[str], dict[str, tuple[str, int]]]:
        ok: set[str] = set()
        anyrow: set[str] = set()
        failed: dict[str, tuple[str, int]] = {}
        for part in self._backend.iter_parts(self.meta):
            table = part.table()
            for vid, status in zip(table["video_id"], table["status"], strict=True):
                vid, status = str(vid), str(status)
                anyrow.add(vid)
                if status == "ok":
                    ok.add(vid)
                else:  # the latest failure, as readers show it, and how many there were
                    failed[vid] = (status, failed.get(vid, ("", 0))[1] + 1)
            close = getattr(part, "close", None)
            if close:
                close()
        return ok, anyrow, failed

    def committed_ids(self, status: str = "any") -> set[str]:
        """Ids committed anywhere in the store when this writer opened, plus its own since.

        ``status="ok"`` gives successful videos only (to retry failures on a rerun).
        """
        return set(self._committed_ok if status == "ok" else self._committed_any)

    def committed_failures(self) -> dict[str, tuple[str, int]]:
        """Videos committed as failed and never as extracted, when this writer opened:
        id -> (the latest failure's status, how many failures are recorded)."""
        return {vid: f for vid, f in self._failed.items() if vid not in self._committed_ok}

    @property
    def queued_ids(self) -> set[str]:
        """Ids written (or recorded as failed) but not committed yet: lost if the process dies."""
        return {r.video_id for r in self._pending}

    def discard_queued(self) -> None:
        """Forget what is queued and not committed: for a caller whose unit of commit (an
        imported file, say) failed half-way, so that none of it lands."""
        self._pending = []

    # -- writing ----------------------------------------------------------------------------
    def write(
        self,
        video_id: str,
        features: Features,
        labels: Iterable[str] = (),
        timestamps: np.ndarray | None = None,
        note: str = "",
        **info: object,
    ) -> None:
        """Queue one successfully extracted video.

        ``features`` maps every stream to its values: (T, dim) per stream for a frame-level
        store, all with the same T, or (dim,) for a video-level store. A plain array is the
        only stream's values. Values are checked after the cast to the stored dtype.
        ``note`` goes to the ``reason`` column of this ok video, e.g. ``no_audio``.
        """
        self._check_id(video_id)
        by_stream = self._by_stream(video_id, features)
        stored = {name: self._check_values(video_id, name, x) for name, x in by_stream.items()}
        means = {name: self._mean(name, x) for name, x in stored.items()}
        if self.meta.level == "video":
            if timestamps is not None:
                raise ConfigError(f"{video_id}: a video-level store has no timestamps")
            stored, timestamps_s = {}, np.zeros(0)
        else:
            timestamps_s = self._timestamps(video_id, stored, timestamps)
        table = self._table_row(video_id, labels, "ok", note, info)
        self._queue(VideoRecord(video_id, stored, timestamps_s, means, table))

    def write_failure(
        self, video_id: str, status: str, reason: str, labels: Iterable[str] = (), **info: object
    ) -> None:
        """Record a video that could not be extracted, with a short status code and a reason."""
        self._check_id(video_id)
        if status == "ok":
            raise ConfigError("write_failure needs a failure status, not 'ok'")
        table = self._table_row(video_id, labels, status, reason, info)
        streams = self.meta.streams.items()
        empty = (
            {n: np.zeros((0, s.dim), dtype=s.dtype) for n, s in streams}
            if self.meta.level == "frame"
            else {}
        )
        means = {n: np.zeros(s.dim, dtype=np.float32) for n, s in streams}
        self._queue(VideoRecord(video_id, empty, np.zeros(0), means, table))

    def _check_id(self, video_id: str) -> None:
        if self._closed:
            raise StoreError(f"writer for {self.path} is closed")
        if self._broken:
            raise StoreError(self._broken)
        if problem := video_id_problem(video_id):
            raise ConfigError(f"video_id {video_id!r} {problem}")
        if video_id in self._committed_ok or any(r.video_id == video_id for r in self._pending):
            raise StoreError(f"video {video_id!r} is already in {self.path}")

    def _by_stream(self, video_id: str, features: Features) -> dict[str, np.ndarray]:
        names = list(self.meta.streams)
        if not isinstance(features, Mapping):
            if len(names) != 1:
                raise ConfigError(
                    f"{video_id}: this store has streams {', '.join(names)}; pass a dict "
                    "with one array per stream"
                )
            return {names[0]: np.asarray(features)}
        missing, unknown = set(names) - set(features), set(features) - set(names)
        if missing or unknown:
            raise ConfigError(
                f"{video_id}: every stream must be written together; store streams are "
                f"{', '.join(names)}; missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        return {name: np.asarray(features[name]) for name in names}

    def _check_values(self, video_id: str, stream: str, x: np.ndarray) -> np.ndarray:
        spec: StreamSpec = self.meta.streams[stream]
        want = f"(T>=1, {spec.dim})" if self.meta.level == "frame" else f"({spec.dim},)"
        shape_ok = x.ndim == 2 and len(x) > 0 if self.meta.level == "frame" else x.ndim == 1
        if not shape_ok or x.shape[-1] != spec.dim:
            raise ConfigError(f"{video_id}: stream {stream!r} must be {want}, got {x.shape}")
        if spec.dtype == "uint8":
            if x.dtype != np.uint8:
                raise ConfigError(
                    f"{video_id}: stream {stream!r} holds quantized uint8 features, got {x.dtype}"
                )
            return x
        if not np.issubdtype(x.dtype, np.floating):
            raise ConfigError(f"{video_id}: stream {stream!r} needs floats, got {x.dtype}")
        # Check after the cast: 1e5 is finite in float32 but inf in float16.
        with np.errstate(over="ignore"):
            stored = x.astype(spec.dtype, copy=False)
        if not np.isfinite(stored).all():
            bad = "NaN" if np.isnan(stored).any() else f"inf (overflow in the {spec.dtype} cast)"
            raise ConfigError(f"video {video_id!r}: stream {stream!r} has non-finite values: {bad}")
        return stored

    def _mean(self, stream: str, stored: np.ndarray) -> np.ndarray:
        q = self.meta.streams[stream].quantization
        floats = dequantize(stored, q["min"], q["max"]) if q else stored.astype(np.float32)
        # Summed in float64: finite float32 features near its limit overflowed to an inf mean.
        return (
            floats.reshape(-1, floats.shape[-1]).mean(axis=0, dtype=np.float64).astype(np.float32)
        )

    @staticmethod
    def _timestamps(
        video_id: str, stored: dict[str, np.ndarray], timestamps: np.ndarray | None
    ) -> np.ndarray:
        counts = {name: len(x) for name, x in stored.items()}
        n = next(iter(counts.values()))
        if len(set(counts.values())) > 1:
            raise ConfigError(f"{video_id}: streams must have the same frame count, got {counts}")
        if timestamps is None:
            return np.arange(n, dtype=np.float64)  # 1 fps from t=0
        timestamps_s = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if len(timestamps_s) != n:
            raise ConfigError(f"{video_id}: {len(timestamps_s)} timestamps for {n} frames")
        if not np.isfinite(timestamps_s).all():  # verify calls them damage
            raise ConfigError(f"{video_id}: timestamps hold NaN or inf")
        return timestamps_s

    @staticmethod
    def _table_row(
        video_id: str, labels: Iterable[str], status: str, reason: str, info: dict
    ) -> dict:
        if isinstance(labels, (str, bytes)):  # iterating it would give its letters
            raise ConfigError(f"{video_id}: labels must be a list of labels, got {labels!r}")
        # A video's labels are a set: a repeat would make single-label data look multi-label.
        labels = list(dict.fromkeys(str(x) for x in labels))
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
        self._claim.keep_alive()
        if len(self._pending) >= self.commit_every or self._due:
            self.flush()

    @property
    def _due(self) -> bool:
        return time.monotonic() - self._last_commit >= self.commit_seconds

    def commit_if_due(self) -> None:
        """Commit what is queued once ``commit_seconds`` have passed since the last commit, even
        when no new video comes to trigger it (a job whose workers are all on long videos)."""
        if self._pending and self._due:
            self.flush()

    def flush(self) -> None:
        """Commit everything queued so far."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        # Ctrl-C or a scheduler's SIGTERM waits for the commit and its bookkeeping: raised
        # inside, it would throw the batch (up to commit_every finished videos) away to be
        # extracted again. SIGKILL cannot wait; the part's commit point covers it.
        with signals_held():
            try:
                # The claim is checked (object stores) before the data: a writer whose claim
                # was taken over holds stale array sizes, and its appends would overwrite rows
                # the new owner committed. And again between the data and the commit point.
                self._claim.check()
                self._part.commit(batch, fence=self._claim.check)
            except OSError as exc:  # disk full and friends: committed data stays intact
                self._broken = f"could not commit to {self.path}: {exc}; rerun to resume"
                raise StoreError(self._broken) from exc
            except BaseException:
                self._broken = f"an earlier commit to {self.path} failed; rerun to resume"
                raise
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
            self._claim.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        # On error, commit what completed: every queued video is whole, so nothing partial lands.
        self.close()
