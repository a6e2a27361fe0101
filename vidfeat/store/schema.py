"""Root metadata of a store: schema version, level, named streams, attrs; and the identity rule.

Schema 2 holds one or more named *streams* per video (``rgb``, ``audio``, ...), each with its own
dim, stored dtype, quantization and provenance attrs. Schema 1 had a single unnamed feature array;
it reads as one stream named ``rgb``. See docs/store-format.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat.errors import ConfigError, StoreError, StoreMismatchError
from vidfeat.sampling import format_fps

# uint8 schemes readers know, all read with YouTube-8M's dequantization formula (they differ in
# how writers round: yt8m_uint8 half-to-even, vggish_uint8 down).
QUANTIZATION_SCHEMES = ("yt8m_uint8", "vggish_uint8")

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
DEFAULT_STREAM = "rgb"
LEVELS = ("frame", "video")
STORED_DTYPES = ("float32", "float16", "uint8")
STREAM_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# Keys of ``attrs`` that describe a run rather than the features; they may differ on resume.
VOLATILE_ATTRS = frozenset({"vidfeat_version", "created_at", "command", "argv", "host"})


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """One named feature stream: what its stored values are and how they were made."""

    dim: int
    dtype: str = "float32"  # stored dtype: float32 | float16 | uint8
    quantization: dict | None = None  # {"scheme", "min", "max"} for uint8 streams
    attrs: dict = dataclasses.field(default_factory=dict)  # provenance of this stream

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StreamSpec:
        return cls(
            dim=int(data["dim"]),
            dtype=str(data["dtype"]),
            quantization=data.get("quantization"),
            attrs=dict(data.get("attrs") or {}),
        )


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    """Root metadata: everything that determines what the stored features mean."""

    streams: dict[str, StreamSpec]
    attrs: dict
    level: str = "frame"  # "frame": per-frame features; "video": one vector per video
    schema_version: int = SCHEMA_VERSION
    created: dict = dataclasses.field(default_factory=dict)  # version/time; not identity

    @property
    def checksummed(self) -> bool:
        """Schema 2 and later checksum every chunk; schema-1 stores are unverified."""
        return self.schema_version >= 2

    def to_json(self) -> dict:
        if self.schema_version == 1:  # the single-array layout, written only to resume v1
            spec = self.streams[DEFAULT_STREAM]
            return {
                "dim": spec.dim,
                "dtype": spec.dtype,
                "quantization": spec.quantization,
                "attrs": self.attrs,
                "schema_version": 1,
                "created": self.created,
            }
        return {
            "schema_version": self.schema_version,
            "level": self.level,
            "streams": {name: s.to_json() for name, s in self.streams.items()},
            "attrs": self.attrs,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreMeta:
        version = int(data.get("schema_version", 1))
        if "streams" in data:
            streams = {str(k): StreamSpec.from_json(v) for k, v in data["streams"].items()}
            level = str(data.get("level", "frame"))
        else:  # schema 1: one unnamed frame-level array, read as the stream "rgb"
            streams = {DEFAULT_STREAM: StreamSpec.from_json({**data, "attrs": {}})}
            level = "frame"
        return cls(
            streams=streams,
            attrs=dict(data.get("attrs") or {}),
            level=level,
            schema_version=version,
            created=dict(data.get("created") or {}),
        )


def check_readable(meta: StoreMeta, path: Path, action: str = "reads") -> None:
    """Refuse a schema this vidfeat does not know (newer, or not a schema at all)."""
    if meta.schema_version not in READABLE_SCHEMAS:
        raise StoreError(
            f"{path} uses store schema {meta.schema_version}; this vidfeat {action} schemas "
            f"{', '.join(map(str, READABLE_SCHEMAS))}. Upgrade vidfeat."
        )
    # The rules a writer follows hold for what a reader is given too: a store written by
    # another tool with, say, an unknown quantization scheme would otherwise read back as
    # plausible but wrong numbers.
    try:
        _check_level(meta.level)
        for name, spec in meta.streams.items():
            parse_stream(name, spec.to_json(), meta.level)
    except ConfigError as exc:
        raise StoreError(f"{path}: its root metadata breaks the store format: {exc}") from exc


def _identity(meta: StoreMeta) -> dict:
    attrs = {k: v for k, v in meta.attrs.items() if k not in VOLATILE_ATTRS}
    if "fps" in attrs:
        # A rate, not text: a store made with "1.0" or "1/1" takes runs with --fps 1.
        with contextlib.suppress(ConfigError):
            attrs["fps"] = format_fps(attrs["fps"])
    out: dict[str, Any] = {"level": meta.level, "streams": sorted(meta.streams), **attrs}
    for name, spec in meta.streams.items():
        for key, value in spec.to_json().items():
            key = "stream_attrs" if key == "attrs" else key
            # One stream named rgb keeps schema 1's key names, so its messages read as before.
            out[key if list(meta.streams) == [DEFAULT_STREAM] else f"{name}.{key}"] = value
    return out


def check_compatible(existing: StoreMeta, wanted: StoreMeta, path: Path) -> None:
    """Refuse to mix features made with different settings in one store."""
    have, want = _identity(existing), _identity(wanted)
    keys = [key for key in sorted(set(have) | set(want)) if have.get(key) != want.get(key)]
    if keys:
        raise mismatch_error(path, {key: (have.get(key), want.get(key)) for key in keys})


def mismatch_error(path: object, diffs: Mapping[str, tuple[Any, Any]]) -> StoreMismatchError:
    """The refusal to mix features: each differing key with (the store's, this run's) value."""
    said = "; ".join(f"{k}: store has {a!r}, this run has {b!r}" for k, (a, b) in diffs.items())
    return StoreMismatchError(
        f"{path} was written with different settings; refusing to mix features "
        f"(use a new output path or the original settings): {said}"
    )


def _json_safe(value: object, what: str) -> Any:
    try:
        # Round-trip through JSON so tuples/lists compare equal after a reopen. NaN is refused:
        # it is not JSON, and it never equals itself, so no run could append to the store.
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{what} must be JSON-serialisable, without NaN or infinity: {exc}"
        ) from exc


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ConfigError(f"level must be one of {LEVELS}, got {level!r}")


def parse_stream(name: str, value: int | Mapping[str, Any], level: str) -> StreamSpec:
    """A stream given as a dim, or as a dict with dim and optional dtype/quantization/attrs."""
    if not isinstance(name, str) or not STREAM_NAME_RE.match(name):
        raise ConfigError(f"invalid stream name {name!r}: a letter, then letters, digits or '_'")
    raw = {"dim": value} if not isinstance(value, Mapping) else dict(value)
    unknown = set(raw) - {"dim", "dtype", "quantization", "attrs"}
    if unknown:
        raise ConfigError(f"stream {name!r}: unknown keys {sorted(unknown)}")
    dim, dtype, quant = raw.get("dim"), raw.get("dtype", "float32"), raw.get("quantization")
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ConfigError(f"stream {name!r}: dim must be a positive integer, got {dim!r}")
    if dtype not in STORED_DTYPES:
        raise ConfigError(f"stream {name!r}: dtype must be one of {STORED_DTYPES}, got {dtype!r}")
    if (dtype == "uint8") != (quant is not None):
        raise ConfigError(
            f"stream {name!r}: uint8 streams need a quantization block, and only they may have one"
        )
    if quant is not None and not {"scheme", "min", "max"} <= set(quant):
        raise ConfigError(f"stream {name!r}: quantization needs 'scheme', 'min' and 'max'")
    if quant is not None and quant["scheme"] not in QUANTIZATION_SCHEMES:
        # Readers apply YouTube-8M's formula to every scheme they know; another scheme's codes
        # would read back as plausible but wrong numbers.
        raise ConfigError(
            f"stream {name!r}: unknown quantization scheme {quant['scheme']!r} "
            f"(known: {', '.join(QUANTIZATION_SCHEMES)})"
        )
    if level == "video" and dtype != "float32":
        raise ConfigError(f"stream {name!r}: video-level streams are stored as float32")
    return StreamSpec(
        int(dim),
        dtype,
        _json_safe(quant, "quantization"),
        _json_safe(dict(raw.get("attrs") or {}), f"stream {name!r} attrs"),
    )


def new_meta(
    streams: Mapping[str, int | Mapping[str, Any]],
    attrs: dict | None,
    version: str,
    level: str = "frame",
) -> StoreMeta:
    """Validate creation arguments into schema-2 root metadata."""
    _check_level(level)
    if not streams:
        raise ConfigError("a store needs at least one stream")
    specs = {name: parse_stream(name, value, level) for name, value in streams.items()}
    created = {
        "vidfeat_version": version,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        # Tells this store from a copy of it or one made in the same second (a Ray worker
        # must write into the driver's store, not into a node's own copy).
        "id": uuid.uuid4().hex,
    }
    return StoreMeta(specs, _json_safe(dict(attrs or {}), "store attrs"), level, created=created)


def as_schema(wanted: StoreMeta, existing: StoreMeta) -> StoreMeta:
    """The metadata a writer appends with: the existing store's schema, ``wanted``'s content.

    Appending to a schema-1 store (resuming an extraction begun by an older vidfeat) keeps the
    store schema 1, so the older vidfeat can still read it; it stays unverified.
    """
    return dataclasses.replace(
        wanted, schema_version=existing.schema_version, created=existing.created
    )
