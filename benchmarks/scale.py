"""Scale, measured: a store of 1,000,000 videos in 64 parts, a flat-memory training run on
100k videos, Ray extraction with 1, 2 and 4 decode workers, and DDP with 2 ranks against 1.

Sections (``--only``, comma-separated; default all):

- ``index``: build the large store with vidfeat's writer (``--videos`` in ``--parts`` parts,
  ``--build-jobs`` writer processes), then, each in a fresh process, time and peak RSS of
  importing the store package (the baseline), ``open_store`` + ``store.videos``, a random read,
  and opening a writer for a new part (benchmarks/scale_store.py);
- ``train``: ``heads train`` on the large store, a short ``--max-steps`` run: videos read per
  second and peak RSS (benchmarks/scale_train.py);
- ``flat``: ``heads train --max-steps --eval-every`` on a store of ``--flat-videos`` videos,
  RSS sampled while it runs, its slope against the step and a flatness check;
- ``ray``: extraction throughput with ``--ray-workers`` decode workers (benchmarks/scale_ray.py);
- ``ddp``: ``heads train`` with 2 torchrun ranks against 1 (benchmarks/scale_ddp.py).

The JSON's ``notes`` say how each figure should grow on a real cluster and what breaks first,
computed from the measured per-part and per-video costs (benchmarks/scale_notes.py).

    python -m benchmarks.scale                                   # everything, full size
    python -m benchmarks.scale --only index,train --work /data/scale   # keep the stores
    python -m benchmarks.scale --videos 2000 --parts 4 --flat-videos 1000 --only index,flat
    python -m benchmarks.scale --save                            # results/scale.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from benchmarks import scale_ddp, scale_ray, scale_store, scale_train
from benchmarks.common import machine_info, work_dir, write_result
from benchmarks.scale_notes import growth_notes

log = logging.getLogger("benchmarks.scale")


class Stores:
    """The synthetic stores of this run, each built once (or reused from a kept ``--work``)."""

    def __init__(self, opts: argparse.Namespace, work: Path) -> None:
        self.opts, self.work = opts, work
        self.builds: dict[str, dict] = {}

    def get(self, videos: int) -> Path:
        o = self.opts
        name = f"{videos}v-{o.parts}p-{o.frames}x{o.dim}-{o.classes}c.zarr"
        path = self.work / name
        if name not in self.builds:
            log.info("building %s", name)
            build = scale_store.build_store(
                path, videos, o.parts, o.dim, o.frames, o.build_jobs, o.classes, o.labels_per_video
            )
            self.builds[name] = {"videos": videos, "parts": o.parts, **build}
            log.info("built %s: %s", name, json.dumps(self.builds[name]))
        return path


def val_videos(videos: int) -> int:
    return len(range(0, videos, 100))  # scale_store.split_of: ids 0 mod 100


def train_videos(videos: int) -> int:
    return videos - val_videos(videos) - len(range(1, videos, 100))  # less val and test


def _index(opts: argparse.Namespace, stores: Stores) -> dict:
    return scale_store.measure_index(stores.get(opts.videos))


def _train(opts: argparse.Namespace, stores: Stores) -> dict:
    run = scale_train.TrainRun(
        model=opts.model,
        batch_size=opts.train_batch_size,
        max_steps=opts.train_steps,
        eval_every=opts.train_steps,
        num_workers=opts.num_workers,
        device=opts.device,
        cache_mb=opts.cache_mb,
    )
    out = stores.work / "train-run"
    return scale_train.throughput(stores.get(opts.videos), out, run, val_videos(opts.videos))


def _flat(opts: argparse.Namespace, stores: Stores) -> dict:
    store = stores.get(opts.flat_videos)
    n_train = train_videos(opts.flat_videos)
    steps = opts.flat_steps or scale_train.default_steps(n_train, opts.flat_batch_size)
    run = scale_train.TrainRun(
        model=opts.model,
        batch_size=opts.flat_batch_size,
        max_steps=steps,
        eval_every=opts.flat_eval_every or max(1, steps // 15),
        num_workers=opts.num_workers,
        device=opts.device,
        cache_mb=opts.cache_mb,
    )
    row = scale_train.flat_memory(store, stores.work / "flat-run", run, n_train)
    row["open_probe"] = scale_store.probe("open", store)  # a second point for open's costs
    return row


def _ray(opts: argparse.Namespace, stores: Stores) -> dict:
    work = stores.work / "ray"
    work.mkdir(exist_ok=True)
    return scale_ray.measure(opts.ray_workers, opts.ray_videos, opts.ray_seconds, opts.device, work)


def _ddp(opts: argparse.Namespace, stores: Stores) -> dict:
    settings = scale_ddp.DdpSettings(
        videos=opts.ddp_videos,
        epochs=opts.ddp_epochs,
        batch_size=opts.ddp_batch_size,
        model=opts.ddp_model,
        device=opts.device,
    )
    work = stores.work / "ddp"
    work.mkdir(exist_ok=True)
    return scale_ddp.measure(settings, work)


SECTIONS: dict[str, Callable[[argparse.Namespace, Stores], dict]] = {
    "index": _index,
    "train": _train,
    "flat": _flat,
    "ray": _ray,
    "ddp": _ddp,
}


def _sections(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        choices = ", ".join(SECTIONS)
        raise argparse.ArgumentTypeError(f"unknown sections {unknown}; choose from {choices}")
    return [name for name in SECTIONS if name in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", type=_sections, default=list(SECTIONS), help=",".join(SECTIONS))
    ap.add_argument("--work", type=Path, help="keep stores and runs here (a rerun reuses them)")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/scale.json")
    ap.add_argument("--device", default="auto", help="for heads train and the Ray backbone")
    store = ap.add_argument_group("stores")
    store.add_argument("--videos", type=int, default=1_000_000, help="videos of the index store")
    store.add_argument("--parts", type=int, default=64)
    store.add_argument("--frames", type=int, default=4, help="frames per video")
    store.add_argument("--dim", type=int, default=16, help="float32 features per frame")
    store.add_argument("--build-jobs", type=int, default=os.cpu_count() or 1)
    store.add_argument(
        "--classes", type=int, default=scale_store.CLASSES, help="default: YouTube-8M's 3,862"
    )
    store.add_argument(
        "--labels-per-video", type=float, default=scale_store.LABELS_PER_VIDEO, help="mean"
    )
    train = ap.add_argument_group("train and flat")
    train.add_argument("--model", default="bof")
    train.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    train.add_argument("--cache-mb", type=int, help="decoded-chunk cache (default: heads')")
    train.add_argument("--train-steps", type=int, default=200)
    train.add_argument("--train-batch-size", type=int, default=256)
    train.add_argument("--flat-videos", type=int, default=100_000)
    train.add_argument("--flat-steps", type=int, help="default: 3 passes over the train set")
    train.add_argument("--flat-eval-every", type=int, help="default: a 15th of the steps")
    train.add_argument("--flat-batch-size", type=int, default=64)
    dist = ap.add_argument_group("ray and ddp")
    dist.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2, 4])
    dist.add_argument("--ray-videos", type=int, default=8)
    dist.add_argument("--ray-seconds", type=float, default=20.0, help="length of each clip")
    dist.add_argument("--ddp-videos", type=int, default=4000)
    dist.add_argument("--ddp-epochs", type=int, default=3)
    dist.add_argument("--ddp-batch-size", type=int, default=64, help="global batch")
    dist.add_argument("--ddp-model", default="gru")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    opts = parse_args(argv)
    results: dict[str, dict] = {}
    with work_dir(opts.work, "vidfeat-scale-") as work:
        stores = Stores(opts, work)
        for name in opts.only:
            log.info("section %s", name)
            results[name] = SECTIONS[name](opts, stores)
    settings = {k: v for k, v in vars(opts).items() if k not in ("work", "save")}
    payload = {"settings": settings, "builds": stores.builds, **results}
    payload["notes"] = growth_notes(payload)
    if opts.save:
        print(write_result("scale", payload))
    else:
        print(json.dumps({"machine": machine_info(), **payload}, indent=2))


if __name__ == "__main__":
    main()
