"""Subprocess body for store tests that kill writers or run them concurrently.

Usage: python -m tests.vidfeat.store_worker STORE FORMAT PART FIRST COUNT [--fsize-limit BYTES]
    [--keep-writing]
Writes videos FIRST..FIRST+COUNT-1 into two streams, ``rgb`` (float32) and ``audio`` (uint8),
with deterministic values (see ``expected_features`` and ``expected_audio``), skipping ids already
committed, one commit per video.

``--keep-writing``: when a write fails, lift the file-size limit (as if space had been freed)
and go on writing with the same writer, printing ``refused <id>: <error>`` for each write it
refuses.
"""

from __future__ import annotations

import resource
import signal
import sys

import numpy as np

DIM = 64
AUDIO_DIM = 8
QUANT = {"scheme": "yt8m_uint8", "min": -2.0, "max": 2.0}
STREAMS = {"rgb": DIM, "audio": {"dim": AUDIO_DIM, "dtype": "uint8", "quantization": QUANT}}


def expected_features(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    n_frames = 5 + index % 17
    return rng.standard_normal((n_frames, DIM)).astype(np.float32)


def expected_audio(index: int) -> np.ndarray:
    """(T, AUDIO_DIM) uint8, T equal to the rgb stream's."""
    n_frames = len(expected_features(index))
    return np.random.default_rng(10_000 + index).integers(0, 256, (n_frames, AUDIO_DIM), np.uint8)


def video_id(index: int) -> str:
    return f"vid{index:05d}"


def main(argv: list[str]) -> int:
    store, fmt, part, first, count = argv[:5]
    if "--fsize-limit" in argv:
        limit = int(argv[argv.index("--fsize-limit") + 1])
        # A file-size limit behaves like a full disk: writes fail with EFBIG instead of a signal.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # soft: may be lifted later
    keep_writing = "--keep-writing" in argv
    from vidfeat import create_store
    from vidfeat.errors import StoreError

    with create_store(
        store, streams=STREAMS, format=fmt, attrs={"test": True}, part=part, commit_every=1
    ) as w:
        done = w.committed_ids()
        for i in range(int(first), int(first) + int(count)):
            if video_id(i) in done:
                continue
            feats = expected_features(i)
            values = {"rgb": feats, "audio": expected_audio(i)}
            try:
                w.write(video_id(i), values, labels=[f"c{i % 3}"], timestamps=np.arange(len(feats)))
            except StoreError as exc:
                if not keep_writing:
                    raise
                limits = resource.getrlimit(resource.RLIMIT_FSIZE)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limits[1], limits[1]))
                print(f"refused {video_id(i)}: {exc}", flush=True)
                continue
            print(f"wrote {video_id(i)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
