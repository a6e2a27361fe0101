"""Run reports: PNG plots and a Markdown summary (``report.md``) for one or more run directories.

Reads only what a run directory holds (config.json, label_map.json, metrics.jsonl,
test_metrics.json, test_predictions.npz); every file is optional and what is missing is
reported as "—" or left out with a note. Plots use the headless Agg backend.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: must precede the pyplot import

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from heads import metrics
from vidfeat.errors import VidfeatError

log = logging.getLogger(__name__)

MISSING = "—"
MAX_PR_CURVES = 10  # more curves than this make the legend unreadable
MAX_TICK_CLASSES = 50  # confusion axes name classes up to this many
MAX_ANNOTATED_CLASSES = 20  # confusion cells print their value up to this many
_MODEL_KEYS = ("model", "model_name", "head", "head_name", "arch")
DPI = 110


class ReportError(VidfeatError, ValueError):
    """A run directory is missing or holds a file that cannot be read."""


@dataclass
class _Run:
    name: str
    slug: str
    config: dict[str, Any]
    epochs: list[dict[str, Any]]  # one record per epoch, sorted by epoch
    test_metrics: dict[str, Any]
    class_names: list[str]
    multilabel: bool
    scores: np.ndarray | None  # (N, C) float
    labels: np.ndarray | None  # (N, C) binary


# ---------------------------------------------------------------- reading run directories


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


def _read_epochs(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records, last one per epoch (a resumed run may repeat epochs)."""
    if not path.is_file():
        return []
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    by_epoch: dict[Any, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:  # a run killed mid-write leaves a torn last line
                log.warning("%s: ignoring unreadable last line", path)
                continue
            raise ReportError(f"{path}:{i + 1}: invalid JSON: {exc}") from exc
        by_epoch[record.get("epoch", i + 1)] = record
    return [by_epoch[e] for e in sorted(by_epoch, key=lambda e: (not _is_num(e), e))]


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return np.asarray(npz["scores"]), np.asarray(npz["labels"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # A truncated file (a full disk, a copy cut short) is a damaged run, not a bug.
        raise ReportError(f"{path}: cannot read test predictions: {exc}") from exc


def _load_run(run_dir: Path, slug: str) -> _Run:
    if not run_dir.is_dir():
        raise ReportError(f"run directory not found: {run_dir}")
    label_map = _read_json(run_dir / "label_map.json") or {}
    predictions = _read_predictions(run_dir / "test_predictions.npz")
    names = [str(n) for n in label_map.get("labels", [])]
    scores, labels = predictions if predictions else (None, None)
    if scores is not None:
        n_classes = scores.shape[-1]
        if names and len(names) != n_classes:
            raise ReportError(
                f"{run_dir}: label_map.json has {len(names)} labels but "
                f"test_predictions.npz has {n_classes} classes"
            )
        names = names or [f"class_{i}" for i in range(n_classes)]
    multilabel = label_map.get("multilabel")
    if not isinstance(multilabel, bool):
        multilabel = labels is not None and bool((labels.sum(axis=1) != 1).any())
    return _Run(
        name=run_dir.name,
        slug=slug,
        config=_read_json(run_dir / "config.json") or {},
        epochs=_read_epochs(run_dir / "metrics.jsonl"),
        test_metrics=_read_json(run_dir / "test_metrics.json") or {},
        class_names=names,
        multilabel=multilabel,
        scores=scores,
        labels=labels,
    )


def _slugs(run_dirs: list[Path]) -> list[str]:
    slugs: list[str] = []
    for path in run_dirs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name).strip("._") or "run"
        slug, n = base, 2
        while slug in slugs:  # two runs with the same folder name must not overwrite plots
            slug, n = f"{base}_{n}", n + 1
        slugs.append(slug)
    return slugs


# ---------------------------------------------------------------- summary values


def _is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(epochs: list[dict[str, Any]], key: str) -> tuple[list[Any], list[float]]:
    pairs = [(e.get("epoch"), e.get(key)) for e in epochs]
    pairs = [(x, y) for x, y in pairs if _is_num(x) and _is_num(y)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _model_name(config: dict[str, Any], depth: int = 2) -> str | None:
    for key in _MODEL_KEYS:
        if isinstance(config.get(key), str):
            return config[key]
    for key, value in config.items():
        # Store provenance carries the extraction's own attrs, never the head's name.
        if key != "store" and isinstance(value, dict) and depth > 1:
            found = _model_name(value, depth - 1)
            if found:
                return found
    return None


def _best_epoch(epochs: list[dict[str, Any]]) -> Any:
    xs, losses = _series(epochs, "val_loss")
    return xs[int(np.argmin(losses))] if losses else None


def _summary(run: _Run) -> dict[str, Any]:
    # Totals written at the end of training win; metrics.jsonl covers runs that never got there.
    wall = run.test_metrics.get("train_wall_s")
    if not _is_num(wall):
        per_epoch = [e["wall_s"] for e in run.epochs if _is_num(e.get("wall_s"))]
        wall = sum(per_epoch) if per_epoch else None
    params = run.test_metrics.get("trainable_params")
    if not _is_num(params):
        logged = [e["trainable_params"] for e in run.epochs if _is_num(e.get("trainable_params"))]
        params = logged[-1] if logged else run.config.get("trainable_params")
    return {
        "model": _model_name(run.config),
        "hit_at_1": run.test_metrics.get("hit_at_1"),
        "gap_at_20": run.test_metrics.get("gap_at_20"),
        "mean_ap": run.test_metrics.get("mean_ap"),
        "best_epoch": _best_epoch(run.epochs),
        "wall_s": wall,
        "trainable_params": params,
    }


def _fmt(value: object, spec: str = ".4f") -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


# ---------------------------------------------------------------- plots


def _save(fig: plt.Figure, path: Path) -> None:
    # Render under a temporary name so an interrupted report never leaves a truncated PNG.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _plot_training(run: _Run, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    best = _best_epoch(run.epochs)
    for ax, metric, ylabel in ((axes[0], "hit_at_1", "hit@1"), (axes[1], "loss", "loss")):
        for split in ("train", "val"):
            xs, ys = _series(run.epochs, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=split)
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best ({best})")
        ax.set(title=f"{ylabel} per epoch", xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{run.name}: training curves (best = min val loss)")
    _save(fig, path)


def _confusion_panel(ax: plt.Axes, matrix: np.ndarray, names: list[str], title: str) -> None:
    n = len(names)
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    if n <= MAX_TICK_CLASSES:
        ax.set_xticks(
            range(n), labels=names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8
        )
        ax.set_yticks(range(n), labels=names, fontsize=8)
    if n <= MAX_ANNOTATED_CLASSES:
        is_int = np.issubdtype(matrix.dtype, np.integer)
        for (i, j), v in np.ndenumerate(matrix):
            colour = "white" if v > matrix.max() / 2 else "black"
            text = str(v) if is_int else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7)


def _plot_confusion(run: _Run, cm: np.ndarray, path: Path) -> None:
    side = float(np.clip(0.3 * len(run.class_names) + 3.5, 5, 10))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    row_sums = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)
    _confusion_panel(axes[0], cm, run.class_names, "counts")
    _confusion_panel(axes[1], normalised, run.class_names, "row-normalised (recall per class)")
    note = "" if len(run.class_names) <= MAX_TICK_CLASSES else ", class names omitted"
    fig.suptitle(f"{run.name}: test confusion matrix ({len(run.class_names)} classes{note})")
    _save(fig, path)


def _plot_pr_curves(
    run: _Run, scores: np.ndarray, labels: np.ndarray, stats: metrics.ClassStats, path: Path
) -> None:
    with_pos = [c for c in np.argsort(-stats.support, kind="stable") if stats.support[c] > 0]
    shown = with_pos[:MAX_PR_CURVES]
    fig, ax = plt.subplots(figsize=(10, 6))
    for c in shown:
        precision, recall = metrics.precision_recall_curve(scores[:, c], labels[:, c])
        label = f"{run.class_names[c]} (AP {stats.ap[c]:.3f}, n={stats.support[c]})"
        # Points where recall rises, drawn steps-pre: each step's area sums to the AP exactly.
        rises = np.concatenate([[True], np.diff(recall) > 0])
        ax.plot(recall[rises], precision[rises], drawstyle="steps-pre", linewidth=1.2, label=label)
    scope = f"top {len(shown)} of {len(with_pos)}" if len(with_pos) > len(shown) else "all"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title(f"{run.name}: precision–recall, {scope} classes with positives by support")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def _plot_comparison(runs: list[_Run], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, ylabel in (
        (axes[0], "val_hit_at_1", "val hit@1"),
        (axes[1], "val_loss", "val loss"),
    ):
        for run in runs:
            xs, ys = _series(run.epochs, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=run.name)
        ax.set(title=f"{ylabel} per epoch", xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Validation curves of {len(runs)} runs")
    _save(fig, path)


# ---------------------------------------------------------------- Markdown


def _comparison_table(runs: list[_Run]) -> list[str]:
    header = ["run", "model", "test hit@1", "GAP@20", "mAP", "best epoch (min val loss)"]
    header += ["train wall time (s)", "trainable params"]
    rows = []
    for run in runs:
        s = _summary(run)
        params = s["trainable_params"]
        rows.append(
            [
                run.name,
                _fmt(s["model"]),
                *(_fmt(s[k]) for k in ("hit_at_1", "gap_at_20", "mean_ap", "best_epoch")),
                _fmt(s["wall_s"], ".1f"),
                f"{params:,}" if isinstance(params, int) else _fmt(params),
            ]
        )
    return _table(header, rows)


def _class_table(run: _Run, stats: metrics.ClassStats) -> list[str]:
    rule = "score ≥ 0.5 (multi-label)" if run.multilabel else "argmax (single-label)"
    rows = [
        [name, _fmt(float(p)), _fmt(float(r)), _fmt(float(ap)), str(int(n))]
        for name, p, r, ap, n in zip(
            run.class_names, stats.precision, stats.recall, stats.ap, stats.support, strict=True
        )
    ]
    intro = f"Precision and recall at {rule}; AP over the full ranking (nan: no positives)."
    return [intro, "", *_table(["class", "precision", "recall", "AP", "support"], rows)]


def _run_section(run: _Run, out_dir: Path) -> list[str]:
    lines = [f"## Run `{run.name}`", ""]
    keys = ["hit_at_1", "top5", "gap_at_20", "mean_ap", "perr", "n_test"]
    lines += _table(keys, [[_fmt(run.test_metrics.get(k)) for k in keys]])
    if run.epochs:
        _plot_training(run, out_dir / f"{run.slug}_training.png")
        lines += [f"![Training curves]({run.slug}_training.png)", ""]
    else:
        lines += ["_No metrics.jsonl: training curves omitted._", ""]
    scores, labels = run.scores, run.labels
    if scores is None or labels is None:
        return [*lines, "_No test_predictions.npz: per-class results omitted._", ""]
    stats = metrics.per_class_precision_recall(scores, labels, multilabel=run.multilabel)
    if not run.multilabel:
        cm = metrics.confusion_matrix(scores, labels)
        _plot_confusion(run, cm, out_dir / f"{run.slug}_confusion.png")
        lines += [f"![Confusion matrix]({run.slug}_confusion.png)", ""]
    if (stats.support > 0).any():
        _plot_pr_curves(run, scores, labels, stats, out_dir / f"{run.slug}_pr_curves.png")
        lines += [f"![Precision-recall curves]({run.slug}_pr_curves.png)", ""]
    return lines + _class_table(run, stats)


def write_report(run_dirs: list[Path], out_dir: Path) -> Path:
    """Write plots and ``report.md`` for ``run_dirs`` into ``out_dir``; return the report path."""
    if not run_dirs:
        raise ReportError("no run directories given")
    run_dirs = [Path(p) for p in run_dirs]
    out_dir = Path(out_dir)
    runs = [_load_run(p, slug) for p, slug in zip(run_dirs, _slugs(run_dirs), strict=True)]
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Run report", "", "## Summary", "", *_comparison_table(runs)]
    if len(runs) > 1:
        _plot_comparison(runs, out_dir / "comparison_val_curves.png")
        lines += ["![Validation curves of all runs](comparison_val_curves.png)", ""]
    for run in runs:
        lines += _run_section(run, out_dir)
    report = out_dir / "report.md"
    tmp = out_dir / ".report.md.tmp"
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, report)
    log.info("wrote report for %d run(s) to %s", len(runs), report)
    return report
