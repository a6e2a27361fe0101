"""Scale, DDP row: ``heads train`` with 2 ranks (torchrun, gloo or NCCL) against 1 process at
the same global batch.

One synthetic event-order store (``--videos`` videos of 24-64 frames); per world size N in
``--ranks`` a fresh run of ``--epochs`` epochs with per-rank batch ``--batch-size / N``, so every
run takes the same optimizer steps on the same batches (``final_train_loss`` shows they end
within the documented tolerance of each other). Figures per run: training videos/s over the
training windows (``train_wall_s`` of the run, validation included), and the whole command's
wall time (start-up, process group, test).

On a CPU-only machine 2 ranks share the same cores as 1 process with twice the batch, so the
speed-up is bounded by how well one process already used them; with one GPU per rank it should
approach N until the store read (each rank reads its own slice) or the gradient all-reduce per
step (the whole head's parameters, every step) dominates; for the small heads here the
all-reduce latency is what breaks first on slow interconnects.

Run through ``python -m benchmarks.scale --only ddp`` (``--ddp-videos``, ``--ddp-epochs``,
``--ddp-batch-size``, ``--ddp-model``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DdpSettings:
    videos: int = 4000
    epochs: int = 3
    batch_size: int = 64  # global batch (all ranks)
    model: str = "gru"
    device: str = "cpu"
    ranks: tuple[int, ...] = (1, 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(ranks: int, args: list[str]) -> list[str]:
    heads = ["-m", "vidfeat_cli.heads", "-q", *args]
    if ranks == 1:
        return [sys.executable, *heads]
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    rendezvous = ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    return [sys.executable, *launcher, *rendezvous, *heads]


def run(store: Path, out: Path, ranks: int, opts: DdpSettings) -> dict:
    """One ``heads train`` run with ``ranks`` processes; its figures."""
    args = ["train", str(store), "--model", opts.model, "--out", str(out)]
    args += ["--epochs", str(opts.epochs), "--patience", "0", "--dropout", "0"]
    args += ["--batch-size", str(opts.batch_size // ranks), "--device", opts.device]
    threads = str(max(1, (os.cpu_count() or 1) // ranks))  # the same cores for every N
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    shutil.rmtree(out, ignore_errors=True)  # a kept --work holds the previous runs
    t0 = time.perf_counter()
    # stdout to stderr: the benchmark's own stdout is its JSON.
    subprocess.run(_command(ranks, args), cwd=REPO, env=env, check=True, stdout=sys.stderr)
    wall = time.perf_counter() - t0
    test = json.loads((out / "test_metrics.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    videos = records[-1]["examples"]
    return {
        "ranks": ranks,
        "per_rank_batch": opts.batch_size // ranks,
        "train_videos": videos,
        "train_wall_s": test["train_wall_s"],
        "videos_per_s": videos / test["train_wall_s"],
        "command_wall_s": wall,
        "final_train_loss": records[-1]["train_loss"],
        "trainable_params": records[-1].get("trainable_params"),
        "test_gap_at_20": test.get("gap_at_20"),
    }


def measure(opts: DdpSettings, work: Path) -> dict:
    """One run per world size in ``opts.ranks`` on one store kept in ``work``."""
    from heads.synthetic import write_order_store

    store = work / "order.zarr"
    if not store.exists():
        write_order_store(store, opts.videos, dim=128)
    rows = [run(store, work / f"run-{n}", n, opts) for n in opts.ranks]
    base = rows[0]["videos_per_s"]
    for row in rows:
        row["speedup"] = row["videos_per_s"] / base
    return {"settings": asdict(opts), "runs": rows}
