"""``export_yt8m``: a feature store -> TFRecords in YouTube-8M's schema.

Frame level writes ``SequenceExample`` records with one bytes entry per frame and stream (the
stored uint8 codes, byte for byte); video level writes ``Example`` records with ``mean_<stream>``
float lists. Files are named ``<split><NNNN>.tfrecord`` like Google's, ``records_per_file``
videos each, each written under a temporary name and renamed when complete.

The split prefix is the YouTube-8M split of the file a video was imported from when there is
one (so ``validate`` files come back as ``validate``), else the store split (``val`` and
``test`` videos become ``validate`` and ``test``). Labels become Google's indices through the
vocabulary recorded at import; labels that are integers are written as they are; any other
labels get indices in sorted order, written to ``vocabulary.csv`` in the output directory.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from vidfeat import atomic
from vidfeat.errors import ConfigError
from vidfeat.store.schema import QUANTIZATION_SCHEMES
from vidfeat.yt8m.schema import IMPORTED_SOURCE, LEVELS, STREAM_DIMS, Yt8mVideo, encode_record
from vidfeat.yt8m.segments import read_segments, segments_by_video
from vidfeat.yt8m.sources import split_from_name, store_split
from vidfeat.yt8m.tfrecord import write_records
from vidfeat.yt8m.vocabulary import COLUMNS, Vocabulary

log = logging.getLogger(__name__)

_STORE_TO_YT8M_SPLIT = {"train": "train", "val": "validate", "test": "test", "": "train"}
YT8M_RANGE = (-2.0, 2.0)


@dataclasses.dataclass
class ExportSummary:
    videos: int = 0
    frames: int = 0
    files: list[Path] = dataclasses.field(default_factory=list)


def write_tfrecord_files(
    videos: Iterable[tuple[str, Yt8mVideo]], out: str | os.PathLike, records_per_file: int
) -> Iterator[Path]:
    """Write ``(file_prefix, video)`` pairs into ``<prefix><NNNN>.tfrecord`` files.

    Each file is written to a temporary name and renamed once complete; yields each path.
    """
    if records_per_file < 1:
        raise ConfigError("records_per_file must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buffers: dict[str, list[bytes]] = {}
    counters: dict[str, int] = {}

    def flush(prefix: str) -> Path:
        path = out / f"{prefix}{counters.get(prefix, 0):04d}.tfrecord"
        counters[prefix] = counters.get(prefix, 0) + 1
        with atomic.atomic_open(path, "wb") as fh:
            write_records(fh, buffers.pop(prefix))
        return path

    for prefix, video in videos:
        buffers.setdefault(prefix, []).append(encode_record(video))
        if len(buffers[prefix]) >= records_per_file:
            yield flush(prefix)
    for prefix in sorted(buffers):
        yield flush(prefix)


def _label_indices(store: object, labels: Iterable[str]) -> tuple[dict[str, int], bool]:
    """Label name -> index, and whether a vocabulary file must be written for them."""
    recorded = store.attrs.get("vocabulary")
    if recorded:
        return Vocabulary.from_json(recorded).indices, False
    names = sorted(set(labels))
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if all(re.fullmatch(r"[0-9]+", n) for n in names):
        return {n: int(n) for n in names}, False
    return {n: i for i, n in enumerate(names)}, True


def _write_vocabulary(path: Path, indices: dict[str, int]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for name, index in sorted(indices.items(), key=lambda kv: kv[1]):
            writer.writerow([index, "", "", name, "", "", "", "", ""])


def _check_streams(store: object, level: str) -> None:
    other = {n: s.dim for n, s in store.streams.items() if s.dim != STREAM_DIMS.get(n, s.dim)}
    if other:
        # Valid records, but of other sizes than the released data's: YouTube-8M's starter
        # code reads them with --feature_sizes, and import-yt8m (the released sizes) does not.
        sizes = ", ".join(f"{n} {d}-d (released: {STREAM_DIMS[n]})" for n, d in other.items())
        log.warning(
            "%s: %s; YouTube-8M's code needs --feature_sizes to read these records, and "
            "vidfeat import-yt8m reads the released sizes only",
            store.path,
            sizes,
        )
    if level == "frame":
        for name, spec in store.streams.items():
            q = spec.quantization or {}
            # Both schemes are YouTube-8M's bytes: rgb rounded (yt8m_uint8), VGGish's audio
            # floored (vggish_uint8); its readers dequantize them alike.
            if spec.dtype != "uint8" or q.get("scheme") not in QUANTIZATION_SCHEMES:
                raise ConfigError(
                    f"stream {name!r} is {spec.dtype}; frame-level YouTube-8M records hold "
                    "uint8 codes (make them with --pca ... --quantize, and for audio "
                    "--audio-pca ... --quantize)"
                )
            if (q.get("min"), q.get("max")) != YT8M_RANGE:
                raise ConfigError(
                    f"stream {name!r} is quantized over [{q.get('min')}, {q.get('max')}]; "
                    "YouTube-8M readers assume [-2, 2]"
                )


def _video(store: object, row: object, level: str, indices: dict, segments: dict) -> Yt8mVideo:
    vid = str(row.video_id)
    if level == "frame":
        features = {s: store.read(vid, stream=s, raw=True) for s in store.streams}
    else:
        features = {s: store.mean(vid, stream=s) for s in store.streams}
    labels = tuple(indices[x] for x in row.labels)
    return Yt8mVideo(vid, labels, level, features, segments.get(vid))


def _prefix(row: object, imported: bool) -> str:
    # Only an imported store's source_path is a YouTube-8M file whose name says its split; an
    # extracted one's is the video, and "testimony.mp4" is no test video. The file's split is
    # taken when it gives the stored one (a validate file's videos are stored as val or test,
    # and go back to validate); a split chosen at import (--split) is the stored one.
    stored = str(row.split or "")
    from_file = split_from_name(str(row.source_path or "")) if imported else None
    if from_file is not None and store_split(from_file, str(row.video_id)) == stored:
        return from_file
    return _STORE_TO_YT8M_SPLIT.get(stored, "train")


def export_yt8m(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    level: str | None = None,
    records_per_file: int = 1024,
) -> ExportSummary:
    """Write every ok video of a store as YouTube-8M TFRecords under ``out``."""
    from vidfeat.store import open_store

    out = Path(out)
    earlier = sorted(out.glob("*.tfrecord")) if out.is_dir() else []
    if earlier or (out / "vocabulary.csv").exists():
        # Files of the same names are replaced, the others kept: a re-export would mix the two,
        # and importing the folder would read both.
        raise ConfigError(
            f"{out} already holds an export ({len(earlier)} TFRecord files); "
            "export into an empty folder, or remove them first"
        )
    with open_store(store_path) as store:
        level = level or store.level
        if level not in LEVELS:
            raise ConfigError(f"level must be one of {LEVELS}, got {level!r}")
        if level == "frame" and store.level != "frame":
            raise ConfigError(f"{store_path} is a video-level store: it has no frames to export")
        _check_streams(store, level)
        videos = store.videos[store.videos["status"] == "ok"]
        indices, needs_vocabulary = _label_indices(
            store, (x for labels in videos["labels"] for x in labels)
        )
        segments = segments_by_video(read_segments(store_path, videos["video_id"]))
        summary = ExportSummary()
        imported = store.attrs.get("source") == IMPORTED_SOURCE
        rows = (
            (_prefix(row, imported), _video(store, row, level, indices, segments))
            for row in videos.itertuples(index=False)
        )

        def counted() -> Iterator[tuple[str, Yt8mVideo]]:
            for prefix, video in rows:
                summary.videos += 1
                summary.frames += video.n_frames
                yield prefix, video

        summary.files = list(write_tfrecord_files(counted(), out, records_per_file))
    if needs_vocabulary:
        _write_vocabulary(out / "vocabulary.csv", indices)
    log.info("exported %d videos into %d files under %s", summary.videos, len(summary.files), out)
    return summary
