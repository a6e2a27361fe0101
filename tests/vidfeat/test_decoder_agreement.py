"""Both decoders give the same frames on the inputs where they used to disagree: rotated
(display matrix), 10-bit and 4:4:4 sources; animated images are refused by name by both."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from tests.media import read_frame_index
from vidfeat.decode import open_video
from vidfeat.errors import DecodeError
from vidfeat.sampling import select_indices

DECODER_NAMES = ["pyav", "decord"]
CLIP = dict(seconds=2, fps=10, pattern="colour")

# name -> (settings, largest pixel difference allowed between the two decoders)
CASES = {
    "rotated_90.mp4": (dict(rotation=90), 0),
    "rotated_270.mp4": (dict(rotation=-90), 0),
    "rotated_180.mp4": (dict(rotation=180), 0),
    # 72 pixels wide once turned: decord pads those rows and mis-sizes the frame.
    "rotated_90_wide.mp4": (dict(rotation=90, size=(128, 72)), 0),
    "rotated_90_odd.mp4": (dict(rotation=90, size=(160, 90)), 0),
    "h264_444.mp4": (dict(pix_fmt="yuv444p"), 0),
    "hevc_444_10bit.mkv": (dict(codec="libx265", pix_fmt="yuv444p10le"), 0),
    # 10-bit 4:2:0: the two FFmpeg builds upsample chroma differently at sharp colour edges,
    # so the store records its decoder (see vidfeat.pipeline.store_attrs).
    "h264_10bit.mp4": (dict(pix_fmt="yuv420p10le"), 96),
    "hevc_10bit.mp4": (dict(codec="libx265", pix_fmt="yuv420p10le"), 96),
}


def _sample(path, decoder, fps=5):
    with open_video(path, decoder) as video:
        return list(video.sample(fps, None))


@pytest.mark.parametrize("name", sorted(CASES))
def test_both_decoders_give_the_displayed_frames(make_video, name):
    settings, max_diff = CASES[name]
    path = make_video(name, **CLIP, **settings)
    truth = make_video.info(path)
    expected = select_indices(truth.frame_times_s, truth.duration_s, 5)
    width, height = settings.get("size", (96, 72))
    turns = round(settings.get("rotation", 0) / 90) % 4
    shown = (width, height) if turns % 2 else (height, width)

    by_decoder = {d: _sample(path, d) for d in DECODER_NAMES}
    for frames in by_decoder.values():
        assert all(f.frame.shape == (*shown, 3) and f.frame.dtype == np.uint8 for f in frames)
        # Turning the picture back must give the coded frame: the matrix was applied once,
        # in the player's direction.
        assert [read_frame_index(np.rot90(f.frame, -turns)) for f in frames] == expected
    pyav, decord = by_decoder["pyav"], by_decoder["decord"]
    assert [f.timestamp_s for f in pyav] == [f.timestamp_s for f in decord]
    diffs = [
        np.abs(a.frame.astype(int) - b.frame.astype(int)) for a, b in zip(pyav, decord, strict=True)
    ]
    assert max(d.max() for d in diffs) <= max_diff
    assert np.mean([d.mean() for d in diffs]) < 1.0


@pytest.mark.parametrize("decoder", DECODER_NAMES)
@pytest.mark.parametrize("name", ["anim.gif", "anim.apng"])
def test_animated_images_are_refused_by_name(make_video, decoder, name):
    path = make_video(name, seconds=1, fps=10)
    with pytest.raises(DecodeError) as info:
        _sample(path, decoder)
    assert info.value.status == "not_video"
    assert "animated image format" in info.value.reason


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_directories_and_fifos_are_refused_by_name(tmp_path, decoder):
    import os

    (tmp_path / "folder.mp4").mkdir()
    os.mkfifo(tmp_path / "pipe.mp4")  # opening it would block forever
    for name, kind in (("folder.mp4", "a directory"), ("pipe.mp4", "a FIFO")):
        with pytest.raises(DecodeError) as info:
            open_video(tmp_path / name, decoder)
        assert info.value.status == "not_video"
        assert kind in info.value.reason


def _blocks(i: int) -> np.ndarray:
    """128x96 grey frame showing the 8 bits of ``i`` as black/white blocks, red bottom-left."""
    img = np.full((96, 128, 3), 128, np.uint8)
    for b in range(8):
        img[:48, b * 16 : (b + 1) * 16] = 255 if (i >> (7 - b)) & 1 else 0
    img[72:, :32] = (255, 0, 0)
    return img


def test_a_last_frame_never_reaches_past_the_stream_end(tmp_path):
    # VFR H.264 with B-frames: the last frame shown may carry the gap to the next decode time
    # (here 0.4 s) as its duration, past the stream's declared end. Both decoders must end the
    # video where the stream says, and so pick the same frames.
    path = tmp_path / "vfr_bframes.mp4"
    gaps = np.random.default_rng(0).choice([10, 33, 50, 200, 400], size=60)
    pts = np.concatenate([[0], np.cumsum(gaps)[:-1]])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)  # x264's default: B-frames
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(_blocks(i), format="rgb24")
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        last = max((p for p in container.demux(video) if p.size), key=lambda p: p.pts)
        end = float(video.duration * video.time_base)
        if float((last.pts + last.duration) * video.time_base) <= end:
            pytest.skip("this x264 ordered the frames otherwise: no frame reaches past the end")
    picks = {}
    for decoder in DECODER_NAMES:
        with open_video(path, decoder) as video:
            frames = list(video.sample(1, None))
            picks[decoder] = [(f.timestamp_s, read_frame_index(f.frame)) for f in frames]
            assert video.decoded_duration_s <= end + 1e-3
    assert picks["pyav"] == picks["decord"]


def test_decord_never_picks_by_missing_timestamps(make_video):
    # A three-frame Matroska file: decord times its frames as AV_NOPTS. It must refuse the file
    # (pyav reads it) rather than pick by those, which returned the last frame for t = 0.
    path = make_video("three_frames.mkv", seconds=0.1, fps=30)
    with open_video(path, "pyav") as video:
        assert [read_frame_index(f.frame) for f in video.sample(1, None)] == [0]
    try:
        with open_video(path, "decord") as video:
            picked = [read_frame_index(f.frame) for f in video.sample(1, None)]
    except DecodeError as e:
        assert e.status == "decode_error" and "--decoder pyav" in e.reason
    else:
        assert picked == [0]


@pytest.mark.parametrize("decoder", DECODER_NAMES)
@pytest.mark.parametrize("name", ["native_rate.mkv", "native_rate.webm"])
def test_matroska_at_its_own_rate_gives_every_frame_once(make_video, decoder, name):
    # Matroska stores times in whole milliseconds (frame 2 of 30 fps at 67 ms, shown at
    # 66.67): compared exactly, every third frame was repeated in place of the next.
    path = make_video(name, seconds=2, fps=30, pattern="index")
    with open_video(path, decoder) as video:
        assert video.info.native_fps == pytest.approx(30, abs=0.01)
        frames = list(video.sample(30, None))
    assert [read_frame_index(f.frame) for f in frames] == list(range(60))


def _assert_decord_refuses_and_pyav_reads(make_video, path, match: str) -> None:
    """decord refuses ``path`` (naming the pyav decoder); pyav picks the frames shown."""
    truth = make_video.info(path)
    with pytest.raises(DecodeError, match=match) as info:
        open_video(path, "decord")
    assert info.value.status == "decode_error" and "--decoder pyav" in str(info.value)
    frames = _sample(path, "pyav")
    expected = select_indices(truth.frame_times_s, truth.duration_s, 5)
    assert [read_frame_index(f.frame) for f in frames] == expected


def test_decord_refuses_what_it_would_misread_and_pyav_reads_it(make_video, tmp_path):
    # MPEG-4 Part 2 with B-frames: decord's random access returned other pictures with the
    # right timestamps. Two video tracks: decord read the second, the store described the first.
    bframes = make_video("xvid_bframes.mp4", seconds=2, fps=25, codec="mpeg4", bframes=2)
    _assert_decord_refuses_and_pyav_reads(make_video, bframes, "MPEG-4 Part 2")

    two = tmp_path / "two_tracks.mp4"
    with av.open(str(two), "w") as container:
        streams = [container.add_stream("libx264", rate=10) for _ in range(2)]
        for stream, size in zip(streams, [(96, 72), (64, 48)], strict=True):
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
        for i in range(10):
            for stream in streams:
                image = np.full((stream.height, stream.width, 3), 20 * i, np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        for stream in streams:
            container.mux(stream.encode())
    with pytest.raises(DecodeError, match="2 video tracks"):
        open_video(two, "decord")
    assert _sample(two, "pyav")[0].frame.shape[:2] == (72, 96)  # the first track


def test_decord_refuses_mpeg_ts_and_pyav_reads_it(make_video):
    # In MPEG-TS decord skipped a whole first GOP (frame 12 returned as frame 0, with frame 0's
    # time) and, for a file cut mid-GOP, shifted its grid: other pictures, no error.
    path = make_video("broadcast.ts", seconds=3, fps=25, bframes=2)
    _assert_decord_refuses_and_pyav_reads(make_video, path, "MPEG-TS")


def test_decord_times_are_exact_far_from_zero(make_video):
    # decord's frame times are float32 seconds: 300000 s into a Matroska stream they were up to
    # 32 ms off, which moved picks and added one; the demuxer's exact times are used instead.
    path = make_video("late.mkv", seconds=3, fps=25, start_s=300000)
    truth = make_video.info(path)
    expected = select_indices(truth.frame_times_s, truth.duration_s, 1)
    for decoder in ("pyav", "decord"):
        frames = _sample(path, decoder, fps=1)
        assert [f.timestamp_s for f in frames] == [0.0, 1.0, 2.0], decoder
        assert [read_frame_index(f.frame) for f in frames] == expected, decoder
