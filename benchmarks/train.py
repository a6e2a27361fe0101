"""Stage-2 training throughput: the real data path vs the same tensors preloaded in RAM.

For each store (2000 videos of 30-300 frames: 1024-d uint8, and 2048-d float32) and head, one
training step (forward, backward, Adam) is timed over the same batches, fed by:

- ``ram``: the batches' tensors already in memory, only padding-collate per batch (the limit);
- ``store wN``: the real path, store -> FeatureDataset -> DataLoader(num_workers=N) -> step;

with length-bucketed batches (padded to the batch's longest video) or unbucketed batches padded
to max_frames ("pad-max"). Each case's process sets malloc up as the ``heads`` command does
(``vidfeat.allocator``; ``VIDFEAT_MALLOC=system`` keeps glibc's defaults). The two feeds
alternate for ``--rounds`` rounds in one process and each keeps its fastest round, so load from
other processes on the machine hits both alike. The store feed's first pass is reported apart:
it decodes every chunk from its file, while later passes find them in the reader's decoded-
chunk cache when they fit (``--cache-mb``, 256 MiB by default). Each case runs in a fresh
process: its peak RSS (``ru_maxrss``, which includes the preloaded RAM batches) is its own, and
DataLoader workers are reported by their proportional set size (PSS: shared pages split between
processes).

    python -m benchmarks.train                    # writes benchmarks/results/train.json
    python -m benchmarks.train --videos 300 --batches 4     # a quick look
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

STORES = {  # name: (dim, dtype)
    "u8-1024": (1024, "uint8"),
    "f32-2048": (2048, "float32"),
}
# (model, DataLoader workers, bucketed). lstm stands for the recurrent heads (the model step
# dominates); bof and logistic are the cheapest steps of all heads, so reading bounds them most.
CASES = [
    ("lstm", 0, True),
    ("lstm", 2, True),
    ("lstm", 2, False),
    ("bof", 0, True),
    ("bof", 2, True),
    ("logistic", 0, True),
]
# The cheap heads again with a chunk cache both stores fit in (--cache-mb 4096): after the first
# pass they read from memory, as training on a store that fits in RAM does.
LARGE_CACHE_MB = 4096
LARGE_CACHE_CASES = [("bof", 0, True), ("logistic", 0, True)]


def build_store(path: Path, n_videos: int, dim: int, dtype: str, seed: int = 0) -> Path:
    """Random features, lengths uniform in 30..300 frames, 10 classes (reused if present)."""
    from heads.synthetic import write_store
    from vidfeat.store import open_store

    if path.exists():
        with open_store(path) as reader:
            if len(reader.ok_ids) == n_videos:
                return path
        raise SystemExit(f"{path} exists with other contents; remove it")
    rng = np.random.default_rng(seed)

    def videos():
        for i in range(n_videos):
            x = rng.normal(0, 0.5, size=(int(rng.integers(30, 301)), dim)).astype(np.float32)
            yield f"v{i:05d}", np.clip(x, -2, 2), (f"class{i % 10}",)

    return write_store(path, videos(), dim=dim, dtype=dtype, attrs={"backbone": "random"})


def _pad_to(max_frames: int, samples: list) -> object:
    from heads.data import Batch, collate

    batch = collate(samples)
    x = batch.x.new_zeros((batch.x.shape[0], max_frames, batch.x.shape[2]))
    x[:, : batch.x.shape[1]] = batch.x
    return Batch(x, batch.lengths, batch.labels, batch.index)


def _timed_pass(model, optimizer, batches) -> tuple[float, int, int]:
    import torch

    videos = frames = 0
    t0 = time.perf_counter()
    for batch in batches:
        loss = torch.nn.functional.cross_entropy(model(batch.x, batch.lengths), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        videos += batch.x.shape[0]
        frames += int(batch.lengths.sum())
    return time.perf_counter() - t0, videos, frames


def run_case(case: dict) -> dict:
    """Alternate RAM-fed and store-fed passes over the same ``case['batches']`` batches."""
    import torch

    from vidfeat.allocator import keep_freed_memory

    malloc_kept = keep_freed_memory()  # as the heads command does (VIDFEAT_MALLOC=system: not)

    from heads.batching import make_loader
    from heads.config import DataConfig
    from heads.data import FeatureDataset, collate
    from heads.labels import build_label_map
    from heads.models import create_head
    from vidfeat.store import open_store

    torch.manual_seed(0)
    with open_store(case["store"]) as reader:
        label_map, videos = build_label_map(reader.videos)
    cfg = DataConfig(
        batch_size=case["batch_size"],
        num_workers=case["workers"],
        bucket=case["bucket"],
        max_frames=300,
        cache_mb=case.get("cache_mb"),  # None: the default (256 MiB)
    )
    dataset = FeatureDataset(case["store"], videos, label_map, cfg, train=True)
    dim = dataset.dim
    loader = make_loader(dataset, cfg, shuffle=True, seed=0)
    loader.batch_sampler.set_epoch(1)
    keys = [b for _, b in zip(range(case["batches"]), loader.batch_sampler, strict=False)]
    fixed = [np.array([i for i, _ in batch]) for batch in keys]
    loader.batch_sampler._batches = lambda: fixed  # the store feed reads these, every round
    loader.collate_fn = collate if cfg.bucket else functools.partial(_pad_to, cfg.max_frames)
    # The RAM feed's tensors, read through another reader, so that the store feed's first pass
    # starts with an empty chunk cache.
    ram_source = FeatureDataset(case["store"], videos, label_map, cfg, train=True)
    items = {k: ram_source[k] for batch in keys for k in batch}
    ram_source.close()
    model = create_head(case["model"], input_dim=dim, num_classes=len(label_map))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _timed_pass(model, optimizer, [loader.collate_fn([items[k] for k in keys[0]])])  # warm-up
    best = {"ram": math.inf, "store": math.inf}
    first_store = math.nan
    for _ in range(case["rounds"]):
        ram = (loader.collate_fn([items[k] for k in batch]) for batch in keys)
        for source, batches in (("ram", ram), ("store", loader)):
            seconds, n_videos, n_frames = _timed_pass(model, optimizer, batches)
            best[source] = min(best[source], seconds)
            if source == "store" and math.isnan(first_store):
                first_store = seconds
    iterator = getattr(loader, "_iterator", None)  # persistent workers' processes
    workers = [w.pid for w in getattr(iterator, "_workers", [])]
    return {
        "ram_sequences_per_s": n_videos / best["ram"],
        "store_sequences_per_s": n_videos / best["store"],
        "store_frames_per_s": n_frames / best["store"],
        "vs_ram": best["ram"] / best["store"],
        # The first store pass decodes every chunk from its file; later passes find the chunks
        # in the reader's cache when they fit (--cache-mb).
        "store_first_pass_sequences_per_s": n_videos / first_store,
        "vs_ram_first_pass": best["ram"] / first_store,
        "sequences_timed": n_videos,
        "malloc_kept": malloc_kept,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_pss_mb": sum(_pss_mb(pid) for pid in workers),
    }


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _run_in_subprocess(case: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.train", "--case", json.dumps(case)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    lines = [
        "| store | head | batches | workers | cache MiB | RAM seq/s | store seq/s | store / RAM "
        "| first pass / RAM | peak RSS MB | workers PSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['store_name']} | {r['model']} | {'bucketed' if r['bucket'] else 'pad-max'} "
            f"| {r['workers']} | {r.get('cache_mb') or 256} | {r['ram_sequences_per_s']:.1f} "
            f"| {r['store_sequences_per_s']:.1f} | {r['vs_ram']:.2f} "
            f"| {r['vs_ram_first_pass']:.2f} "
            f"| {r['peak_rss_mb']:.0f} | {r['workers_pss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=16, help="Batches per pass (bof).")
    parser.add_argument("--lstm-batches", type=int, default=4, help="Batches per pass (lstm).")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating RAM/store rounds.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "vidfeat-bench",
        help="Where the benchmark stores are built (and reused).",
    )
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    rows = []
    for store_name, (dim, dtype) in STORES.items():
        path = args.work / f"train-{store_name}-{args.videos}.zarr"
        t0 = time.perf_counter()
        build_store(path, args.videos, dim, dtype)
        print(f"store {path} ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        cases = [(*c, None) for c in CASES] + [(*c, LARGE_CACHE_MB) for c in LARGE_CACHE_CASES]
        for model, workers, bucket, cache_mb in cases:
            case = {
                "store": str(path),
                "store_name": store_name,
                "model": model,
                "workers": workers,
                "bucket": bucket,
                "batches": args.lstm_batches if model == "lstm" else args.batches,
                "rounds": args.rounds,
                "batch_size": args.batch_size,
                "cache_mb": cache_mb,
            }
            rows.append({**case, **_run_in_subprocess(case), "store": path.name})
            print(_table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    config = {
        "videos": args.videos,
        "frames": "30-300 (uniform)",
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "dataset_float32_gb": {
            name: args.videos * 165 * dim * 4 / 1e9 for name, (dim, _) in STORES.items()
        },
        "load_average_1_5_15": os.getloadavg(),
    }
    path = write_result("train", {"config": config, "results": rows})
    print(_table(rows))
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
