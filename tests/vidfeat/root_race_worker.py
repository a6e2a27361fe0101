"""Subprocess body for the store-creation race test: one shard job of ``--fps FPS``.

Usage: python -m tests.vidfeat.root_race_worker DIR SUFFIX FPS START COUNT
For k in 0..COUNT-1, at wall-clock START + k * 0.2 s, opens the new store DIR/r<k><SUFFIX> for
writing with ``fps=FPS`` (creating it if absent) and writes the video ``vid-fps<FPS>``; prints
``ok`` or ``refused`` (settings differ from the store's) per store.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    folder, suffix, fps, start, count = argv[0], argv[1], argv[2], float(argv[3]), int(argv[4])
    from vidfeat import create_store
    from vidfeat.errors import StoreMismatchError

    for k in range(count):
        time.sleep(max(0.0, start + k * 0.2 - time.time()))
        try:
            store = create_store(
                f"{folder}/r{k}{suffix}", dim=4, attrs={"fps": fps}, part=f"fps{fps}"
            )
            with store as w:
                w.write(f"vid-fps{fps}", np.ones((2, 4), np.float32))
            print("ok", flush=True)
        except StoreMismatchError:
            print("refused", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
