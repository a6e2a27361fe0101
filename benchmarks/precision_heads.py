"""Does a faster precision change what heads learn? Test hit@1 on the demo set, side by side.

The demo videos (``data_manifests/make_demo.py``) are extracted once per precision with
``vidfeat extract``'s pipeline (CPU, default decoder), then each head is trained with the same
seeds and the same split on every store. Reported per precision: the features' distance to the
fp32 store's (``vidfeat.backbones.fidelity``), test hit@1 pooled over the seeds, its change
against fp32 in points, how often the top-1 class is the same as fp32's, and fp32's own
seed-to-seed spread (the run-to-run noise a change is judged against).

    python -m benchmarks.precision_heads                      # -> results/precision_heads.json
    python -m benchmarks.precision_heads --per-class 2 --seeds 1 --epochs 2   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import mean_std, write_result
from benchmarks.pca_heads import _top1, _train

log = logging.getLogger("benchmarks.precision_heads")
HEADS = ("logistic", "bilstm")
REFERENCE = "fp32"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--precisions", default="fp32,auto", help="the first is the reference")
    p.add_argument("--per-class", type=int, default=8, help="demo videos per class (10 classes)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--work", type=Path, default=None, help="keep stores and runs here")
    p.add_argument("--name", default="precision_heads", help="results/<name>.json")
    return p.parse_args()


def make_demo(folder: Path, per_class: int) -> Path:
    script = Path(__file__).resolve().parents[1] / "data_manifests" / "make_demo.py"
    cmd = [sys.executable, str(script), "--out", str(folder), "--per-class", str(per_class)]
    subprocess.run([*cmd, "--seed", "1", "--no-progress"], check=True)
    return folder / "manifest.csv"


def extract_store(manifest: Path, store: Path, precision: str) -> dict:
    from vidfeat import open_store
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import extract, settle_config_precision

    cfg = ExtractConfig(manifest=manifest, out=store, device="cpu", precision=precision)
    cfg = settle_config_precision(dataclasses.replace(cfg, progress=False))
    t0 = time.perf_counter()
    summary = extract(cfg)
    with open_store(store) as reader:
        frames = sum(len(reader.read(v)) for v in reader.ok_ids)
    return {"precision": cfg.precision, "seconds": time.perf_counter() - t0,
            "videos": summary.ok, "frames": frames}  # fmt: skip


def store_fidelity(store: Path, reference: Path) -> dict:
    from vidfeat import open_store
    from vidfeat.backbones.fidelity import fidelity

    with open_store(store) as a, open_store(reference) as b:
        ids = sorted(b.ok_ids)
        return fidelity(
            np.concatenate([a.read(v) for v in ids]), np.concatenate([b.read(v) for v in ids])
        )


def main() -> None:
    from heads.config import TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        manifest = make_demo(work / "demo", args.per_class)
        stores, extraction = {}, {}
        for precision in args.precisions.split(","):
            info = extract_store(manifest, work / f"demo_{precision}.zarr", precision)
            stores[info["precision"]] = work / f"demo_{precision}.zarr"
            extraction[info["precision"]] = info
            log.info("extracted %s: %s", precision, info)
        names = list(stores)
        reference = names[0]
        fidelities = {p: store_fidelity(stores[p], stores[reference]) for p in names[1:]}
        records = []
        for seed in range(args.seeds):
            root = work / "runs" / f"seed{seed}"
            for head in HEADS:
                cfg = TrainConfig(model=head, epochs=args.epochs, optimizer="adam", seed=seed)
                base_dir = root / f"{head}_{reference}"
                base = _train(stores[reference], cfg, base_dir)
                split = base_dir / "split.csv"  # one split for every precision of the seed
                for p in names:
                    run_dir = root / f"{head}_{p}"
                    m = base if p == reference else _train(stores[p], cfg, run_dir, split=split)
                    a, b = _top1(base_dir), _top1(run_dir)
                    records.append({
                        "seed": seed, "head": head, "precision": p, "n_test": m["n_test"],
                        "hit_at_1": m["hit_at_1"], "gap_at_20": m["gap_at_20"],
                        "top1_agreement": float(np.mean([a[v] == b[v] for v in a])),
                    })  # fmt: skip
        summary = summarise(records, reference)
    payload = {
        "settings": vars(args) | {"work": str(args.work) if args.work else None},
        "extraction": extraction,
        "fidelity_vs_reference": fidelities,
        "records": records,
        "summary": summary,
    }
    path = write_result(args.name, payload)
    print("\n".join(markdown(summary, fidelities)))
    print(f"wrote {path}")


def summarise(records: list[dict], reference: str) -> dict:
    out: dict = {}
    for head in dict.fromkeys(r["head"] for r in records):
        ref = [r for r in records if r["head"] == head and r["precision"] == reference]
        for p in dict.fromkeys(r["precision"] for r in records):
            rows = [r for r in records if r["head"] == head and r["precision"] == p]
            n = sum(r["n_test"] for r in rows)
            hit = sum(r["hit_at_1"] * r["n_test"] for r in rows) / n
            ref_hit = sum(r["hit_at_1"] * r["n_test"] for r in ref) / n
            out.setdefault(head, {})[p] = {
                "seeds": len(rows),
                "n_test_predictions": n,
                "hit_at_1_pooled": hit,
                "change_points": 100 * (hit - ref_hit),
                "top1_agreement_pooled": sum(r["top1_agreement"] * r["n_test"] for r in rows) / n,
                "hit_at_1": mean_std([r["hit_at_1"] for r in rows]),
            }
    return out


def markdown(summary: dict, fidelities: dict) -> list[str]:
    lines = [
        "| head | precision | mean rel. diff vs fp32 | test hit@1 (pooled) | change (points) "
        "| same top-1 as fp32 | hit@1 mean ± std over seeds |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for head, by_p in summary.items():
        for p, s in by_p.items():
            diff = fidelities.get(p, {}).get("mean_rel_diff", 0.0)
            h = s["hit_at_1"]
            lines.append(
                f"| {head} | {p} | {diff:.4f} | {s['hit_at_1_pooled']:.3f} | "
                f"{s['change_points']:+.1f} | {s['top1_agreement_pooled']:.2f} | "
                f"{h['mean']:.3f} ± {h['std']:.3f} |"
            )
    return lines


if __name__ == "__main__":
    main()
