"""Apply a PCA (and optionally YouTube-8M's 8-bit quantization) to features before storing.

``FeatureReduction`` is the one place that turns backbone features into stored features; both
``apply_pca_to_store`` (derive a new store from an existing one) and extraction with ``--pca``
use it, so the two paths cannot disagree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.location import canonical
from vidfeat.pca.quantize import quantization_attrs, quantize
from vidfeat.pca.transform import PCATransform, load_pca
from vidfeat.store.schema import DEFAULT_STREAM

if TYPE_CHECKING:
    from vidfeat.store import StoreReader

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (videos done, videos total)
# Per-video columns copied verbatim from the parent store.
_INFO_COLUMNS = ("source_path", "decoder", "split", "group", "duration_s", "native_fps")


@dataclass(frozen=True)
class FeatureReduction:
    """PCA then, if ``quantize``, YouTube-8M's uint8 codes in [-2, 2]."""

    pca: PCATransform | None = None
    quantize: bool = False

    def __post_init__(self) -> None:
        if self.quantize and self.pca is None:
            # Raw InceptionV3 features are ReLU means in roughly [0, 10]: clipping them to
            # [-2, 2] would silently destroy them. Quantization only makes sense after whitening.
            raise ConfigError("quantization needs a PCA (--pca): raw features do not fit [-2, 2]")

    @classmethod
    def from_options(
        cls, pca_path: str | os.PathLike | None, quantize: bool = False
    ) -> FeatureReduction:
        """Build from CLI-style options (``--pca PATH``, ``--quantize``)."""
        return cls(None if pca_path is None else load_pca(pca_path), quantize)

    def output_dim(self, input_dim: int) -> int:
        """Stored feature size; raises if the PCA was made for another input size."""
        if self.pca is None:
            return input_dim
        if self.pca.input_dim != input_dim:
            raise ConfigError(
                f"PCA expects {self.pca.input_dim}-d features but the input has {input_dim}-d"
            )
        return self.pca.output_dim

    @property
    def dtype(self) -> str | None:
        """Stored dtype forced by the reduction (``None``: the caller's choice, e.g. float16
        for PCA-reduced features as for raw ones)."""
        return "uint8" if self.quantize else None

    @property
    def quantization(self) -> dict | None:
        return quantization_attrs() if self.quantize else None

    def attrs(self) -> dict[str, Any]:
        """Store attrs recording the PCA (``{"pca": None}`` when there is none)."""
        return {"pca": None if self.pca is None else self.pca.provenance()}

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(T, D) float features -> (T, K) float32, or uint8 codes when quantizing."""
        if self.pca is None:
            return np.asarray(features)
        reduced = self.pca.apply(features)
        return quantize(reduced) if self.quantize else reduced


def _pca_in_store_attrs(reader: StoreReader, stream: str) -> bool:
    """Whether ``stream``'s PCA provenance is the store attr ``pca`` (the extracted frames'
    stream, ``rgb``), rather than a key of the stream's own attrs (``audio``'s VGGish PCA)."""
    return len(reader.streams) == 1 or stream == DEFAULT_STREAM


def _parent_block(src_path: str | os.PathLike, reader: StoreReader, stream: str) -> dict:
    # Only what identifies the parent's features: a parent that grows keeps the same block,
    # so the derived store can be resumed to cover the new videos.
    spec = reader.streams[stream]
    on_store = _pca_in_store_attrs(reader, stream)
    block = {
        "path": canonical(src_path),
        "format": reader.format,
        "dim": spec.dim,
        "dtype": str(np.dtype(spec.dtype)),
        "quantization": spec.quantization,
        "pca": reader.attrs.get("pca") if on_store else spec.attrs.get("pca"),
    }
    return block if len(reader.streams) == 1 else {**block, "stream": stream}


def _stream_specs(reader: StoreReader, stream: str, reduction: FeatureReduction) -> dict:
    """Every stream of the parent, ``stream`` as the reduction makes it, the others as stored."""
    specs = {name: spec.to_json() for name, spec in reader.streams.items()}
    specs[stream] |= {
        "dim": reduction.output_dim(reader.streams[stream].dim),
        "dtype": reduction.dtype or "float32",
        "quantization": reduction.quantization,
    }
    if not _pca_in_store_attrs(reader, stream):
        # The stream records its own reduction; its constant for videos without the stream's
        # source (no_audio_value) is no longer one value once projected.
        kept = {k: v for k, v in specs[stream]["attrs"].items() if k != "no_audio_value"}
        specs[stream]["attrs"] = {**kept, "reduced_by": reduction.attrs()["pca"]}
    return specs


def apply_pca_to_store(
    src_path: str | os.PathLike,
    pca: PCATransform,
    out_path: str | os.PathLike,
    quantize: bool = False,
    format: str | None = None,
    progress: Progress | None = None,
    stream: str | None = None,
) -> dict[str, Any]:
    """Derive a reduced store from ``src_path``, video by video; rerun to resume.

    ``stream`` is reduced (default: the store's only stream); a store's other streams are
    copied as stored (rgb reduced, the audio that VGGish's own PCA already made, kept).
    Successful videos are transformed, failed ones copied as failures, so the derived store
    describes the same videos. Returns counts for the run.
    """
    from vidfeat.store import create_store, open_store

    if canonical(src_path) == canonical(out_path):
        raise ConfigError("the output store must differ from the input store")
    reduction = FeatureReduction(pca, quantize)
    with open_store(src_path) as reader:
        stream = reader.stream_name(stream)
        dim = reduction.output_dim(reader.streams[stream].dim)
        attrs = {
            **reader.attrs,
            **(reduction.attrs() if _pca_in_store_attrs(reader, stream) else {}),
            "parent_store": _parent_block(src_path, reader, stream),
        }
        if not reader.ok_ids:
            logger.warning("%s has no successful videos; only failures will be copied", src_path)
        if len(reader.streams) == 1:  # one stream: laid out as before streams existed
            writer = create_store(
                out_path,
                dim=dim,
                format=format,
                attrs=attrs,
                dtype=reduction.dtype or "float32",
                quantization=reduction.quantization,
            )
        else:
            specs = _stream_specs(reader, stream, reduction)
            writer = create_store(out_path, streams=specs, format=format, attrs=attrs)
        with writer:
            counts = _copy_videos(reader, writer, reduction, stream, progress)
    logger.info("derived %s from %s: %s", out_path, src_path, counts)
    stored = reduction.dtype or "float32"
    return {"out_path": str(out_path), "dim": dim, "dtype": stored, **counts}


def _copy_videos(
    reader: StoreReader,
    writer: Any,
    reduction: FeatureReduction,
    stream: str,
    progress: Progress | None,
) -> dict[str, int]:
    done_ok = writer.committed_ids(status="ok")
    done_any = writer.committed_ids()
    counts = {"written": 0, "failures_copied": 0, "skipped": 0, "frames": 0}
    rows = reader.videos.to_dict("records")
    for i, row in enumerate(rows, start=1):
        vid, ok = row["video_id"], row["status"] == "ok"
        # An ok video is redone if only a failure was committed (the parent was retried since).
        if vid in (done_ok if ok else done_any):
            counts["skipped"] += 1
        else:
            info = {k: row[k] for k in _INFO_COLUMNS if k in row}
            if ok:
                out = reduction(reader.read(vid, stream))  # (T, K) float32 or uint8
                others = [name for name in reader.streams if name != stream]
                values = {**reader.read_streams(vid, others, raw=True), stream: out}
                features = values if others else out
                # An ok row's reason is its note (``no_audio``): the copied audio stream's
                # zeros mean "no track" only with it.
                writer.write(
                    vid,
                    features,
                    labels=row["labels"],
                    timestamps=reader.timestamps(vid),
                    note=row["reason"],
                    **info,
                )
                counts["written"] += 1
                counts["frames"] += len(out)
            else:
                writer.write_failure(vid, row["status"], row["reason"], row["labels"], **info)
                counts["failures_copied"] += 1
        if progress is not None:
            progress(i, len(rows))
    return counts
