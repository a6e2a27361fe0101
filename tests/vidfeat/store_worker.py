"""Subprocess body for store tests that kill writers or run them concurrently.

Usage: python -m tests.vidfeat.store_worker STORE FORMAT PART FIRST COUNT [--fsize-limit BYTES]
Writes videos FIRST..FIRST+COUNT-1 with deterministic features (see ``expected_features``),
skipping ids already committed, one commit per video.
"""

from __future__ import annotations

import resource
import signal
import sys

import numpy as np

DIM = 64


def expected_features(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    n_frames = 5 + index % 17
    return rng.standard_normal((n_frames, DIM)).astype(np.float32)


def video_id(index: int) -> str:
    return f"vid{index:05d}"


def main(argv: list[str]) -> int:
    store, fmt, part, first, count = argv[:5]
    if "--fsize-limit" in argv:
        limit = int(argv[argv.index("--fsize-limit") + 1])
        # A file-size limit behaves like a full disk: writes fail with EFBIG instead of a signal.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from vidfeat import create_store

    with create_store(
        store, dim=DIM, format=fmt, attrs={"test": True}, part=part, commit_every=1
    ) as w:
        done = w.committed_ids()
        for i in range(int(first), int(first) + int(count)):
            if video_id(i) in done:
                continue
            feats = expected_features(i)
            w.write(video_id(i), feats, labels=[f"c{i % 3}"], timestamps=np.arange(len(feats)))
            print(f"wrote {video_id(i)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
