"""Generate the labelled demo video set (deterministic), and its manifest.

Ten classes, each a kind of moving object (shape x colour family) over a textured background
that changes per video, so class identity is visual but no two videos look the same. Videos are
H.264 MP4s written with PyAV, 3-5 seconds at 24-30 fps, 320x240.

    python data_manifests/make_demo.py --out demo            # videos in demo/videos/
    python data_manifests/make_demo.py --out demo_big --per-class 12 --seed 1

The manifest written next to the videos (``demo/manifest.csv``) matches the committed
``data_manifests/demo.csv``, whose paths point into ``../demo/videos``. It gives every video a
split (per class: the last fifth test, one video val, the rest train), so a training run on the
demo has validation and test videos of every class.

A rerun reuses the videos already there; each is written under a temporary name and renamed
when complete, so an interrupted run never leaves a broken video to reuse.
"""

from __future__ import annotations

import argparse
import csv
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

CLASSES = (
    ("red_disc", "disc", (220, 40, 40)),
    ("green_disc", "disc", (40, 200, 60)),
    ("blue_square", "square", (40, 70, 220)),
    ("yellow_square", "square", (230, 210, 40)),
    ("cyan_ring", "ring", (40, 210, 210)),
    ("magenta_ring", "ring", (210, 40, 200)),
    ("white_stripes", "stripes", (240, 240, 240)),
    ("orange_stripes", "stripes", (240, 140, 30)),
    ("black_cross", "cross", (15, 15, 15)),
    ("purple_cross", "cross", (120, 40, 170)),
)
WIDTH, HEIGHT = 320, 240
_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH]


def _background(rng: np.random.Generator) -> np.ndarray:
    # Smooth random colour field: low-res noise upsampled, different for every video.
    low = rng.uniform(60, 200, size=(6, 8, 3))
    ys = np.linspace(0, 5, HEIGHT)
    xs = np.linspace(0, 7, WIDTH)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, 5), np.minimum(x0 + 1, 7)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = low[y0][:, x0] * (1 - wx) + low[y0][:, x1] * wx
    bottom = low[y1][:, x0] * (1 - wx) + low[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def _mask(shape: str, cx: float, cy: float, r: float, t: float) -> np.ndarray:
    yy, xx = _YY, _XX
    dx, dy = xx - cx, yy - cy
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= r * 0.9) & (np.abs(dy) <= r * 0.9)
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.6 * r) ** 2)
    if shape == "stripes":
        inside = (np.abs(dx) <= 1.6 * r) & (np.abs(dy) <= 1.6 * r)
        return inside & (((xx + yy + 8 * t) // 8) % 2 == 0)
    if shape == "cross":
        return ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | (
            (np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)
        )
    raise ValueError(shape)


def render_video(path: Path, shape: str, colour: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    fps = int(rng.choice([24, 25, 30]))
    seconds = float(rng.uniform(3.0, 5.0))
    background = _background(rng)
    r = rng.uniform(28, 45)
    pos = rng.uniform([r, r], [WIDTH - r, HEIGHT - r])
    vel = rng.uniform(-60, 60, size=2)  # pixels per second
    tint = np.array(colour, dtype=np.float64) + rng.uniform(-20, 20, size=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "28", "preset": "veryfast"}
        for i in range(round(seconds * fps)):
            t = i / fps
            p = pos + vel * t
            # Bounce off the borders so the object stays in view.
            for k, size in enumerate((WIDTH, HEIGHT)):
                span = size - 2 * r
                q = (p[k] - r) % (2 * span)
                p[k] = r + (q if q <= span else 2 * span - q)
            img = background.copy()
            img[_mask(shape, p[0], p[1], r, t)] = np.clip(tint, 0, 255)
            noise = rng.normal(0, 4, size=img.shape)
            frame = av.VideoFrame.from_ndarray(
                np.clip(img + noise, 0, 255).astype(np.uint8), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(partial, path)


def split_of(j: int, per_class: int) -> str:
    """Split of a class's j-th video: the last fifth test, the one before val, the rest train."""
    n_test = max(1, round(per_class / 5))
    if j >= per_class - n_test:
        return "test"
    return "val" if j == per_class - n_test - 1 else "train"


def make_demo(
    out: Path, per_class: int = 8, seed: int = 0, progress: bool = True
) -> list[dict[str, str]]:
    """Write the videos under ``out/videos`` and return manifest rows (paths relative to out)."""
    if per_class < 3:
        raise ValueError("per_class must be at least 3 (train, val and test videos per class)")
    rows, todo = [], []
    for class_index, (name, shape, colour) in enumerate(CLASSES):
        for j in range(per_class):
            video_id = f"{name}_{j:02d}"
            rel = Path("videos") / name / f"{video_id}.mp4"
            if not (out / rel).exists():
                todo.append((out / rel, shape, colour, seed * 100_003 + class_index * 1000 + j))
            split = split_of(j, per_class)
            rows.append(
                {"video_id": video_id, "path": rel.as_posix(), "labels": name, "split": split}
            )
    reused = len(rows) - len(todo)
    if reused:
        print(f"reusing {reused} of {len(rows)} videos already in {out / 'videos'}")
    for args in tqdm(todo, desc="demo videos", unit="video", disable=not progress or not todo):
        render_video(*args)
    return rows


def write_manifest(rows: list[dict[str, str]], path: Path, prefix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["video_id", "path", "labels", "split"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": prefix + row["path"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="Folder (default: demo).")
    parser.add_argument(
        "--per-class",
        type=int,
        default=8,
        help="Videos per class, at least 3: train, val and test each get one (default: 8).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    args = parser.parse_args()
    if args.per_class < 3:
        parser.error(f"--per-class must be at least 3 (train, val and test), got {args.per_class}")
    rows = make_demo(args.out, args.per_class, args.seed, progress=not args.no_progress)
    write_manifest(rows, args.out / "manifest.csv")
    print(f"{len(rows)} videos in {len(CLASSES)} classes -> {args.out / 'manifest.csv'}")


if __name__ == "__main__":
    main()
