"""Audio examples decoded from real encoded files, aligned to video frame timestamps."""

from __future__ import annotations

import numpy as np
import pytest

from tests.vidfeat.audio.media_audio import tone_hz, write_media
from vidfeat.audio import VGGISH_LOG_MEL, decode_audio_examples, log_mel_examples, mel_matrix
from vidfeat.audio.mel import windows_to_examples
from vidfeat.audio.window import WindowCutter
from vidfeat.errors import DecodeError

SILENCE = np.float32(np.log(0.01))
L = VGGISH_LOG_MEL.example_samples


def _peak_band(example: np.ndarray) -> int:
    return int(example[10:80].mean(axis=0).argmax())  # frames well inside one second


def _band_of_tone(freq_hz: float) -> int:
    return int(mel_matrix()[round(freq_hz / 8000 * 256)].argmax())


# (file, audio codec, sample rate, channels, with video)
CONTAINERS = [
    ("aac.mp4", "aac", 44100, 2, True),
    ("aac_mono.mp4", "aac", 48000, 1, True),
    ("opus.webm", "libopus", 48000, 2, True),
    ("vorbis.mkv", "vorbis", 44100, 2, True),
    ("mp3.mp3", "libmp3lame", 8000, 1, False),
    ("mp3_44k.mp3", "libmp3lame", 44100, 2, False),
    ("pcm.wav", "pcm_s16le", 8000, 2, False),
    ("pcm_48k.wav", "pcm_s16le", 48000, 1, False),
]


@pytest.mark.parametrize(("name", "codec", "rate", "channels", "video"), CONTAINERS)
def test_real_codecs_give_the_tone_of_each_second(tmp_path, name, codec, rate, channels, video):
    path = tmp_path / name
    write_media(
        path,
        audio_codec=codec,
        rate=rate,
        channels=channels,
        video_seconds=4.0 if video else None,
        audio_seconds=4.0,
    )
    result = decode_audio_examples(path, [0.0, 1.0, 2.0, 3.0])
    assert result.has_audio and result.source_rate == rate and result.source_channels == channels
    assert result.examples.shape == (4, 96, 64) and result.examples.dtype == np.float32
    peaks = [_peak_band(e) for e in result.examples]
    assert peaks == [_band_of_tone(tone_hz(k)) for k in range(4)]


def test_pcm_examples_equal_the_front_end_on_the_source_exactly(tmp_path):
    path = tmp_path / "pcm16k.mkv"
    signal = write_media(path, audio_codec="pcm_s16le", rate=16000, video_seconds=3.0)
    source = np.round(signal[:, 0] * 32767) / 32768.0  # what the s16 file holds, as floats
    times = np.array([0.0, 0.1, 0.5, 1.0, 2.0])
    result = decode_audio_examples(path, times)
    padded = np.concatenate([source, np.zeros(L)])
    expected = windows_to_examples(np.stack([padded[int(t * 16000) :][:L] for t in times]))
    np.testing.assert_allclose(result.examples, expected, atol=1e-4, rtol=0)
    # Hops of 0.96 s reproduce log_mel_examples on the whole waveform.
    hops = decode_audio_examples(path, [0.0, 0.96]).examples
    np.testing.assert_allclose(hops, log_mel_examples(source, 16000)[:2], atol=1e-4, rtol=0)


def test_audio_starting_late_and_ending_early_is_padded_with_silence(tmp_path):
    path = tmp_path / "late.mkv"
    signal = write_media(
        path,
        audio_codec="pcm_s16le",
        rate=16000,
        audio_seconds=2.0,
        audio_start_s=1.5,
        video_seconds=5.0,
    )
    source = np.round(signal[:, 0] * 32767) / 32768.0
    times = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    result = decode_audio_examples(path, times)
    assert result.start_s == pytest.approx(1.5) and result.end_s == pytest.approx(3.5)
    # The audio on the video's clock: silence, 2 s of tones from 1.5 s, silence.
    timeline = np.concatenate([np.zeros(24000), source, np.zeros(3 * 16000)])
    expected = windows_to_examples(np.stack([timeline[int(t * 16000) :][:L] for t in times]))
    np.testing.assert_allclose(result.examples, expected, atol=1e-4, rtol=0)
    assert np.all(result.examples[0] == SILENCE) and np.all(result.examples[4] == SILENCE)
    assert not np.all(result.examples[2] == SILENCE)


def test_lossy_late_audio_lines_up_by_pts(tmp_path):
    path = tmp_path / "late.mp4"
    write_media(
        path, audio_codec="aac", rate=44100, audio_seconds=3.0, audio_start_s=2.0, video_seconds=6.0
    )
    result = decode_audio_examples(path, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert result.start_s == pytest.approx(2.0, abs=0.03)
    assert np.all(result.examples[:1] == SILENCE)
    assert [_peak_band(e) for e in result.examples[2:5]] == [
        _band_of_tone(tone_hz(k)) for k in range(3)
    ]
    assert np.all(result.examples[5][5:] == SILENCE)  # AAC pads its last frame (< 50 ms)


@pytest.mark.parametrize("suffix", [".mkv", ".ts"])
def test_late_or_empty_tracks_beyond_the_probe_are_silence_not_damage(tmp_path, suffix):
    # A track whose first packet comes after FFmpeg's ~5 s probe gets an estimated duration
    # (the file's, or one guessed from the bitrate) that it never reaches: that was taken as
    # "declared", and a video with late audio, or an audio track without a packet, failed.
    late = tmp_path / f"late{suffix}"
    write_media(late, audio_codec="aac", rate=44100, audio_seconds=1.0, audio_start_s=6.0,
                video_seconds=8.0)  # fmt: skip
    result = decode_audio_examples(late, np.arange(8.0))
    assert result.has_audio and np.all(result.examples[:5] == SILENCE)
    assert _peak_band(result.examples[6]) == _band_of_tone(tone_hz(0))
    empty = tmp_path / f"empty{suffix}"
    write_media(empty, audio_codec="aac", rate=44100, audio_seconds=0.0, video_seconds=4.0)
    assert np.all(decode_audio_examples(empty, np.arange(4.0)).examples == SILENCE)


def test_a_last_audio_packet_cut_short_ends_the_audio(tmp_path):
    # An interrupted recording ends mid-packet; the demuxer does not flag the piece, and the
    # decoder's error on it failed the whole video as "corrupt audio data".
    full = tmp_path / "full.ts"
    write_media(
        full, audio_codec="aac", rate=48000, channels=2, audio_seconds=4.0, video_seconds=4.0
    )
    data = full.read_bytes()
    cut = tmp_path / "cut.ts"
    for fraction in np.linspace(0.3, 0.55, 16):  # several end inside an audio packet
        cut.write_bytes(data[: int(len(data) * fraction)])
        result = decode_audio_examples(cut, [0.0, 1.0])
        assert result.has_audio and not np.all(result.examples[0] == SILENCE), fraction


def test_no_audio_track_is_flagged_not_failed(tmp_path):
    path = tmp_path / "silent_film.mp4"
    write_media(path, audio_codec=None, video_seconds=2.0)
    result = decode_audio_examples(path, [0.0, 1.0])
    assert not result.has_audio and result.codec is None
    assert result.examples.shape == (2, 96, 64)
    assert np.all(result.examples == SILENCE)


def test_truncated_audio_track_is_a_decode_error(tmp_path):
    full = tmp_path / "full.m4a"
    write_media(full, audio_codec="aac", rate=44100, audio_seconds=8.0, faststart=True)
    cut = tmp_path / "cut.m4a"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 3])  # the index still declares 8 s
    with pytest.raises(DecodeError) as info:
        decode_audio_examples(cut, np.arange(8.0))
    assert info.value.status == "truncated"
    # Timestamps that the surviving audio covers need no more, so nothing is missing.
    assert decode_audio_examples(cut, [0.0, 1.0]).has_audio


@pytest.mark.parametrize(
    ("name", "codec", "rate", "status"),
    [
        ("audio.mp3", "libmp3lame", 44100, "decode_error"),
        ("audio.m4a", "aac", 44100, "decode_error"),
        # The Matroska demuxer resyncs after the damage: the gap is audio missing mid-stream.
        ("audio.webm", "libopus", 48000, "decode_error"),
    ],
)
def test_corrupt_audio_data_is_a_decode_error(tmp_path, name, codec, rate, status):
    path = tmp_path / name
    write_media(path, audio_codec=codec, rate=rate, audio_seconds=6.0)
    data = bytearray(path.read_bytes())
    a, b = len(data) // 4, 3 * len(data) // 4
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(DecodeError) as info:
        decode_audio_examples(path, np.arange(6.0))
    assert info.value.status == status


def test_memory_stays_bounded_on_long_audio(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    write_media(path, audio_codec="pcm_s16le", rate=16000, audio_seconds=60.0)
    sizes = []
    push = WindowCutter.push

    def recording_push(self, samples, position=None):
        push(self, samples, position)
        sizes.append(self.buffered_samples)

    monkeypatch.setattr(WindowCutter, "push", recording_push)
    result = decode_audio_examples(path, np.arange(60.0))
    assert result.examples.shape == (60, 96, 64) and len(sizes) > 100
    assert max(sizes) < 2 * 16000 + 8192  # about one window and one chunk, not 60 s


def test_missing_file_is_a_decode_failure(tmp_path):
    with pytest.raises(DecodeError) as info:
        decode_audio_examples(tmp_path / "nope.mp4", [0.0])
    assert info.value.status == "missing"
