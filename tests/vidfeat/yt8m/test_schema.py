"""Records parsed by vidfeat equal TensorFlow's parse, and YouTube-8M's dequantization formula."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.vidfeat.yt8m.helpers import (
    ALL_FILES,
    FRAME,
    SEGMENT,
    VIDEO,
    expected,
    expected_arrays,
    key,
)
from vidfeat.errors import BadExampleError
from vidfeat.pca.quantize import dequantize
from vidfeat.yt8m import protos
from vidfeat.yt8m.schema import Segments, Yt8mVideo, encode_record, parse_record
from vidfeat.yt8m.tfrecord import read_records


def _videos(path):
    return [parse_record(r) for r in read_records(io.BytesIO(path.read_bytes()))]


@pytest.mark.parametrize("path", ALL_FILES, ids=key)
def test_ids_labels_and_levels_match_tensorflow(path):
    got = _videos(path)
    want = expected()[key(path)]
    assert [v.video_id for v in got] == [w["id"] for w in want]
    assert [list(v.labels) for v in got] == [w["labels"] for w in want]
    assert [v.level for v in got] == [w["level"] for w in want]
    for v, w in zip(got, want, strict=True):
        if w["level"] == "frame":
            assert v.n_frames == w["n_frames"]


@pytest.mark.parametrize("path", [FRAME, SEGMENT], ids=key)
def test_frame_bytes_and_dequantized_values_match_tensorflow(path):
    arrays = expected_arrays()
    for video in _videos(path):
        for stream, codes in video.features.items():
            name = f"{key(path)}/{video.video_id}/{stream}"
            assert codes.dtype == np.uint8
            np.testing.assert_array_equal(codes, arrays[name])
            # TensorFlow's float32 ops on YouTube-8M's formula, bit for bit.
            np.testing.assert_array_equal(dequantize(codes), arrays[name + "_dequantized"])


def test_every_code_is_checked_against_the_formula():
    first = _videos(FRAME)[0].features["rgb"]
    assert set(np.unique(first)) == set(range(256))
    span = 4.0
    formula = first.astype(np.float32) * np.float32(span / 255.0) + np.float32(span / 512.0 - 2)
    np.testing.assert_array_equal(dequantize(first), formula)
    # The ends of the range carry YouTube-8M's half-bin bias: code 0 is -2 + 4/512, not -2.
    ends = dequantize(np.array([0, 255], np.uint8))
    assert ends[0] == np.float32(-2 + 4 / 512)
    assert ends[1] == np.float32(255) * np.float32(4 / 255) + np.float32(4 / 512 - 2)


def test_video_level_means_match_tensorflow():
    arrays = expected_arrays()
    for video in _videos(VIDEO):
        assert video.level == "video" and video.n_frames == 0
        for stream, values in video.features.items():
            assert values.dtype == np.float32
            np.testing.assert_array_equal(
                values, arrays[f"{key(VIDEO)}/{video.video_id}/mean_{stream}"]
            )


def test_segment_ratings_match_tensorflow():
    for video, want in zip(_videos(SEGMENT), expected()[key(SEGMENT)], strict=True):
        seg = want["segments"]
        assert video.segments.labels.tolist() == seg["labels"]
        assert video.segments.start_times.tolist() == seg["start_times"]
        assert video.segments.scores.tolist() == seg["scores"]
    assert all(v.segments is None for v in _videos(FRAME))


@pytest.mark.parametrize("path", ALL_FILES, ids=key)
def test_encode_then_parse_gives_the_same_video(path):
    for video in _videos(path):
        again = parse_record(encode_record(video))
        assert (again.video_id, again.labels, again.level) == (
            video.video_id,
            video.labels,
            video.level,
        )
        for stream in video.features:
            assert again.features[stream].tobytes() == video.features[stream].tobytes()
        assert (again.segments is None) == (video.segments is None)


def _frame_video(**changes):
    codes = {"rgb": np.zeros((2, 1024), np.uint8), "audio": np.zeros((2, 128), np.uint8)}
    base = {"video_id": "v1", "labels": (1,), "level": "frame", "features": codes}
    return Yt8mVideo(**{**base, **changes})


def _only_unknown_lists(message):
    for name in ("rgb", "audio"):
        message.feature_lists.feature_list.pop(name)
    message.feature_lists.feature_list["flow"].feature.add().bytes_list.value.append(b"x")


def _with_context(mutate):
    message = protos.SequenceExample.FromString(encode_record(_frame_video()))
    mutate(message)
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xff\xff\xff", "not a tf.train"),
        (_with_context(lambda m: m.context.feature.pop("id")), "'id'"),
        (
            _with_context(lambda m: m.feature_lists.feature_list["rgb"].feature.add()),
            "rgb frame 2",
        ),
        (_with_context(_only_unknown_lists), "no feature list"),
        (
            _with_context(
                lambda m: (
                    m.feature_lists.feature_list["audio"]
                    .feature.add()
                    .bytes_list.value.append(bytes(128))
                )
            ),
            "frame counts",
        ),
        (
            _with_context(
                lambda m: m.context.feature["id"].bytes_list.value.__setitem__(0, b"\xff")
            ),
            "UTF-8",
        ),
        (protos.Example().SerializeToString(), "'id'"),
    ],
    # Named, not shown: protobuf serializes map entries in no fixed order, and test ids must
    # be the same in every process (pytest-xdist's workers compare what they collected).
    ids=[
        "not-protobuf",
        "no-id",
        "extra-rgb-frame",
        "unknown-lists",
        "frame-counts",
        "utf8",
        "example",
    ],
)
def test_malformed_records_are_typed_failures(data, words):
    with pytest.raises(BadExampleError, match=words) as info:
        parse_record(data)
    assert info.value.status == "bad_example"


def test_video_level_needs_both_means_of_the_right_size():
    message = protos.Example()
    message.features.feature["id"].bytes_list.value.append(b"v")
    message.features.feature["mean_rgb"].float_list.value.extend([0.0] * 1024)
    message.features.feature["mean_audio"].float_list.value.extend([0.0] * 127)
    with pytest.raises(BadExampleError, match="mean_audio has 127"):
        parse_record(message.SerializeToString())


def _set_list(message, key: str, kind: str, values) -> None:
    feature = message.context.feature[key]
    feature.Clear()
    getattr(feature, kind).value.extend(values)


@pytest.mark.parametrize(
    ("key", "kind", "values", "words"),
    [
        # Labels written as strings or floats by another converter read as no labels at all.
        ("labels", "bytes_list", [b"1"], "v1: 'labels' is of kind bytes_list, expected int64"),
        ("labels", "float_list", [1.0], "v1: 'labels' is of kind float_list, expected int64"),
        ("segment_labels", "bytes_list", [b"3"], "v1: 'segment_labels' is of kind bytes"),
        ("segment_scores", "int64_list", [1], "v1: 'segment_scores' is of kind int64_list"),
    ],
    ids=["labels-bytes", "labels-float", "segment-labels-bytes", "segment-scores-int"],
)
def test_lists_of_the_wrong_kind_are_typed_failures(key, kind, values, words):
    data = _with_context(lambda m: _set_list(m, key, kind, values))
    with pytest.raises(BadExampleError, match=words) as info:
        parse_record(data)
    assert info.value.status == "bad_example"
    # An empty list of the right kind is no labels, as YouTube-8M's test files have.
    empty = parse_record(_with_context(lambda m: _set_list(m, "labels", "int64_list", [])))
    assert empty.labels == ()


def test_segment_arrays_must_line_up():
    with pytest.raises(BadExampleError):
        Segments(np.array([1, 2]), np.array([0]), np.array([1.0], np.float32))


def test_records_with_one_stream_are_read():
    message = protos.SequenceExample.FromString(encode_record(_frame_video()))
    message.feature_lists.feature_list.pop("audio")
    video = parse_record(message.SerializeToString())
    assert list(video.features) == ["rgb"] and video.n_frames == 2
    means = Yt8mVideo("v", (), "video", {"rgb": np.ones(1024, np.float32)})
    assert list(parse_record(encode_record(means)).features) == ["rgb"]
