"""The signals behind the ``vggish_reference_examples*.npy`` fixtures, and how those were made.

Each fixture holds the (2, 96, 64) examples that Google's VGGish reference front end
(``vggish_input.wavfile_to_examples``: int16 / 32768, channels averaged, ``resampy.resample``
to 16 kHz with its default ``kaiser_best`` filter, then ``mel_features`` with ``vggish_params``)
computed from the WAV that ``write_reference_wav(path, rate, channels)`` writes, stored as
float32 (which rounds the reference's float64 by less than 2.5e-7):

- ``vggish_reference_examples.npy``: 16 kHz stereo;
- ``vggish_reference_examples_{rate}_{mono|stereo}.npy``: 8, 22.05, 44.1 and 48 kHz.

The reference code is not part of this project. To regenerate, write the WAVs with
``python -m tests.vidfeat.audio.reference_signal OUT_DIR`` and run the reference on each.
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
SECONDS = 2.2  # two whole 0.96 s examples and a partial one the front end must drop
FIXTURE = Path(__file__).with_name("vggish_reference_examples.npy")
# (rate, channels) of the fixtures made at other rates than 16 kHz.
RESAMPLED_CASES = [(r, c) for r in (8000, 22050, 44100, 48000) for c in (1, 2)]


def fixture_path(rate: int = SAMPLE_RATE, channels: int = 2) -> Path:
    if (rate, channels) == (SAMPLE_RATE, 2):
        return FIXTURE
    layout = "mono" if channels == 1 else "stereo"
    return FIXTURE.with_name(f"vggish_reference_examples_{rate}_{layout}.npy")


def reference_signal(rate: int = SAMPLE_RATE, channels: int = 2) -> np.ndarray:
    """(n, channels) int16: a chirp, two tones, white noise and a silent gap; deterministic.

    The white noise reaches the Nyquist frequency of every rate, so the resampler's whole
    transition band shows in the examples. Mono is the two channels' mix.
    """
    n = int(SECONDS * rate)
    t = np.arange(n) / rate
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 800 * t**2))  # 200 Hz rising to ~3.7 kHz
    tones = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 5000 * t)
    noise = 0.05 * np.random.default_rng(20170307).standard_normal((n, 2))
    left = chirp + noise[:, 0]
    right = tones + noise[:, 1]
    right[int(1.2 * rate) : int(1.5 * rate)] = 0.0  # a stretch of silence
    stereo = np.stack([left, right], axis=1)
    signal = stereo if channels == 2 else 0.5 * (left + right)[:, None]
    return np.clip(np.round(signal * 32767), -32768, 32767).astype(np.int16)


def write_reference_wav(path: Path, rate: int = SAMPLE_RATE, channels: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(reference_signal(rate, channels).astype("<i2").tobytes())
    return Path(path)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for rate, channels in [(SAMPLE_RATE, 2), *RESAMPLED_CASES]:
        write_reference_wav(
            out / fixture_path(rate, channels).with_suffix(".wav").name, rate, channels
        )
