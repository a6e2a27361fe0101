"""Run reports: figures and a Markdown summary (``report.md``) for one or more run directories.

Reads only what a run directory holds, by the file names the trainer writes
(:mod:`heads.checkpoint`): config.json, label_map.json, metrics.jsonl, test_metrics.json,
test_predictions.npz. Every file is optional and what is missing is reported as "—" or left out
with a note. The best epoch is the trainer's (the epoch its best checkpoint holds), never
recomputed. Figures are PNG, PDF or SVG at a chosen resolution, drawn for print: integer ticks
on counts, empty confusion cells left blank, one precision-recall panel per class.
"""

from __future__ import annotations

import json
import logging
import math
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

from heads import checkpoint as ck
from heads import metrics
from heads.errors import ReportError
from vidfeat import atomic

log = logging.getLogger(__name__)

MISSING = "—"
MAX_PR_PANELS = 16  # per-class precision-recall panels (classes with most positives first)
MAX_TICK_CLASSES = 50  # confusion axes name classes up to this many
MAX_ANNOTATED_CLASSES = 20  # confusion cells print their value up to this many
_RUN_MARKERS = (ck.CONFIG, ck.METRICS, ck.TEST_METRICS)
_MODEL_KEYS = ("model", "model_name", "head", "head_name", "arch")
FIGURE_FORMATS = ("png", "pdf", "svg")
DPI = 150


@dataclass
class _Run:
    name: str
    slug: str
    config: dict[str, Any]
    epochs: list[dict[str, Any]]  # one record per epoch, sorted by epoch
    logged_best: Any  # the last epoch metrics.jsonl marks as improved
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


def _read_epochs(path: Path) -> tuple[list[dict[str, Any]], Any]:
    """metrics.jsonl records, last one per epoch (a resumed run may repeat epochs), and the
    epoch of the last record the trainer marked ``improved`` (its best checkpoint)."""
    if not path.is_file():
        return [], None
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    by_epoch: dict[Any, dict[str, Any]] = {}
    best = None
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:  # a run killed mid-write leaves a torn last line
                log.warning("%s: ignoring unreadable last line", path)
                continue
            raise ReportError(f"{path}:{i + 1}: invalid JSON: {exc}") from exc
        by_epoch[record.get("epoch", i + 1)] = record
        if record.get("improved") is True:
            best = record.get("epoch")
    return [by_epoch[e] for e in sorted(by_epoch, key=lambda e: (not _is_num(e), e))], best


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return np.asarray(npz["scores"]), np.asarray(npz["labels"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ReportError(f"{path}: cannot read test predictions: {exc}") from exc


def _load_run(run_dir: Path, slug: str) -> _Run:
    if not run_dir.is_dir():
        raise ReportError(f"run directory not found: {run_dir}")
    if not any((run_dir / name).is_file() for name in _RUN_MARKERS):
        raise ReportError(f"{run_dir} is not a heads run directory (no {ck.CONFIG})")
    label_map = _read_json(run_dir / ck.LABEL_MAP) or {}
    epochs, logged_best = _read_epochs(run_dir / ck.METRICS)
    predictions = _read_predictions(run_dir / f"{ck.TEST_PREDICTIONS}.npz")
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
        config=_read_json(run_dir / ck.CONFIG) or {},
        epochs=epochs,
        logged_best=logged_best,
        test_metrics=_read_json(run_dir / ck.TEST_METRICS) or {},
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


def _best_epoch(run: _Run) -> Any:
    """The trainer's best epoch: from test_metrics.json, else the last record it marked as an
    improvement (a run still training)."""
    best = run.test_metrics.get("best_epoch")
    return best if _is_num(best) else run.logged_best


def _monitor(run: _Run) -> str:
    return str(run.config.get("monitor") or "val_loss")


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
        "best_epoch": _best_epoch(run),
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


@dataclass(frozen=True)
class FigureSpec:
    """How figures are written: file format (png, pdf, svg) and raster resolution."""

    fmt: str = "png"
    dpi: int = DPI

    def __post_init__(self) -> None:
        if self.fmt not in FIGURE_FORMATS:
            raise ReportError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}")
        if isinstance(self.dpi, bool) or not isinstance(self.dpi, int) or self.dpi < 10:
            raise ReportError(f"dpi must be an integer >= 10, got {self.dpi!r}")

    def name(self, stem: str) -> str:
        return f"{stem}.{self.fmt}"


def _save(fig: plt.Figure, path: Path, spec: FigureSpec) -> None:
    # Rendered under a temporary name: an interrupted report never leaves a truncated figure.
    try:
        fig.tight_layout()
        with atomic.atomic_path(path, durable=False) as tmp:
            fig.savefig(tmp, format=spec.fmt, dpi=spec.dpi)
    finally:
        plt.close(fig)


def _plot_training(run: _Run, path: Path, spec: FigureSpec) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    best = _best_epoch(run)
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
    fig.suptitle(f"{run.name}: training curves (best epoch by {_monitor(run)})")
    _save(fig, path, spec)


def _confusion_panel(
    ax: plt.Axes, matrix: np.ndarray, names: list[str], title: str, *, counts: bool
) -> None:
    """Counts: integer colour-bar ticks. Rates: empty cells (no video) stay blank, so the eye
    goes to the errors that happened rather than to a grid of zeros."""
    n = len(names)
    shown = matrix if counts else np.ma.masked_where(~(matrix > 0), matrix)
    cmap = plt.get_cmap("Blues").with_extremes(bad="white")
    image = ax.imshow(shown, cmap=cmap, interpolation="nearest", vmin=0)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if counts:
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    ax.set(title=title, xlabel="predicted", ylabel="true")
    if n <= MAX_TICK_CLASSES:
        ax.set_xticks(
            range(n), labels=names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8
        )
        ax.set_yticks(range(n), labels=names, fontsize=8)
    if n <= MAX_ANNOTATED_CLASSES:
        top = np.nanmax(matrix) if np.isfinite(matrix).any() else 1.0
        for (i, j), v in np.ndenumerate(matrix):
            if not counts and not v > 0:
                continue
            colour = "white" if v > top / 2 else "black"
            text = str(int(v)) if counts else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7)


def _plot_confusion(run: _Run, cm: np.ndarray, path: Path, spec: FigureSpec) -> None:
    side = float(np.clip(0.3 * len(run.class_names) + 3.5, 5, 10))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    row_sums = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, row_sums, out=np.full(cm.shape, np.nan), where=row_sums > 0)
    _confusion_panel(axes[0], cm, run.class_names, "counts", counts=True)
    title = "row-normalised (recall per class)"
    _confusion_panel(axes[1], normalised, run.class_names, title, counts=False)
    note = "" if len(run.class_names) <= MAX_TICK_CLASSES else ", class names omitted"
    fig.suptitle(f"{run.name}: test confusion matrix ({len(run.class_names)} classes{note})")
    _save(fig, path, spec)


def _plot_pr_curves(
    run: _Run,
    scores: np.ndarray,
    labels: np.ndarray,
    stats: metrics.ClassStats,
    path: Path,
    spec: FigureSpec,
) -> None:
    """One small panel per class: overlapping curves in one axes are unreadable once a few
    classes are near-perfect. The dashed line is the class's prevalence (a random ranking)."""
    with_pos = [c for c in np.argsort(-stats.support, kind="stable") if stats.support[c] > 0]
    shown = with_pos[:MAX_PR_PANELS]
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols + 0.4, 2.5 * rows + 0.6), sharex=True, sharey=True
    )
    axes = np.atleast_1d(axes).ravel()
    for ax, c in zip(axes, shown, strict=False):
        precision, recall = metrics.precision_recall_curve(scores[:, c], labels[:, c])
        # Points where recall rises, drawn steps-pre: each step's area sums to the AP exactly.
        rises = np.concatenate([[True], np.diff(recall) > 0])
        ax.plot(recall[rises], precision[rises], drawstyle="steps-pre", linewidth=1.4)
        ax.axhline(stats.support[c] / len(labels), color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(
            f"{run.class_names[c]}\nAP {stats.ap[c]:.3f}, n={stats.support[c]}", fontsize=8
        )
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    for col in range(cols):  # the lowest panel of each column carries the recall axis
        ax = axes[max(i for i in range(col, len(shown), cols))]
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("recall")
    for ax in axes[::cols]:
        ax.set_ylabel("precision")
    scope = f"top {len(shown)} of {len(with_pos)}" if len(with_pos) > len(shown) else "all"
    fig.suptitle(f"{run.name}: precision–recall, {scope} classes with positives by support")
    _save(fig, path, spec)


def _plot_comparison(runs: list[_Run], path: Path, spec: FigureSpec) -> None:
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
    _save(fig, path, spec)


# ---------------------------------------------------------------- Markdown


def _comparison_table(runs: list[_Run]) -> list[str]:
    header = ["run", "model", "test hit@1", "GAP@20", "mAP", "best epoch"]
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


def _run_section(run: _Run, out_dir: Path, spec: FigureSpec) -> list[str]:
    lines = [f"## Run `{run.name}`", ""]
    keys = ["hit_at_1", "top5", "gap_at_20", "mean_ap", "perr", "n_test"]
    lines += _table(keys, [[_fmt(run.test_metrics.get(k)) for k in keys]])
    if run.epochs:
        name = spec.name(f"{run.slug}_training")
        _plot_training(run, out_dir / name, spec)
        lines += [f"![Training curves]({name})", ""]
    else:
        lines += [f"_No {ck.METRICS}: training curves omitted._", ""]
    scores, labels = run.scores, run.labels
    if scores is None or labels is None:
        return [*lines, f"_No {ck.TEST_PREDICTIONS}.npz: per-class results omitted._", ""]
    stats = metrics.per_class_precision_recall(scores, labels, multilabel=run.multilabel)
    if not run.multilabel:
        cm = metrics.confusion_matrix(scores, labels)
        name = spec.name(f"{run.slug}_confusion")
        _plot_confusion(run, cm, out_dir / name, spec)
        lines += [f"![Confusion matrix]({name})", ""]
    if (stats.support > 0).any():
        name = spec.name(f"{run.slug}_pr_curves")
        _plot_pr_curves(run, scores, labels, stats, out_dir / name, spec)
        lines += [f"![Precision-recall curves]({name})", ""]
    return lines + _class_table(run, stats)


def write_report(run_dirs: list[Path], out_dir: Path, *, fmt: str = "png", dpi: int = DPI) -> Path:
    """Write figures (``fmt``: png, pdf or svg, at ``dpi``) and ``report.md`` for ``run_dirs``
    into ``out_dir``; return the report path."""
    spec = FigureSpec(fmt, dpi)
    if not run_dirs:
        raise ReportError("no run directories given")
    run_dirs = [Path(p) for p in run_dirs]
    out_dir = Path(out_dir)
    runs = [_load_run(p, slug) for p, slug in zip(run_dirs, _slugs(run_dirs), strict=True)]
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Run report", "", "## Summary", "", *_comparison_table(runs)]
    if len(runs) > 1:
        name = spec.name("comparison_val_curves")
        _plot_comparison(runs, out_dir / name, spec)
        lines += [f"![Validation curves of all runs]({name})", ""]
    for run in runs:
        lines += _run_section(run, out_dir, spec)
    report = out_dir / "report.md"
    atomic.write_text(report, "\n".join(lines), durable=False)
    log.info("wrote report for %d run(s) to %s", len(runs), report)
    return report
