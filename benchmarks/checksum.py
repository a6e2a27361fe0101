"""What checking every chunk's CRC32C costs the training read path, measured side by side.

On ``benchmarks.train``'s stores (2000 videos of 30-300 frames; uint8-1024 and float32-2048,
built there if missing), every frame chunk of the store is read the way training reads it with
an empty cache (file read, CRC32C check, zstd decode), and, in the same run, the CRC32C alone is
timed over the same bytes already in memory. Their ratio is the share of the read path that
the checksum costs; the per-video figure uses the chunks a video touches on average.

    python -m benchmarks.checksum            # writes benchmarks/results/checksum.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import google_crc32c
import numpy as np

from benchmarks.common import write_result
from benchmarks.train import STORES, build_store


def measure(path: Path, rounds: int) -> dict:
    from vidfeat.store import open_store

    with open_store(path, cache_mb=0) as reader:
        part = reader._parts[0]
        array = "streams/rgb/features"
        fast = part._fast_reader(array)
        if fast is None:
            raise SystemExit(f"{path}: not read through the direct chunk path")
        n_chunks = len(part.chunk_ranges(array))
        files = [
            fast.directory / fast.arr.metadata.encode_chunk_key((i, 0)) for i in range(n_chunks)
        ]
        bodies = [f.read_bytes()[:-4] for f in files]
        read_s = crc_s = float("inf")
        for _ in range(rounds):  # the two alternate; each keeps its fastest round
            t0 = time.perf_counter()
            for i in range(n_chunks):
                fast.chunk(i)
            read_s = min(read_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for body in bodies:
                google_crc32c.value(body)
            crc_s = min(crc_s, time.perf_counter() - t0)
        lengths = reader.videos["n_frames"].to_numpy()
        rows = fast.rows_per_chunk
        # Chunks a video of n frames starting at a random row touches, on average.
        chunks_per_video = float(np.mean(1 + (lengths - 1 + (rows - 1) / 2) / rows))
    chunk_mib = sum(len(b) for b in bodies) / n_chunks / 2**20
    return {
        "store": path.name,
        "chunks": n_chunks,
        "rows_per_chunk": rows,
        "stored_mib_per_chunk": chunk_mib,
        "read_ms_per_chunk": read_s / n_chunks * 1e3,
        "crc32c_ms_per_chunk": crc_s / n_chunks * 1e3,
        "crc32c_share_of_read": crc_s / read_s,
        "crc32c_gb_per_s": sum(len(b) for b in bodies) / crc_s / 1e9,
        "chunks_per_video": chunks_per_video,
        "crc32c_ms_per_video": crc_s / n_chunks * chunks_per_video * 1e3,
        "read_ms_per_video": read_s / n_chunks * chunks_per_video * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vidfeat-bench")
    args = parser.parse_args()
    rows = []
    for name, (dim, dtype) in STORES.items():
        path = build_store(args.work / f"train-{name}-{args.videos}.zarr", args.videos, dim, dtype)
        rows.append({"store_name": name, **measure(path, args.rounds)})
    config = {"videos": args.videos, "rounds": args.rounds, "load_average": os.getloadavg()}
    print(write_result("checksum", {"config": config, "results": rows}))
    print(
        "| store | MiB/chunk | read ms/chunk | CRC32C ms/chunk | CRC32C share | ms/video read "
        "| of which CRC32C |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['store_name']} | {r['stored_mib_per_chunk']:.2f} | {r['read_ms_per_chunk']:.3f} "
            f"| {r['crc32c_ms_per_chunk']:.3f} | {r['crc32c_share_of_read']:.1%} "
            f"| {r['read_ms_per_video']:.2f} | {r['crc32c_ms_per_video']:.3f} |"
        )


if __name__ == "__main__":
    main()
