"""What PCA and 8-bit quantization cost a head trained on the features: test hit@1.

For each seed, every head is trained on the float32-2048 store, then with the same seed and
split on PCA-reduced copies of it (float32 and YouTube-8M uint8, at each dimension asked for).
The PCA of a seed is fitted on the dense store's frames of every clip outside that seed's val
and test splits, so test videos never shape the projection.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import mean_std
from benchmarks.pca_fidelity import Subset, n_frames
from vidfeat import open_store
from vidfeat.pca import apply_pca_to_store, fit_pca

log = logging.getLogger("benchmarks.pca")
HEADS = ("logistic", "bilstm")
BASELINE = "float32-2048"


def _train(store: Path, cfg, run_dir: Path, split: Path | None = None) -> dict:
    """Train (or, when ``run_dir`` already finished, reuse) one run; returns its test metrics."""
    from heads.checkpoint import TEST_METRICS
    from heads.run import train_run

    done = run_dir / TEST_METRICS
    if done.exists():
        return json.loads(done.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished run from an interrupted benchmark
    return train_run(store, cfg, run_dir, split_file=split)


def _top1(run_dir: Path) -> dict[str, int]:
    from heads.checkpoint import TEST_PREDICTIONS

    with np.load(run_dir / f"{TEST_PREDICTIONS}.npz") as z:
        # The ranking scores order classes without the ties of saturated probabilities.
        scores = z["ranking"] if "ranking" in z else z["scores"]
        return dict(zip(z["video_id"].tolist(), scores.argmax(1).tolist(), strict=True))


def _held_out_ids(split: Path) -> set[str]:
    with split.open() as fh:
        return {row["video_id"] for row in csv.DictReader(fh) if row["split"] != "train"}


def _pca_stores(dense: Path, labelled: Path, work: Path, seed: int, dim: int, split: Path):
    """Yield (features name, store, fit info) for the float32 and uint8 PCA-``dim`` copies."""
    held = _held_out_ids(split)
    with open_store(dense) as reader:
        fit_ids = [v for v in reader.ok_ids if v not in held]
        t0 = time.perf_counter()
        pca = fit_pca(Subset(reader, fit_ids), dim, seed=seed)
        fit = {
            "pca_fit_s": time.perf_counter() - t0,
            "pca_fit_frames": n_frames(reader, fit_ids),
            "pca_fit_clips": len(fit_ids),
            "pca_variance_kept": pca.variance_kept,
        }
    for dtype, quantize in (("float32", False), ("uint8", True)):
        name = f"pca{dim}-{dtype}"
        store = work / f"labelled_{name}_seed{seed}.zarr"
        apply_pca_to_store(labelled, pca, store, quantize=quantize)
        yield name, store, fit


def classification_seed(
    dense: Path, labelled: Path, work: Path, seed: int, dims: list[int], epochs: int
) -> list[dict]:
    """One record per (head, features) of this seed, each compared with float32-2048."""
    from heads.config import TrainConfig

    root = work / "runs" / f"seed{seed}"
    cfgs = {h: TrainConfig(model=h, epochs=epochs, optimizer="adam", seed=seed) for h in HEADS}
    base = {h: _train(labelled, cfgs[h], root / f"{h}_{BASELINE}") for h in HEADS}
    split = root / f"{HEADS[0]}_{BASELINE}" / "split.csv"  # one split for every run of the seed
    records = [
        {"seed": seed, "head": h, "features": BASELINE, **_scores(m, m, root, h, BASELINE)}
        for h, m in base.items()
    ]
    for dim in dims:
        for name, store, fit in _pca_stores(dense, labelled, work, seed, dim, split):
            for head in HEADS:
                m = _train(store, cfgs[head], root / f"{head}_{name}", split=split)
                scores = _scores(m, base[head], root, head, name)
                records.append({"seed": seed, "head": head, "features": name, **scores, **fit})
                log.info(
                    "seed %d %s: hit@1 %.4f %s vs %.4f %s",
                    seed, head, base[head]["hit_at_1"], BASELINE, m["hit_at_1"], name,
                )  # fmt: skip
    return records


def _scores(m: dict, base: dict, root: Path, head: str, name: str) -> dict:
    a, b = _top1(root / f"{head}_{BASELINE}"), _top1(root / f"{head}_{name}")
    return {
        "n_test": m["n_test"],
        "hit_at_1": m["hit_at_1"],
        "gap_at_20": m["gap_at_20"],
        "hit_at_1_loss": base["hit_at_1"] - m["hit_at_1"],
        "top1_agreement": float(np.mean([a[v] == b[v] for v in a])),
        "best_epoch": m.get("best_epoch"),
    }


def summarise(records: list[dict]) -> dict:
    """Per head and features: hit@1 pooled over every seed's test videos, and its loss."""
    out: dict = {}
    for head in dict.fromkeys(r["head"] for r in records):
        for features in dict.fromkeys(r["features"] for r in records):
            rows = [r for r in records if r["head"] == head and r["features"] == features]
            n_test = sum(r["n_test"] for r in rows)

            def pooled(key: str, rows: list[dict] = rows, n_test: int = n_test) -> float:
                return sum(r[key] * r["n_test"] for r in rows) / n_test

            out.setdefault(head, {})[features] = {
                "seeds": len(rows),
                "n_test_predictions": n_test,
                "hit_at_1_pooled": pooled("hit_at_1"),
                "hit_at_1_loss_points": 100 * pooled("hit_at_1_loss"),
                "top1_agreement_pooled": pooled("top1_agreement"),
                "hit_at_1": mean_std([r["hit_at_1"] for r in rows]),
                "gap_at_20": mean_std([r["gap_at_20"] for r in rows]),
            }
    return out


def markdown(summary: dict) -> list[str]:
    lines = [
        "| head | features | test hit@1 | loss vs float32-2048 (points) | same top-1 | GAP@20 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for head, by_features in summary.items():
        for features, m in by_features.items():
            lines.append(
                f"| {head} | {features} | {m['hit_at_1_pooled']:.3f} "
                f"| {m['hit_at_1_loss_points']:+.1f} | {m['top1_agreement_pooled']:.2f} "
                f"| {m['gap_at_20']['mean']:.3f} |"
            )
    return lines
