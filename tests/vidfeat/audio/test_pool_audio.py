"""Audio examples cut in the decode worker, beside the video frames, under the same time limit."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from tests.vidfeat.audio.media_audio import write_media
from vidfeat.audio import VGGISH_LOG_MEL, decode_audio_examples
from vidfeat.decode.pool import DecodePool, FramesChunk, VideoDone, VideoFailed


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool_audio")
    write_media(
        d / "sound.mp4",
        audio_codec="aac",
        rate=44100,
        channels=2,
        audio_seconds=2.5,
        audio_start_s=0.5,
        video_seconds=4.0,
    )
    write_media(d / "silent.mp4", audio_codec=None, video_seconds=3.0)
    write_media(
        d / "broken_audio.mp4",
        audio_codec="libmp3lame",
        rate=44100,
        audio_seconds=6.0,
        video_seconds=6.0,
        garbage_audio_s=(2.0, 4.0),  # the video track stays intact
    )
    return d


def _run(paths, audio=VGGISH_LOG_MEL):
    events = defaultdict(list)
    with DecodePool(1, decoder="pyav", fps=1, max_frames=10, audio=audio, timeout_s=60) as pool:
        for job_id, path in paths.items():
            pool.submit(job_id, path)
        for event in pool.events():
            events[event.job_id].append(event)
    return events


def test_one_audio_example_per_frame_with_the_frame_timestamps(media):
    events = _run({"sound": media / "sound.mp4", "silent": media / "silent.mp4"})
    for job_id, n_frames, has_audio in (("sound", 4, True), ("silent", 3, False)):
        *chunks, done = events[job_id]
        assert isinstance(done, VideoDone) and all(isinstance(c, FramesChunk) for c in chunks)
        times = np.concatenate([c.timestamps_s for c in chunks])
        assert done.info["n_frames"] == len(times) == n_frames
        assert done.info["has_audio"] is has_audio
        assert done.audio_examples.shape == (n_frames, 96, 64)
        expected = decode_audio_examples(media / f"{job_id}.mp4", times).examples
        np.testing.assert_array_equal(done.audio_examples, expected)


def test_without_audio_settings_nothing_changes(media):
    (*_, done) = _run({"sound": media / "sound.mp4"}, audio=None)["sound"]
    assert done.audio_examples is None and "has_audio" not in done.info


def test_a_corrupt_audio_track_fails_the_video_like_corrupt_video(media):
    (*_, last) = _run({"broken": media / "broken_audio.mp4"})["broken"]
    assert isinstance(last, VideoFailed)
    assert last.status == "decode_error" and "audio" in last.reason
