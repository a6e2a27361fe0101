"""What each decoding lever buys on long-GOP H.264, side by side in one run.

Decoding bounds extraction wherever inference is fast, and at 1 fps from 30 fps video most of
its work is frames nobody keeps. On the extraction benchmark's clips (x264 at 30 fps, B-frames,
a keyframe every 250 frames; ``benchmarks.extract_runs``), one process decodes with PyAV
directly, a pick being the first frame at or after each pick time, in these ways:

- ``every frame``: every packet decoded, the loop users write first;
- ``skip unreferenced``: frames no pick needs and no other frame references are not decoded
  (FFmpeg's ``skip_frame=NONREF`` per packet, what ``--decoder pyav`` does); same picks;
- ``skip unreferenced, 2 threads``: the same with FFmpeg's frame threads (``thread_count=2``);
  reported as wall and as CPU time, since a worker's cores are what a node runs out of;
- ``skip unreferenced, no deblocking``: the same in one thread without H.264's loop filter
  (``skip_loop_filter=all``): lossy, so its mean absolute pixel difference from the exact
  picks is reported;
- ``vidfeat's pyav decoder``: ``open_video(...).sample`` as a decode worker runs it (it skips
  unreferenced frames too, jumps over the packets between picks that lie before a keyframe,
  and checks timing and coverage), for its cost over the bare loop; ``no keyframe jumps``: the
  same decoder with its jumps turned off (in this process only), for what they buy;
- ``keyframes only``: only keyframes decoded (``skip_frame=NONKEY``), a pick being the first
  keyframe at or after its time (picks after the last keyframe get none): reported with the
  picks it served and how far (s) its frames are from the picks';
- sparse picks (one every ``--sparse-every`` s): skip unreferenced, reading the whole file,
  against seeking to the keyframe before each pick and decoding from there, and vidfeat's
  decoder at that rate;
- decode resolution: every figure at 360p and 720p of the same footage, the nearest thing to
  decoding at a lower resolution for H.264, which FFmpeg cannot downscale while decoding;
- GOP length: every figure on the same footage encoded with x264's default GOP (a keyframe at
  most every 250 frames, 8.3 s) and with each ``--keyint`` (default 60: 2 s).

Cost is per picked frame (ms) in one thread unless said, median of ``--repeats`` interleaved
passes.

    python -m benchmarks.decode_levers      # -> benchmarks/results/decode_levers.json
    python -m benchmarks.decode_levers --seconds 20 --repeats 1 --keyint   # a quick look
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from benchmarks.common import write_result

RESOLUTIONS = {"360p": (640, 360), "720p": (1280, 720)}


def packet_times(clip: Path) -> tuple[list[int], list[int], Fraction]:
    """(sorted pts of every video packet, sorted pts of keyframes, time base): one demux pass."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        pts, keys = [], []
        for packet in container.demux(stream):
            if packet.pts is None or not packet.size:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    return sorted(pts), sorted(keys), stream.time_base


def pick_pts(pts: list[int], tb: Fraction, every_s: float) -> list[int]:
    """For each pick time 0, every_s, ...: the first pts at or after it (pts from the first)."""
    first, last = pts[0], pts[-1]
    picks, t = [], 0.0
    while True:
        target = first + int(np.ceil(t / tb))
        if target > last:
            return picks
        picks.append(pts[bisect.bisect_left(pts, target)])
        t += every_s


def decode(
    clip: Path,
    keep: set[int],
    *,
    skip: bool = True,
    threads: int = 1,
    deblock: bool = True,
    keyframes_only: bool = False,
) -> dict[int, np.ndarray]:
    """Decode ``clip`` from the start; returns {pts: RGB} of the frames whose pts are in
    ``keep``. With ``skip``, packets not in ``keep`` are decoded only when another frame may
    reference them (NONREF); without, every packet is decoded."""
    out: dict[int, np.ndarray] = {}
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        codec.thread_count = threads
        codec.thread_type = "FRAME" if threads > 1 else "NONE"
        if not deblock:
            codec.options = {"skip_loop_filter": "all"}
        if keyframes_only:
            codec.skip_frame = "NONKEY"
        for packet in container.demux(stream):
            if skip and not keyframes_only:
                codec.skip_frame = "DEFAULT" if packet.pts in keep else "NONREF"
            for frame in stream.decode(packet):
                if frame.pts in keep:
                    out[frame.pts] = frame.to_ndarray(format="rgb24")
    return out


def decode_seeking(clip: Path, picks: list[int]) -> dict[int, np.ndarray]:
    """Each pick by seeking to the keyframe at or before it, then decoding forward to it
    (skipping unreferenced frames on the way)."""
    out: dict[int, np.ndarray] = {}
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        codec.thread_count, codec.thread_type = 1, "NONE"
        for want in picks:
            container.seek(want, backward=True, any_frame=False, stream=stream)
            codec.flush_buffers()
            found = False
            for packet in container.demux(stream):
                codec.skip_frame = "DEFAULT" if packet.pts == want else "NONREF"
                for frame in stream.decode(packet):
                    if frame.pts == want:
                        out[want] = frame.to_ndarray(format="rgb24")
                        found = True
                if found:
                    break
    return out


@contextlib.contextmanager
def _keyframe_jumps(enabled: bool) -> Iterator[None]:
    """The pyav decoder with its keyframe jumps on (as shipped) or off (what it did before)."""
    from vidfeat.decode import pyav

    planner = pyav.keyframe_jumps
    if not enabled:
        pyav.keyframe_jumps = lambda *args: {}
    try:
        yield
    finally:
        pyav.keyframe_jumps = planner


def vidfeat_decoder(clip: Path, every_s: float = 1.0, jumps: bool = True) -> dict[int, np.ndarray]:
    """The picks of ``vidfeat.decode``'s pyav decoder, keyed by pts in the stream's time base
    (its timestamps count from the first frame, so the first packet's pts is added back)."""
    from vidfeat.decode import open_video

    pts, _, tb = packet_times(clip)
    fps = 1 / Fraction(str(every_s))
    with _keyframe_jumps(jumps), open_video(clip, "pyav", threads=1) as video:
        picks = video.sample(fps, 360)
        return {pts[0] + round(Fraction(s.timestamp_s) / tb): s.frame for s in picks}


def _timed(fn: Callable[[], dict]) -> tuple[dict, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(clip: Path, repeats: int, sparse_every_s: float) -> dict:
    pts, keys, tb = packet_times(clip)
    picks = pick_pts(pts, tb, 1.0)
    key_picks = pick_pts(keys, tb, 1.0)  # the first keyframe at or after each pick time
    sparse = pick_pts(pts, tb, sparse_every_s)
    keep, sparse_keep = set(picks), set(sparse)

    def with_demux(fn: Callable[[], dict]) -> Callable[[], dict]:
        # A decoder that skips must learn every packet's pts first: its pass is part of it.
        return lambda: (packet_times(clip), fn())[1]

    variants: dict[str, tuple[Callable[[], dict], int]] = {
        "every frame": (lambda: decode(clip, keep, skip=False), len(picks)),
        "skip unreferenced": (with_demux(lambda: decode(clip, keep)), len(picks)),
        "skip unreferenced, 2 threads": (
            with_demux(lambda: decode(clip, keep, threads=2)),
            len(picks),
        ),
        "skip unreferenced, no deblocking": (
            with_demux(lambda: decode(clip, keep, deblock=False)),
            len(picks),
        ),
        "vidfeat's pyav decoder": (lambda: vidfeat_decoder(clip), len(picks)),
        "vidfeat's pyav decoder, no keyframe jumps": (
            lambda: vidfeat_decoder(clip, jumps=False),
            len(picks),
        ),
        "keyframes only": (
            with_demux(lambda: decode(clip, set(key_picks), keyframes_only=True)),
            len(picks),
        ),
        f"sparse (1 per {sparse_every_s:g} s): skip unreferenced": (
            with_demux(lambda: decode(clip, sparse_keep)),
            len(sparse),
        ),
        f"sparse (1 per {sparse_every_s:g} s): seek to keyframes": (
            lambda: decode_seeking(clip, sparse),
            len(sparse),
        ),
        f"sparse (1 per {sparse_every_s:g} s): vidfeat's pyav decoder": (
            lambda: vidfeat_decoder(clip, sparse_every_s),
            len(sparse),
        ),
    }
    # The reference frames: every frame decoded, as the every-frame variant does.
    exact, exact_sparse = decode(clip, keep, skip=False), decode(clip, sparse_keep, skip=False)
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, dict] = {}
    for _ in range(repeats):  # interleaved: load from elsewhere hits every variant alike
        for name, (fn, _) in variants.items():
            outputs[name], wall, cpu = _timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
    rows = {}
    for name, (_, n_picks) in variants.items():
        got = outputs[name]
        row = {
            "picks": n_picks,
            "ms_per_pick": statistics.median(walls[name]) / n_picks * 1e3,
            "cpu_ms_per_pick": statistics.median(cpus[name]) / n_picks * 1e3,
        }
        if name.startswith("keyframes"):
            served = [p for p in picks if p <= keys[-1]]
            used = [keys[bisect.bisect_left(keys, p)] for p in served]
            row["picks_served"] = len(served)
            row["distinct_frames"] = len(set(used))
            row["mean_offset_s"] = float(
                np.mean([(u - p) * tb for u, p in zip(used, served, strict=True)])
            )
        elif name.startswith("sparse"):
            row["same_frames_as_exact"] = sorted(got) == sorted(exact_sparse) and all(
                np.array_equal(got[p], exact_sparse[p]) for p in exact_sparse
            )
        else:
            diffs = [np.abs(got[p].astype(np.int16) - exact[p]).mean() for p in picks]
            row["mean_abs_pixel_diff"] = float(np.mean(diffs))
        rows[name] = row
    base = rows["every frame"]["ms_per_pick"]
    for row in rows.values():
        row["speedup_vs_every_frame"] = base / row["ms_per_pick"]
    return {"frames_in_clip": len(pts), "keyframes": len(keys), "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=90, help="clip length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparse-every", type=float, default=10.0, help="seconds between picks")
    parser.add_argument(
        "--keyint",
        type=int,
        nargs="*",
        default=[60],
        help="GOP lengths (frames) to measure beside x264's default; none: only the default",
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vidfeat-bench")
    args = parser.parse_args()
    from benchmarks.extract_runs import write_clips

    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for keyint in [None, *args.keyint]:
        for name, size in RESOLUTIONS.items():
            # The default GOP's clips are benchmarks.preprocess's.
            gop = "" if keyint is None else f"-keyint{keyint}"
            clip = args.work / f"preprocess-{name}-{args.seconds}s{gop}.mp4"
            if not clip.exists():
                write_clips([clip], size, args.seconds, keyint)
            key = name if keyint is None else f"{name}, keyint {keyint}"
            results[key] = measure(clip, args.repeats, args.sparse_every)
            for variant, row in results[key]["variants"].items():
                print(
                    f"{key} {variant}: {row['ms_per_pick']:.1f} ms/pick "
                    f"(cpu {row['cpu_ms_per_pick']:.1f}), x{row['speedup_vs_every_frame']:.2f}"
                )
    config = {
        "seconds": args.seconds,
        "repeats": args.repeats,
        "sparse_every_s": args.sparse_every,
        "keyint": args.keyint,
        "pyav": av.__version__,
        "ffmpeg": av.library_versions.get("libavcodec"),
        "load_average_1_5_15": os.getloadavg(),
    }
    path = write_result("decode_levers", {"config": config, "results": results})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
