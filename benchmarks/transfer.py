"""Transfer learning 5 -> 10 classes, and LSTM vs BiLSTM convergence, on one feature store.

The protocol of the source studies, on the demo data by default:

1. ``full``: BiLSTM trained from scratch on all classes (this fixes the train/val/test split
   that every other run reuses, so all test sets are the same videos);
2. ``source``: BiLSTM trained on the first ``--source-classes`` classes (sorted by name);
3. ``transfer_head`` / ``transfer_top`` / ``transfer_all``: ``source`` fine-tuned on all classes,
   training only the classifier / the top block and classifier / everything (finetune defaults);
4. ``lstm``: a unidirectional LSTM from scratch on all classes, to compare convergence.

Each run records test hit@1, the epoch of the best validation loss, the training wall time and
the trainable parameter count, for every seed; the table gives mean ± std over seeds. The runs
of the first seed are drawn by ``heads.report.write_report`` into ``--report-dir``.

    python -m benchmarks.transfer                           # demo/features.zarr (make demo)
    python -m benchmarks.transfer --store feats.zarr --seeds 0 1 2 3 4
    python -m benchmarks.transfer --synthetic               # no demo store: a synthetic one
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, machine_info, mean_std, save_json, work_dir
from heads.config import TrainConfig
from heads.report import write_report
from heads.run import train_run
from heads.synthetic import write_store
from heads.transfer import FINETUNE_LR, finetune_run
from vidfeat.store import open_store

log = logging.getLogger("benchmarks.transfer")
DEMO_STORE = Path("demo/features.zarr")
REPORT_DIR = RESULTS / "transfer_report"
REPORT_RUNS = ("full", "transfer_head", "transfer_top", "lstm")  # keeps the report < 1 MB
TRANSFER_MODES = ("head", "top", "all")
# Demo-like classes: a shape and a colour each; two classes share every shape.
SYNTHETIC_CLASSES = (
    ("red_disc", 0), ("green_disc", 0), ("blue_square", 1), ("yellow_square", 1),
    ("cyan_ring", 2), ("magenta_ring", 2), ("white_stripes", 3), ("orange_stripes", 3),
    ("black_cross", 4), ("purple_cross", 4),
)  # fmt: skip


# --------------------------------------------------------------------------- synthetic store


def write_synthetic_store(
    path: Path,
    *,
    per_class: int = 8,
    dim: int = 2048,
    signal: float = 0.2,
    noise: float = 0.6,
    seed: int = 0,
) -> Path:
    """A store shaped like the demo's: 10 classes of ``per_class`` videos with 3-5 frames of
    non-negative ``dim``-d features (ReLU of a shape pattern + a colour pattern + a per-video
    background + per-frame noise), so classes share structure as real ones do.

    ``signal`` (the patterns' std; noise std is 0.6) sets the difficulty. The class signal is
    spread thinly over all dimensions, which is harder on a frozen encoder than real CNN
    features are: at 0.1 a BiLSTM from scratch still gets ~0.9 test hit@1 but a classifier
    retrained on its 5-class features only ~0.6; at 0.2 about 1.0 and 0.8."""
    rng = np.random.default_rng(seed)
    shape_patterns = rng.normal(0.0, signal, size=(5, dim))
    colour_patterns = rng.normal(0.0, signal, size=(len(SYNTHETIC_CLASSES), dim))
    videos = []
    for c, (name, shape) in enumerate(SYNTHETIC_CLASSES):
        for v in range(per_class):
            n_frames = int(rng.integers(3, 6))
            background = rng.normal(0.3, 0.3, size=dim)  # the scene behind the object
            signal = shape_patterns[shape] + colour_patterns[c] + background
            x = np.maximum(signal + rng.normal(0.0, noise, size=(n_frames, dim)), 0.0)
            videos.append((f"{name}_{v:03d}", x.astype(np.float32), (name,)))
    attrs = {"backbone": "synthetic-demo", "weights": f"seed-{seed}", "pca": None, "fps": 1.0}
    return write_store(path, videos, dim=dim, attrs=attrs)


# --------------------------------------------------------------------------- runs


def _record(name: str, run_dir: Path, metrics: dict) -> dict:
    curve = [
        json.loads(line)["val_hit_at_1"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return {
        "run": name,
        "hit_at_1": metrics.get("hit_at_1"),
        "gap_at_20": metrics.get("gap_at_20"),
        "n_test": metrics["n_test"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "wall_s": metrics["train_wall_s"],
        "trainable_params": metrics["trainable_params"],
        "val_hit_at_1": [None if v is None else round(v, 4) for v in curve],
    }


def run_seed(store: Path, work: Path, seed: int, args: argparse.Namespace) -> list[dict]:
    """All runs of one seed; returns one record per run."""
    with open_store(store) as reader:
        ok = reader.videos[reader.videos["status"] == "ok"]
        classes = sorted({c for labels in ok["labels"] for c in labels})
    source = tuple(classes[: args.source_classes])
    base = TrainConfig(model=args.model, epochs=args.epochs, optimizer="adam", seed=seed)
    root = work / f"seed{seed}"
    records = []

    def timed(name: str, fn, *a, **kw) -> None:
        t0 = time.perf_counter()
        metrics = fn(*a, **kw)
        took_s = time.perf_counter() - t0
        log.info("seed %d %s: hit@1 %.3f (%.1fs)", seed, name, metrics["hit_at_1"], took_s)
        records.append(_record(name, root / name, metrics))

    timed("full", train_run, store, base, root / "full")
    split = root / "full" / "split.csv"  # every later run uses the same split
    source_cfg = base.replace(data=dataclasses.replace(base.data, classes=source))
    timed("source", train_run, store, source_cfg, root / "source", split_file=split)
    for mode in TRANSFER_MODES:
        name = f"transfer_{mode}"
        timed(name, finetune_run, root / "source", store, root / name, mode=mode, split_file=split)
    timed("lstm", train_run, store, base.replace(model="lstm"), root / "lstm", split_file=split)
    return records


# --------------------------------------------------------------------------- summary


def summarise(records: list[dict]) -> dict:
    """Mean and std over seeds of each run's numbers, and transfer / full hit@1 ratios."""
    names = list(dict.fromkeys(r["run"] for r in records))
    keys = ("hit_at_1", "gap_at_20", "best_epoch", "epochs_run", "wall_s", "trainable_params")
    summary = {
        name: {k: mean_std([r[k] for r in records if r["run"] == name]) for k in keys}
        for name in names
    }
    full = {r["seed"]: r["hit_at_1"] for r in records if r["run"] == "full"}
    for mode in TRANSFER_MODES:
        ratios = [
            r["hit_at_1"] / full[r["seed"]]
            for r in records
            if r["run"] == f"transfer_{mode}" and full.get(r["seed"])
        ]
        summary[f"transfer_{mode}"]["ratio_to_full"] = mean_std(ratios)
    return summary


RUN_TITLES = {
    "full": "{model}, all classes from scratch",
    "source": "{model}, source classes only (its own test subset)",
    "transfer_head": "source -> all classes, classifier only (`--train head`)",
    "transfer_top": "source -> all classes, top block + classifier (`--train top`)",
    "transfer_all": "source -> all classes, everything (`--train all`)",
    "lstm": "lstm, all classes from scratch",
}


def markdown(result: dict) -> str:
    def cell(stat: dict, spec: str) -> str:
        if stat["mean"] is None:
            return "-"
        return f"{stat['mean']:{spec}} ± {stat['std']:{spec}}"

    lines = [
        "| run | test hit@1 | / full | epochs to best val loss | wall (s) | trainable params |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, stats in result["summary"].items():
        title = RUN_TITLES.get(name, name).format(model=result["protocol"]["model"])
        ratio = cell(stats["ratio_to_full"], ".2f") if "ratio_to_full" in stats else ""
        lines.append(
            f"| {title} | {cell(stats['hit_at_1'], '.3f')} | {ratio} "
            f"| {cell(stats['best_epoch'], '.1f')} | {cell(stats['wall_s'], '.1f')} "
            f"| {stats['trainable_params']['mean']:,.0f} |"
        )
    p = result["protocol"]
    lines += [
        "",
        f"{p['store_description']}: {p['n_videos']} videos, {p['n_classes']} classes "
        f"(source: {', '.join(p['source_classes'])}); {len(p['seeds'])} seeds, "
        f"at most {p['epochs']} epochs, Adam; fine-tuning lr {p['finetune_lr']}.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _report(work: Path, seed: int, out: Path) -> None:
    """The report of one seed's runs, with plots (kept small: it is committed)."""
    if out.exists():
        shutil.rmtree(out)
    runs = [work / f"seed{seed}" / name for name in REPORT_RUNS]
    write_report(runs, out)
    for png in out.glob("*.png"):
        # Plots use few colours: a 128-colour palette looks the same at a third of the size.
        image = Image.open(png).convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT)
        image.save(png, optimize=True)
    size = sum(f.stat().st_size for f in out.iterdir())
    log.info("report: %s (%.0f KB)", out / "report.md", size / 1024)


def run(args: argparse.Namespace, work: Path) -> dict:
    store, description = args.store, f"store {args.store}"
    if args.synthetic:
        store = write_synthetic_store(work / "synthetic.zarr", signal=args.signal)
        description = f"synthetic demo-like store (2048-d, signal {args.signal})"
    elif not store.exists():
        raise SystemExit(f"{store} not found: run `make demo`, pass --store, or use --synthetic")
    with open_store(store) as reader:
        ok = reader.videos[reader.videos["status"] == "ok"]
        classes = sorted({c for labels in ok["labels"] for c in labels})
        n_videos, dim = len(ok), reader.dim
    t0, load_before = time.perf_counter(), os.getloadavg()
    records = []
    for seed in args.seeds:
        records += [{"seed": seed, **r} for r in run_seed(store, work, seed, args)]
    total_s = time.perf_counter() - t0
    if args.report_dir is not None:
        _report(work, args.seeds[0], args.report_dir)
    return {
        "benchmark": "transfer",
        "machine": machine_info(),
        "protocol": {
            "store": str(store) if not args.synthetic else None,
            "store_description": description,
            "n_videos": n_videos,
            "n_classes": len(classes),
            "dim": dim,
            "model": args.model,
            "source_classes": classes[: args.source_classes],
            "seeds": list(args.seeds),
            "epochs": args.epochs,
            "finetune_lr": FINETUNE_LR,
        },
        "summary": summarise(records),
        "runs": records,
        "total_s": total_s,
        # Wall times are only comparable on an otherwise idle machine: say how busy it was.
        "load_avg_1m": {"start": load_before[0], "end": os.getloadavg()[0]},
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--store", type=Path, default=DEMO_STORE, help="feature store to use")
    ap.add_argument("--synthetic", action="store_true", help="use a synthetic demo-like store")
    ap.add_argument("--signal", type=float, default=0.2, help="synthetic class signal (std)")
    ap.add_argument("--model", default="bilstm", help="head for full, source and transfer runs")
    ap.add_argument("--source-classes", type=int, default=5, help="classes of the source run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--work", type=Path, help="keep the run directories here (default: temp)")
    ap.add_argument("--out", type=Path, default=RESULTS / "transfer.json")
    ap.add_argument("--report-dir", type=Path, default=REPORT_DIR)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    with work_dir(args.work, prefix="heads-transfer-bench-") as work:
        result = run(args, work)
    save_json(args.out, result)
    print(markdown(result))


if __name__ == "__main__":
    main()
