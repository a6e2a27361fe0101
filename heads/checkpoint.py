"""Run-directory files: self-describing checkpoints, atomic writes, store provenance.

A checkpoint is a plain dict of tensors and primitives (no pickled classes), so it loads with
``torch.load(weights_only=True)``. It carries everything needed to rebuild its model and data
pipeline alone: model name, head and train config (as dicts), label map, and the provenance of
the store it was trained on, which is checked before the model is used on another store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vidfeat.errors import StoreMismatchError, VidfeatError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
BEST, LAST = "best.pt", "last.pt"
CONFIG, LABEL_MAP, SPLIT, METRICS = "config.json", "label_map.json", "split.csv", "metrics.jsonl"
TEST_METRICS, TEST_PREDICTIONS = "test_metrics.json", "test_predictions"
# Store attrs that change what a feature vector means: a model trained on one value is
# meaningless on another. Other attrs (versions, paths, frame limits) may differ freely.
IDENTITY_ATTRS = ("backbone", "weights", "pca")
SOFT_ATTRS = ("fps",)  # differ -> warning: temporal heads see another time scale


class CheckpointError(VidfeatError, OSError):
    """A run directory or checkpoint is missing, corrupt or from an unknown format."""


class IncompatibleStoreError(StoreMismatchError):
    """A trained model was pointed at a store whose features mean something else."""


class MissingStreamError(IncompatibleStoreError):
    """A store lacks a stream that a run reads."""


# ------------------------------------------------------------------------------ atomic files


def _atomic_write(path: Path, write: Any, mode: str = "w") -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    text = json.dumps(_json_safe(data), indent=2, sort_keys=False) + "\n"
    _atomic_write(Path(path), lambda fh: fh.write(text))


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: is this a heads run directory?") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    text = "".join(json.dumps(_json_safe(r)) + "\n" for r in records)
    _atomic_write(Path(path), lambda fh: fh.write(text))


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(_json_safe(record)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temporary file, fsync, rename)."""
    _atomic_write(Path(path), lambda fh: torch.save(state, fh), mode="wb")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            first = (str(exc).splitlines() or [""])[0]
            raise CheckpointError(f"cannot load checkpoint {path}: {first}") from exc
        # torch's own message is several lines of advice to load with weights_only=False,
        # which would run the file's code: exactly what must not happen.
        raise CheckpointError(
            f"refused checkpoint {path}: it holds objects other than tensors and plain values "
            "(loading it could run code)"
        ) from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"cannot load checkpoint {path}: {first}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a heads checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def rng_state() -> dict[str, Any]:
    """Global torch RNG states as tensors (dropout draws from them)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ provenance


def store_provenance(reader: Any, streams: Sequence[str] | None = None) -> dict[str, Any]:
    """What a model needs to know about the features it was trained on: the store's level and
    attrs, and each stream it reads (default: all), in input order. ``dim`` is their total
    width; ``dtype`` and ``quantization`` are the stream's when there is one, else None."""
    names = tuple(streams) if streams is not None else tuple(reader.streams)
    specs = {name: reader.streams[name] for name in names}
    one = specs[names[0]] if len(names) == 1 else None
    return {
        "path": str(Path(reader.path).resolve()),
        "level": reader.level,
        "streams": {
            name: {
                "dim": int(spec.dim),
                "dtype": str(spec.dtype),
                "quantization": spec.quantization,
                "attrs": json.loads(json.dumps(spec.attrs)),
            }
            for name, spec in specs.items()
        },
        "dim": sum(int(spec.dim) for spec in specs.values()),
        "dtype": None if one is None else str(one.dtype),
        "attrs": json.loads(json.dumps(reader.attrs)),
        "quantization": None if one is None else one.quantization,
    }


def recorded_streams(provenance: dict[str, Any]) -> dict[str, int] | None:
    """name -> width of the streams a run reads, in input order; None for a run recorded
    before stores had streams (it read the store's only stream)."""
    streams = provenance.get("streams")
    return None if streams is None else {k: int(v["dim"]) for k, v in streams.items()}


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
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _attr_problems(where: str, trained: dict[str, Any], attrs: dict[str, Any]) -> list[str]:
    return [
        f"{where}{key}: model trained on {_brief(trained.get(key))}, "
        f"store has {_brief(attrs.get(key))}"
        for key in IDENTITY_ATTRS
        if _identity(key, trained.get(key)) != _identity(key, attrs.get(key))
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
        problems += _attr_problems(f"stream {name} ", trained, json.loads(json.dumps(spec.attrs)))
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
        if trained.get(key) != attrs.get(key):
            log.warning(
                "%s differs: trained on %r, store has %r", key, trained.get(key), attrs.get(key)
            )
