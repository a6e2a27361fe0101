"""What a run was trained on, and the checks that keep a run bound to it.

A run records its store's identity in ``config.json`` and in every checkpoint (``"store"``):
the root metadata (level, attrs, and each stream it reads with its dim, dtype, quantization and
attrs) plus a fingerprint of the videos it uses and their split. Two levels of check follow from it:

* :func:`check_store_compatible` - the store has the run's streams and the features mean the
  same thing (dim, backbone, weights, PCA). Enough to score a model on another store
  (``evaluate --split all``, ``predict``, ``finetune``): other videos are the point there.
* :func:`check_same_data` - the very data of the run: every root attr and the fingerprints. A
  resumed run, or a score of the run's own train/val/test videos, needs this; another store
  with the same ids and dim (another backbone, re-extracted videos) is refused.

Two fingerprints: one of the videos (ids, splits, frame counts, labels), one of their features
(the stored per-video means of a fixed sample of them), so that a store holding the same videos
with other numbers is told apart even when its attrs were copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from heads.errors import IncompatibleStoreError, MissingStreamError, RunDataMismatchError
from vidfeat.location import canonical
from vidfeat.store.schema import VOLATILE_ATTRS

log = logging.getLogger(__name__)

# Store attrs that change what a feature vector means: a model trained on one value is
# meaningless on another. Other attrs (versions, paths, frame limits) may differ freely.
IDENTITY_ATTRS = ("backbone", "weights", "pca")
SOFT_ATTRS = ("fps",)  # differ -> warning: temporal heads see another time scale
ROOT_KEYS = ("dim", "dtype", "quantization", "attrs")


def _canonical(value: Any) -> str:
    # JSON text, not ==: NaN inside attrs must equal itself, and dict order must not matter.
    return json.dumps(value, sort_keys=True, default=str)


def video_fingerprint(videos: pd.DataFrame) -> dict[str, Any]:
    """sha256 over each video's id, split, frame count and labels (``videos`` needs the columns
    video_id, split, n_frames, labels), independent of row order."""
    rows = sorted(
        f"{vid}\t{split}\t{int(n)}\t{';'.join(sorted(labels))}\n"
        for vid, split, n, labels in zip(
            videos["video_id"], videos["split"], videos["n_frames"], videos["labels"], strict=True
        )
    )
    digest = hashlib.sha256("".join(rows).encode("utf-8")).hexdigest()
    return {"n_videos": len(rows), "sha256": digest}


CONTENT_SAMPLE = 64  # videos whose stored means the content fingerprint covers


def content_fingerprint(reader: Any, video_ids: Sequence[str], streams: Sequence[str]) -> dict:
    """sha256 over the stored mean vectors, every stream in ``streams``, of up to
    ``CONTENT_SAMPLE`` of ``video_ids``: those whose id hashes lowest, so the sample depends
    neither on row order nor on which other videos the store holds. Reading 64 means costs
    milliseconds where hashing every feature of a large store would cost a pass over it."""
    chosen = sorted(video_ids, key=lambda v: hashlib.sha256(str(v).encode("utf-8")).digest())
    digest = hashlib.sha256()
    for vid in sorted(chosen[:CONTENT_SAMPLE]):
        digest.update(f"{vid}\n".encode())
        for stream in streams:
            digest.update(np.ascontiguousarray(reader.mean(vid, stream), dtype="<f4").tobytes())
    return {"n_videos": min(len(chosen), CONTENT_SAMPLE), "sha256": digest.hexdigest()}


def store_identity(
    reader: Any, videos: pd.DataFrame | None = None, streams: Sequence[str] | None = None
) -> dict[str, Any]:
    """The store a run trains on: its level and attrs, each stream it reads (default: all) in
    input order, and the fingerprint of ``videos``. ``dim`` is the streams' total width;
    ``dtype`` and ``quantization`` are the stream's when there is one, else None."""
    names = tuple(streams) if streams is not None else tuple(reader.streams)
    specs = {name: reader.streams[name] for name in names}
    one = specs[names[0]] if len(names) == 1 else None
    identity = {
        "path": canonical(reader.path),
        "level": reader.level,
        "streams": {
            name: {
                "dim": int(spec.dim),
                "dtype": str(spec.dtype),
                "quantization": spec.quantization,
                "attrs": json.loads(json.dumps(spec.attrs, default=str)),
            }
            for name, spec in specs.items()
        },
        "dim": sum(int(spec.dim) for spec in specs.values()),
        "dtype": None if one is None else str(one.dtype),
        "attrs": json.loads(json.dumps(reader.attrs, default=str)),
        "quantization": None if one is None else one.quantization,
    }
    if videos is not None:
        identity["videos"] = video_fingerprint(videos)
        identity["content"] = content_fingerprint(reader, list(videos["video_id"]), names)
    return identity


def recorded_streams(identity: dict[str, Any]) -> dict[str, int] | None:
    """name -> width of the streams a run reads, in input order; None for a run recorded
    before stores had streams (it read the store's only stream)."""
    streams = identity.get("streams")
    return None if streams is None else {k: int(v["dim"]) for k, v in streams.items()}


def check_same_data(
    recorded: dict[str, Any], reader: Any, videos: pd.DataFrame, action: str
) -> None:
    """Refuse ``action`` unless ``reader`` and ``videos`` are exactly the run's data."""
    streams = recorded_streams(recorded)
    current = store_identity(reader, videos, None if streams is None else list(streams))
    # The command line, version and host that made a store say nothing of its features (the
    # store's own identity rule ignores them too); compared, they named "command" as a
    # difference between any two extractions.
    recorded = {**recorded, "attrs": _without_volatile(recorded.get("attrs"))}
    current["attrs"] = _without_volatile(current["attrs"])
    # Runs recorded before stores had streams have no level or streams to compare.
    keys = [*ROOT_KEYS, *(k for k in ("level", "streams") if k in recorded)]
    problems = [
        f"{key} differs" if key != "attrs" else _attr_diff(recorded["attrs"], current["attrs"])
        for key in keys
        if _canonical(recorded.get(key)) != _canonical(current[key])
    ]
    saved = recorded.get("videos")
    if saved is None:
        log.warning("this run predates video fingerprints: its video set is not checked")
    elif saved != current["videos"]:
        problems.append(
            f"the run's {saved['n_videos']} videos (ids, splits, frame counts, labels) differ "
            f"from what the store holds now ({current['videos']['n_videos']} match by id)"
        )
    content = recorded.get("content")
    if content is None:
        log.warning("this run predates content fingerprints: its features are not checked")
    elif saved == current["videos"] and content != current["content"]:
        problems.append(
            "the same videos hold other features (the stored means of "
            f"{content['n_videos']} of them differ): re-extracted, or another store's"
        )
    if problems:
        raise RunDataMismatchError(
            f"cannot {action}: store {reader.path} is not the data this run was trained on "
            f"(trained on {recorded.get('path')}): " + "; ".join(problems)
        )


def _without_volatile(attrs: Any) -> Any:
    if not isinstance(attrs, dict):
        return attrs
    return {k: v for k, v in attrs.items() if k not in VOLATILE_ATTRS}


def _attr_diff(trained: dict[str, Any], current: dict[str, Any]) -> str:
    keys = sorted(
        k
        for k in set(trained) | set(current)
        if _canonical(trained.get(k)) != _canonical(current.get(k))
    )
    return "attrs differ: " + ", ".join(
        f"{k} (run {_brief(trained.get(k))}, store {_brief(current.get(k))})" for k in keys
    )


def _identity(key: str, value: Any) -> Any:
    # A PCA is identified by its matrix (sha256), not by where it was fitted or saved.
    if key == "pca" and isinstance(value, dict) and "sha256" in value:
        return value["sha256"]
    return value


def _brief(value: Any) -> str:
    if isinstance(value, dict):
        keys = [k for k in ("name", "weights_id", "sha256") if k in value]
        if keys:
            return "{" + ", ".join(f"{k}={str(value[k])[:16]}" for k in keys) + "}"
    text = _canonical(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _attr_problems(where: str, trained: dict[str, Any], attrs: dict[str, Any]) -> list[str]:
    return [
        f"{where}{key}: model trained on {_brief(trained.get(key))}, "
        f"store has {_brief(attrs.get(key))}"
        for key in IDENTITY_ATTRS
        if _canonical(_identity(key, trained.get(key)))
        != _canonical(_identity(key, attrs.get(key)))
    ]


def _stream_problems(provenance: dict[str, Any], reader: Any) -> list[str]:
    """Each stream the run reads must be in the store, as wide, made the same way."""
    wanted = recorded_streams(provenance)
    if wanted is None:
        if len(reader.streams) != 1:
            raise MissingStreamError(
                f"the model reads one stream ({provenance['dim']} wide); store {reader.path} "
                f"holds {len(reader.streams)}: {', '.join(reader.streams)}"
            )
        wanted = {next(iter(reader.streams)): int(provenance["dim"])}
    missing = [name for name in wanted if name not in reader.streams]
    if missing:
        raise MissingStreamError(
            f"store {reader.path} has no stream {', '.join(repr(m) for m in missing)}: the model "
            f"reads {', '.join(wanted)}, the store holds {', '.join(reader.streams)}"
        )
    problems = []
    for name, dim in wanted.items():
        spec = reader.streams[name]
        if int(spec.dim) != dim:
            problems.append(f"stream {name} dim: model expects {dim}, store has {spec.dim}")
        trained = (provenance.get("streams") or {}).get(name, {}).get("attrs") or {}
        attrs = json.loads(json.dumps(spec.attrs, default=str))
        problems += _attr_problems(f"stream {name} ", trained, attrs)
    return problems


def check_store_compatible(provenance: dict[str, Any], reader: Any) -> None:
    """Refuse a store that lacks a stream the model reads (``MissingStreamError``), or whose
    features differ in dimension, backbone, weights or PCA (store or stream attrs).

    dtype and quantization may differ: the reader dequantizes, so a uint8 copy of the same
    features is a valid input.
    """
    problems = _stream_problems(provenance, reader)
    trained, attrs = provenance.get("attrs") or {}, json.loads(json.dumps(reader.attrs))
    problems += _attr_problems("", trained, attrs)
    if problems:
        raise IncompatibleStoreError(
            f"store {reader.path} does not match the features this model was trained on: "
            + "; ".join(problems)
        )
    for key in SOFT_ATTRS:
        if _canonical(trained.get(key)) != _canonical(attrs.get(key)):
            log.warning(
                "%s differs: trained on %r, store has %r", key, trained.get(key), attrs.get(key)
            )
