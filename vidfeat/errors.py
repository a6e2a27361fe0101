"""Typed errors. Each subclasses a builtin so callers can catch broadly or precisely.

The CLI maps any ``VidfeatError`` to a one-line message and exit code 2 ("could not run").
"""

from __future__ import annotations

from collections.abc import Iterator


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its cause (or else its context), and so on; each exception once.

    Libraries often wrap the real error: torch reports a full disk as "unexpected pos" with the
    ENOSPC only in the chain, fsspec an unreachable server as FileNotFoundError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class VidfeatError(Exception):
    """Base class for every error vidfeat raises on purpose."""


class ConfigError(VidfeatError, ValueError):
    """An option or configuration value is invalid."""


class ManifestError(VidfeatError, ValueError):
    """A manifest is missing, unreadable or invalid. ``problems`` lists every issue found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class DecodeError(VidfeatError, RuntimeError):
    """A video could not be decoded. ``status`` is a short machine-readable code."""

    def __init__(self, reason: str, status: str = "decode_error") -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class StoppedAtFailure(DecodeError):
    """``--fail-fast`` stopped the job at a video that failed (its failure is recorded): the job
    ran, and some of it failed, so the command exits as such a job does (1), not as one that
    could not run."""


class WeightsError(VidfeatError, RuntimeError):
    """Backbone weights could not be found or loaded."""


class StoreError(VidfeatError, OSError):
    """A feature store is missing, corrupt, locked or cannot be written."""


class StoreMismatchError(StoreError):
    """An existing store was written with a different configuration."""


class StoreIntegrityError(StoreError):
    """Stored bytes or values cannot be vouched for: a chunk fails its checksum, is missing, or
    holds non-finite features. Names where: ``store``, ``part``, ``array`` and ``video``."""

    def __init__(
        self,
        detail: str,
        *,
        store: object,
        part: str,
        array: str,
        video: str | None = None,
    ) -> None:
        self.detail, self.store, self.part, self.array, self.video = (
            detail,
            store,
            part,
            array,
            video,
        )
        where = f"store {store}, part {part}, array {array}"
        if video is not None:
            where += f", video {video!r}"
        super().__init__(f"{where}: {detail}")

    def for_video(self, video: str) -> StoreIntegrityError:
        """The same error, naming the video being read."""
        if self.video is not None:
            return self
        return StoreIntegrityError(
            self.detail, store=self.store, part=self.part, array=self.array, video=video
        )


class VideoNotFoundError(StoreError, KeyError):
    """The requested video id is not in the store (or did not succeed)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RecordError(VidfeatError, ValueError):
    """A TFRecord file, or one record in it, cannot be read.

    ``status`` is a short machine-readable code, ``index`` the record's position in its file
    (0-based) and ``offset`` its byte offset. ``ends_file``: nothing after it can be read (the
    file is empty, not a TFRecord, cut short, or its records can no longer be located).
    """

    status = "bad_record"
    ends_file = False

    def __init__(
        self, reason: str, *, index: int = 0, offset: int = 0, ends_file: bool | None = None
    ) -> None:
        self.reason = reason
        self.index = index
        self.offset = offset
        if ends_file is not None:
            self.ends_file = ends_file
        super().__init__(reason)


class EmptyFileError(RecordError):
    """The file has no bytes at all."""

    status = "empty"
    ends_file = True


class NotTFRecordError(RecordError):
    """The file does not start with a valid TFRecord header."""

    status = "not_tfrecord"
    ends_file = True


class TruncatedRecordError(RecordError):
    """The file ends inside a record; nothing after it can be read."""

    status = "truncated"
    ends_file = True


class CorruptRecordError(RecordError):
    """A record's checksum does not match its bytes."""

    status = "bad_crc"


class BadExampleError(RecordError):
    """A record is framed correctly but does not hold the expected protobuf or fields."""

    status = "bad_example"


class EngineError(VidfeatError, RuntimeError):
    """A distributed engine cannot go on: unreachable, or its workers keep dying."""
