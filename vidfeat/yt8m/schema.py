"""YouTube-8M's record schema: one video per record, parsed into :class:`Yt8mVideo` and back.

Frame level (``SequenceExample``): context ``id`` (bytes) and ``labels`` (int64 list); feature
lists ``rgb`` and ``audio`` with one bytes entry per frame (1024 and 128 uint8 codes). Video
level (``Example``): ``id``, ``labels``, ``mean_rgb`` (1024 floats) and ``mean_audio`` (128).
Google's files hold both streams; records with one of them (``rgb`` only, as exported from a
vidfeat store without audio) are read too.
The 2019 segment-rated files add ``segment_labels``, ``segment_start_times`` (int64 lists) and
``segment_scores`` (float list) to the context. Feature bytes are kept exactly as stored: never
decoded to floats and requantized.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from google.protobuf.message import DecodeError

from vidfeat.errors import BadExampleError
from vidfeat.yt8m import protos

# Stream name -> feature size. The same names serve both levels; at video level the record keys
# carry a ``mean_`` prefix.
STREAM_DIMS: Mapping[str, int] = {"rgb": 1024, "audio": 128}
LEVELS = ("frame", "video")
IMPORTED_SOURCE = "youtube-8m"  # the store attr ``source`` of what import-yt8m writes
ID_KEYS = ("id", "video_id")  # "video_id" in the 2017 release
SEGMENT_KEYS = ("segment_labels", "segment_start_times", "segment_scores")


@dataclasses.dataclass(frozen=True)
class Segments:
    """Segment ratings of one video: parallel arrays, one entry per rated (segment, label)."""

    labels: np.ndarray  # (S,) int64 class index
    start_times: np.ndarray  # (S,) int64 seconds (= frame index at 1 fps)
    scores: np.ndarray  # (S,) float32, 1 = the label is present in the 5-s segment

    def __post_init__(self) -> None:
        n = {len(self.labels), len(self.start_times), len(self.scores)}
        if len(n) != 1:
            raise BadExampleError("segment_labels, segment_start_times and segment_scores differ")


@dataclasses.dataclass(frozen=True)
class Yt8mVideo:
    """One YouTube-8M video. ``features`` maps stream name to (T, D) uint8 codes at frame level
    or a (D,) float32 mean at video level."""

    video_id: str
    labels: tuple[int, ...]
    level: str
    features: Mapping[str, np.ndarray]
    segments: Segments | None = None

    @property
    def n_frames(self) -> int:
        if self.level != "frame":
            return 0
        return len(next(iter(self.features.values())))

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.features.values())


def _bytes(features: Mapping, key: str, where: str) -> list[bytes]:
    if key not in features or features[key].WhichOneof("kind") != "bytes_list":
        raise BadExampleError(f"{where}: no bytes feature {key!r}")
    return list(features[key].bytes_list.value)


def _ints(features: Mapping, key: str) -> np.ndarray:
    if key not in features:
        return np.zeros(0, dtype=np.int64)
    # Read as int64 a list of another kind is empty: labels written as strings by another
    # converter would vanish without a word.
    kind = features[key].WhichOneof("kind")
    if kind not in ("int64_list", None):
        raise BadExampleError(f"{key!r} is of kind {kind}, expected int64_list")
    return np.asarray(features[key].int64_list.value, dtype=np.int64)


def _floats(features: Mapping, key: str) -> np.ndarray:
    if key not in features:
        return np.zeros(0, dtype=np.float32)
    kind = features[key].WhichOneof("kind")
    if kind not in ("float_list", None):
        raise BadExampleError(f"{key!r} is of kind {kind}, expected float_list")
    return np.asarray(features[key].float_list.value, dtype=np.float32)


def _video_id(context: Mapping) -> str:
    key = next((k for k in ID_KEYS if k in context), "id")
    values = _bytes(context, key, "record")
    if len(values) != 1 or not values[0]:
        raise BadExampleError(f"record: {key!r} must hold exactly one non-empty value")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadExampleError(f"record: {key!r} is not UTF-8: {values[0]!r}") from None


def _segments(context: Mapping, video_id: str) -> Segments | None:
    if not any(k in context for k in SEGMENT_KEYS):
        return None
    try:
        return Segments(
            _ints(context, "segment_labels"),
            _ints(context, "segment_start_times"),
            _floats(context, "segment_scores"),
        )
    except BadExampleError as exc:
        raise BadExampleError(f"{video_id}: {exc}") from None


def _frame_stream(lists: Mapping, name: str, dim: int, video_id: str) -> np.ndarray:
    frames = lists[name].feature
    chunks = []
    for t, frame in enumerate(frames):
        values = frame.bytes_list.value
        if len(values) != 1 or len(values[0]) != dim:
            sizes = [len(v) for v in values]
            raise BadExampleError(
                f"{video_id}: {name} frame {t} holds {sizes} bytes, expected one entry of {dim}"
            )
        chunks.append(values[0])
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(len(chunks), dim)


def _frame_features(message: object, video_id: str) -> dict[str, np.ndarray]:
    lists = message.feature_lists.feature_list
    names = [name for name in STREAM_DIMS if name in lists]
    if not names:
        raise BadExampleError(f"{video_id}: no feature list of {list(STREAM_DIMS)}")
    out = {name: _frame_stream(lists, name, STREAM_DIMS[name], video_id) for name in names}
    counts = {name: len(a) for name, a in out.items()}
    if len(set(counts.values())) != 1 or not next(iter(counts.values())):
        raise BadExampleError(f"{video_id}: frame counts must be equal and > 0, got {counts}")
    return out


def _video_features(context: Mapping, video_id: str) -> dict[str, np.ndarray]:
    out = {}
    for name, dim in STREAM_DIMS.items():
        key = f"mean_{name}"
        if key not in context:
            continue
        if context[key].WhichOneof("kind") != "float_list":
            raise BadExampleError(f"{video_id}: {key!r} is not a float list")
        values = np.asarray(context[key].float_list.value, dtype=np.float32)
        if values.shape != (dim,):
            raise BadExampleError(f"{video_id}: {key} has {len(values)} values, expected {dim}")
        out[name] = values
    if not out:
        raise BadExampleError(
            f"{video_id}: no float feature of {[f'mean_{n}' for n in STREAM_DIMS]}"
        )
    return out


def parse_record(data: bytes) -> Yt8mVideo:
    """One serialized record -> :class:`Yt8mVideo`; the level is read from the record.

    A serialized ``Example`` is also a valid ``SequenceExample`` (its ``features`` is field 1,
    like ``context``), so one parse serves both; feature lists make it frame level.
    """
    try:
        message = protos.SequenceExample.FromString(data)
    except DecodeError as exc:
        raise BadExampleError(f"not a tf.train.Example or SequenceExample: {exc}") from None
    context = message.context.feature
    video_id = _video_id(context)
    try:
        labels = tuple(int(x) for x in _ints(context, "labels"))
    except BadExampleError as exc:
        raise BadExampleError(f"{video_id}: {exc}") from None
    if message.feature_lists.feature_list:
        level, features = "frame", _frame_features(message, video_id)
    else:
        level, features = "video", _video_features(context, video_id)
    return Yt8mVideo(video_id, labels, level, features, _segments(context, video_id))


def _fill_context(features: object, video: Yt8mVideo) -> None:
    features.feature["id"].bytes_list.value.append(video.video_id.encode("utf-8"))
    features.feature["labels"].int64_list.value.extend(video.labels)
    if video.segments is not None:
        seg = video.segments
        features.feature["segment_labels"].int64_list.value.extend(seg.labels.tolist())
        features.feature["segment_start_times"].int64_list.value.extend(seg.start_times.tolist())
        features.feature["segment_scores"].float_list.value.extend(seg.scores.tolist())


def encode_record(video: Yt8mVideo) -> bytes:
    """:class:`Yt8mVideo` -> serialized ``SequenceExample`` (frame) or ``Example`` (video).

    Every stream in ``video.features`` is written (a store with ``rgb`` only gives records
    with ``rgb`` only, which YouTube-8M's readers accept with ``--feature_names=rgb``).
    """
    if video.level == "frame":
        message = protos.SequenceExample()
        _fill_context(message.context, video)
        for name, codes in video.features.items():
            frames = message.feature_lists.feature_list[name].feature
            for row in np.ascontiguousarray(codes, dtype=np.uint8):
                frames.add().bytes_list.value.append(row.tobytes())
    elif video.level == "video":
        message = protos.Example()
        _fill_context(message.features, video)
        for name, mean in video.features.items():
            values = np.asarray(mean, dtype=np.float32)
            message.features.feature[f"mean_{name}"].float_list.value.extend(values.tolist())
    else:
        raise BadExampleError(f"level must be one of {LEVELS}, got {video.level!r}")
    return message.SerializeToString(deterministic=True)
