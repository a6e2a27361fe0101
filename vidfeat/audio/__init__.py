"""The audio stream: VGGish's log-mel front end and audio decoding aligned to video frames.

``log_mel_examples(waveform, sample_rate)`` is VGGish's ``waveform_to_examples`` contract;
``decode_audio_examples(path, timestamps_s)`` cuts one example per video frame timestamp from
a file's audio track; ``vidfeat.audio.postprocess`` holds VGGish's PCA and 8-bit quantization.
Importing this package imports numpy and PyAV, never torch.
"""

from vidfeat.audio.decode import AudioExamples, decode_audio_examples, video_origin_s
from vidfeat.audio.mel import VGGISH_LOG_MEL, LogMelParams, log_mel_examples, mel_matrix
from vidfeat.audio.postprocess import NO_AUDIO_PCA_VALUE, VGGishPCA, load_vggish_pca

__all__ = [
    "NO_AUDIO_PCA_VALUE",
    "VGGISH_LOG_MEL",
    "AudioExamples",
    "LogMelParams",
    "VGGishPCA",
    "decode_audio_examples",
    "load_vggish_pca",
    "log_mel_examples",
    "mel_matrix",
    "video_origin_s",
]
