"""Scale, Ray row: extraction throughput on a one-machine Ray cluster with 1, 2 and 4 decode
workers (``--engine ray --workers N``), one embedding worker.

For each N, a fresh Ray cluster of N + 1 CPUs (N decode tasks, one embedding actor) and:

1. decode alone: the Ray decode tasks (isolated decode process, 1 fps sampling, resize) over
   every clip, at most N in flight, no backbone: how decoding scales with decode workers;
2. end to end: ``vidfeat extract --engine ray --workers N`` into a fresh store.

On a CPU-only machine the end-to-end figure is bounded by InceptionV3 on one core, so it moves
little with N; the decode figure is the one that should grow with N until the cores run out.
On a real cluster decoding grows with the CPUs added (more nodes, larger ``--workers``) until it
feeds every GPU; see docs/ray.md ("Scaling") for what breaks first.

Run through ``python -m benchmarks.scale --only ray`` (``--ray-workers``, ``--ray-videos``,
``--ray-seconds``).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from fractions import Fraction
from pathlib import Path

from benchmarks.clips import write_clip_manifest, write_generated_clips

log = logging.getLogger(__name__)


def decode_alone(ray, paths: list[Path], workers: int, spec) -> dict:
    """Ray decode tasks only, at most ``workers`` in flight: frames/s of decoding."""
    from vidfeat.engines._ray_workers import DecodeSettings, decode_video
    from vidfeat.preprocess import preprocess_frame

    settings = DecodeSettings(
        "pyav", Fraction(1), 360, functools.partial(preprocess_frame, spec=spec), 300.0
    )
    task = ray.remote(decode_video).options(num_cpus=1, num_returns=2)
    # Warm up every decode worker (each Ray worker starts its decode process once).
    ray.get([task.remote(settings, "warm", str(paths[0]))[0] for _ in range(workers)])
    queue, running, frames = list(paths), {}, 0
    t0 = time.perf_counter()
    while queue or running:
        while queue and len(running) < workers:
            path = queue.pop()
            small, events = task.remote(settings, path.stem, str(path))
            running[small] = events
        ready, _ = ray.wait(list(running), num_returns=1)
        events = ray.get(running.pop(ready[0]))
        frames += sum(len(e.frames) for e in events if hasattr(e, "frames"))
    took = time.perf_counter() - t0
    return {"seconds": took, "frames": frames, "frames_per_s": frames / took}


def extract_end_to_end(manifest: Path, out: Path, workers: int, device: str) -> dict:
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import extract

    cfg = ExtractConfig(
        manifest=manifest,
        out=out,
        decoder="pyav",
        device=device,
        engine="ray",
        workers=workers,
        embed_workers=1,
        progress=False,
    )
    s = extract(cfg)
    if s.failed:
        raise SystemExit(f"{s.failed} videos failed: {s.failures}")
    return {
        "seconds": s.seconds,
        "setup_s": s.setup_s,
        "frames": s.frames,
        "frames_per_s": s.frames_per_s,
        "videos_per_s": s.ok / max(1e-9, s.seconds - s.setup_s),
    }


def measure(workers: list[int], videos: int, seconds: float, device: str, work: Path) -> dict:
    """Decode alone and end to end for each number of decode workers, on clips kept in
    ``work`` (a rerun reuses them)."""
    import ray

    from vidfeat.backbones import create_backbone

    spec = create_backbone("inception_v3", device="cpu").spec
    clips = write_generated_clips(work, videos, seconds)
    manifest = write_clip_manifest(work / "m.csv", [(p.stem, p, "x") for p in clips])
    rows = []
    for n in workers:
        ray.init(num_cpus=n + 1, include_dashboard=False, log_to_driver=False)
        try:
            row = {"decode_workers": n, "decode_alone": decode_alone(ray, clips, n, spec)}
            out = work / f"ray-{n}.zarr"
            shutil.rmtree(out, ignore_errors=True)  # a kept work folder holds the last run's
            shutil.rmtree(out.with_name(out.name + ".locks"), ignore_errors=True)
            row["end_to_end"] = extract_end_to_end(manifest, out, n, device)
        finally:
            ray.shutdown()
        rows.append(row)
        log.info("ray: %s", json.dumps(row))
    return {
        "videos": videos,
        "clip_seconds": seconds,
        "decoder": "pyav",
        "embed_workers": 1,
        "rows": rows,
    }
