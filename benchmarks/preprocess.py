"""A decode worker's time per sampled frame: decoding against preprocessing (resize + normalise).

Decode workers bound extraction wherever the backbone is fast (every GPU node), so what a
worker spends on each frame after decoding it is what moving that work elsewhere (the device)
could win at most. On the extraction benchmark's clips (H.264 at 30 fps, x264's default GOP,
from ``benchmarks.extract_runs``), one worker's work for each 1-fps frame is timed in one
process, one thread, as a worker runs it:

- decode: the default decoder's ``sample(1 fps)`` of the whole clip, per picked frame;
- resize: each registered resize rule to the backbone's 299 x 299 (the default is TF1's);
- normalise: ``vidfeat.preprocess.normalize``, and beside it the per-channel broadcast it
  replaced (the same arithmetic, numpy's inner loop three elements long), as the reference.

Each figure is the median of ``--repeats`` passes over the clip's frames, interleaved.

    python -m benchmarks.preprocess          # -> benchmarks/results/preprocess.json
    python -m benchmarks.preprocess --seconds 20 --repeats 3     # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.common import write_result

if TYPE_CHECKING:
    from vidfeat.preprocess import PreprocessSpec

RESOLUTIONS = {"360p": (640, 360), "720p": (1280, 720)}


def broadcast_normalize(
    x: np.ndarray, mean: np.ndarray, std: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """The previous ``normalize``: a (3,) operand broadcast over (H, W, 3)."""
    np.subtract(x, mean, out=out, dtype=np.float32)
    out /= std
    return out


def _per_frame_ms(fn: Callable[[np.ndarray], object], frames: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for frame in frames:
        fn(frame)
    return (time.perf_counter() - started) / len(frames) * 1e3


def measure(clip: Path, spec: PreprocessSpec, repeats: int) -> dict:
    from vidfeat.decode import open_video
    from vidfeat.preprocess import RESIZE_RULES, normalize

    def decode() -> list[np.ndarray]:
        with open_video(clip, threads=1) as video:
            return [s.frame for s in video.sample(1, 360)]

    frames = decode()
    size = spec.input_size
    resized = np.empty((size, size, 3), np.float32)
    out = np.empty_like(resized)
    mean32, std32 = np.float32(spec.mean), np.float32(spec.std)
    timings: dict[str, list[float]] = {}
    for _ in range(repeats):  # interleaved, so load from elsewhere hits each alike
        started = time.perf_counter()
        decode()
        timings.setdefault("decode", []).append((time.perf_counter() - started) / len(frames) * 1e3)
        for rule in RESIZE_RULES.names():
            resize = RESIZE_RULES.get(rule)
            ms = _per_frame_ms(lambda f, r=resize: r(f, size, resized), frames)
            timings.setdefault(f"resize {rule}", []).append(ms)
        timings.setdefault("normalize", []).append(
            _per_frame_ms(lambda _: normalize(resized, spec.mean, spec.std, out=out), frames)
        )
        timings.setdefault("normalize, broadcast (before)", []).append(
            _per_frame_ms(lambda _: broadcast_normalize(resized, mean32, std32, out), frames)
        )
    ms = {name: statistics.median(values) for name, values in timings.items()}
    prep = ms[f"resize {spec.resize}"] + ms["normalize"]
    before = ms[f"resize {spec.resize}"] + ms["normalize, broadcast (before)"]
    return {
        "frames": len(frames),
        "ms_per_frame": ms,
        "default_preprocess_ms": prep,
        "preprocess_share_of_worker": prep / (ms["decode"] + prep),
        "worker_frames_per_s": 1e3 / (ms["decode"] + prep),
        "worker_frames_per_s_before": 1e3 / (ms["decode"] + before),
        "normalize_speedup": ms["normalize, broadcast (before)"] / ms["normalize"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=90, help="clip length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vidfeat-bench")
    args = parser.parse_args()
    from benchmarks.extract_runs import write_clips
    from vidfeat.backbones import create_backbone

    spec = create_backbone("inception_v3").spec  # the default weights' resize and statistics
    args.work.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, size in RESOLUTIONS.items():
        clip = args.work / f"preprocess-{name}-{args.seconds}s.mp4"
        if not clip.exists():
            write_clips([clip], size, args.seconds)
        rows[name] = measure(clip, spec, args.repeats)
        r = rows[name]
        print(
            f"{name}: decode {r['ms_per_frame']['decode']:.1f} ms/frame, preprocess "
            f"{r['default_preprocess_ms']:.2f} ms ({r['preprocess_share_of_worker']:.1%} of the "
            f"worker), normalize {r['normalize_speedup']:.1f}x the broadcast"
        )
    config = {
        "seconds": args.seconds,
        "repeats": args.repeats,
        "resize": spec.resize,
        "load_average_1_5_15": os.getloadavg(),
    }
    print(f"written to {write_result('preprocess', {'config': config, 'results': rows})}")


if __name__ == "__main__":
    main()
