"""Both decoders give the same frames on the inputs where they used to disagree: rotated
(display matrix), 10-bit and 4:4:4 sources; animated images are refused by name by both."""

from __future__ import annotations

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


def _sample(path, decoder):
    with open_video(path, decoder) as video:
        return list(video.sample(5, None))


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
