"""The signal behind ``vggish_reference_examples.npy``, and how that fixture was made.

The fixture holds the (2, 96, 64) examples that Google's VGGish reference front end
(``mel_features.log_mel_spectrogram`` + ``mel_features.frame`` with ``vggish_params``) computed
from ``write_reference_wav``'s file, read as int16 / 32768 and averaged to mono, as its
``wavfile_to_examples`` does. The reference code is not part of this project; to regenerate,
run it on the WAV this module writes (``python -m tests.vidfeat.audio.reference_signal OUT.wav``).
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
SECONDS = 2.2  # two whole 0.96 s examples and a partial one the front end must drop
FIXTURE = Path(__file__).with_name("vggish_reference_examples.npy")


def reference_signal() -> np.ndarray:
    """(n, 2) int16 stereo: a chirp, two tones, noise and a silent gap; seeded, deterministic."""
    n = int(SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 800 * t**2))  # 200 Hz rising to ~3.7 kHz
    tones = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 5000 * t)
    noise = 0.05 * np.random.default_rng(20170307).standard_normal((n, 2))
    left = chirp + noise[:, 0]
    right = tones + noise[:, 1]
    right[int(1.2 * SAMPLE_RATE) : int(1.5 * SAMPLE_RATE)] = 0.0  # a stretch of silence
    stereo = np.stack([left, right], axis=1)
    return np.clip(np.round(stereo * 32767), -32768, 32767).astype(np.int16)


def write_reference_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(reference_signal().astype("<i2").tobytes())
    return Path(path)


if __name__ == "__main__":
    write_reference_wav(Path(sys.argv[1]))
