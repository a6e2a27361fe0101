"""Report figures, drawn for print: PNG, PDF or SVG at a chosen resolution, integer ticks on
counts, empty confusion cells left blank, one precision-recall panel per class. Each function
takes plain values (names, records, arrays) and writes one file atomically."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: must precede the pyplot import

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from heads import metrics
from heads.errors import ReportError
from vidfeat import atomic

FIGURE_FORMATS = ("png", "pdf", "svg")
DPI = 150
MAX_PR_PANELS = 16  # per-class precision-recall panels (classes with most positives first)
MAX_TICK_CLASSES = 50  # confusion axes name classes up to this many
MAX_ANNOTATED_CLASSES = 20  # confusion cells print their value up to this many
# Beyond MAX_TICK_CLASSES a full matrix is a scatter of sub-pixel cells: the matrix is drawn
# for this many classes, those with the most errors.
MAX_CONFUSED_CLASSES = 20
MAX_LABEL_CHARS = 28  # longer class names are cut in figures (report.md keeps them whole)
METRIC_LABELS = {
    "hit_at_1": "hit@1",
    "loss": "loss",
    "gap_at_20": "GAP@20",
    "mean_ap": "mAP",
    "top5": "top-5",
    "perr": "PERR",
}
_MARKERS = "osD^v<>ph*"  # one per run, so a run's lone point is not hidden under another's


def _plain_text(plot: Callable[..., None]) -> Callable[..., None]:
    """Draw ``plot``'s figure with class and run names as plain text: matplotlib would read a
    label such as ``US$ 5 $bill`` as mathtext (and fail on ``$\\x$``). A name in a script the
    font lacks (CJK) draws as boxes, without matplotlib's warning per missing glyph."""

    @functools.wraps(plot)
    def draw(*args: Any, **kwargs: Any) -> None:
        with matplotlib.rc_context({"text.parse_math": False}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            plot(*args, **kwargs)

    return draw


def short(name: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``name`` cut to ``limit`` characters: one long class name squeezed whole figures."""
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "…"


def _integer_x(ax: plt.Axes) -> None:
    # min_n_ticks=1: with a single evaluation, MaxNLocator found fewer than two integers in
    # range and fell back to ticks at 0.95, 0.96, ...
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def is_num(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(
    records: list[dict[str, Any]], key: str, x: str = "epoch"
) -> tuple[list[Any], list[float]]:
    """(x, values) of ``key`` over metrics records, where both are finite numbers; ``x`` is
    ``epoch`` or ``step``."""
    pairs = [(e.get(x), e.get(key)) for e in records]
    pairs = [(x, y) for x, y in pairs if is_num(x) and is_num(y)]
    return [x for x, _ in pairs], [y for _, y in pairs]


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


def _per(x: str) -> str:
    return "per evaluation" if x == "step" else "per epoch"


def curve_metrics(records: list[dict[str, Any]], monitor: str) -> list[str]:
    """Metrics a training figure shows: hit@1 and loss, the metric early stopping watched,
    and GAP@20 (YouTube-8M's headline) when the records hold it."""
    shown = ["hit_at_1", "loss"]
    watched = monitor.removeprefix("val_").removeprefix("train_")
    for metric in (watched, "gap_at_20"):
        has = any(is_num(r.get(f"val_{metric}")) for r in records)
        if metric not in shown and metric in METRIC_LABELS and has:
            shown.append(metric)
    return shown


@_plain_text
def plot_training(
    name: str,
    records: list[dict[str, Any]],
    best: Any,
    monitor: str,
    path: Path,
    spec: FigureSpec,
    x: str = "epoch",
) -> None:
    """One panel per metric of :func:`curve_metrics` at each evaluation, train and val, against
    ``x`` (``epoch`` or ``step``), with the best evaluation marked."""
    shown = curve_metrics(records, monitor)
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], shown, strict=True):
        ylabel = METRIC_LABELS[metric]
        for split in ("train", "val"):
            xs, ys = series(records, f"{split}_{metric}", x)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=split)
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best ({best})")
        watched = " (early stopping)" if monitor.endswith(metric) else ""
        ax.set(title=f"{ylabel} {_per(x)}{watched}", xlabel=x, ylabel=ylabel)
        _integer_x(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{name}: training curves (best {x} by {monitor})")
    _save(fig, path, spec)


def _confusion_panel(
    ax: plt.Axes, matrix: np.ndarray, rows: list[str], cols: list[str], title: str, *, counts: bool
) -> None:
    """Counts: integer colour-bar ticks. Rates: empty cells (no video) stay blank, so the eye
    goes to the errors that happened rather than to a grid of zeros."""
    shown = matrix if counts else np.ma.masked_where(~(matrix > 0), matrix)
    cmap = plt.get_cmap("Blues").with_extremes(bad="white")
    image = ax.imshow(shown, cmap=cmap, interpolation="nearest", vmin=0)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if counts:
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    ax.set(title=title, xlabel="predicted", ylabel="true")
    if len(rows) <= MAX_TICK_CLASSES:
        size = 8 if len(cols) <= 25 else 6  # 50 names at 8 pt overlapped their neighbours
        ax.set_xticks(
            range(len(cols)),
            labels=[short(c) for c in cols],
            rotation=45,
            ha="right",
            rotation_mode="anchor",
            fontsize=size,
        )
        ax.set_yticks(range(len(rows)), labels=[short(r) for r in rows], fontsize=size)
    if len(rows) <= MAX_ANNOTATED_CLASSES:
        top = np.nanmax(matrix) if np.isfinite(matrix).any() else 1.0
        for (i, j), v in np.ndenumerate(matrix):
            if not counts and not v > 0:
                continue
            colour = "white" if v > top / 2 else "black"
            text = str(int(v)) if counts else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7)


def most_confused(cm: np.ndarray, k: int = MAX_CONFUSED_CLASSES) -> np.ndarray:
    """Indices of the ``k`` classes most involved in errors (as true or as predicted class;
    ties by support, then index), in class order."""
    errors = cm.sum(axis=0) + cm.sum(axis=1) - 2 * np.diag(cm)
    order = np.lexsort((np.arange(len(cm)), -cm.sum(axis=1), -errors))
    return np.sort(order[:k])


@_plain_text
def plot_confusion(
    name: str, cm: np.ndarray, class_names: list[str], path: Path, spec: FigureSpec
) -> None:
    """Counts and row-normalised rates side by side. Above ``MAX_TICK_CLASSES`` classes, only
    the ``MAX_CONFUSED_CLASSES`` classes with the most errors, and a column for predictions of
    any other class, so that each row still sums to its class's test videos."""
    n = len(class_names)
    row_sums = cm.sum(axis=1, keepdims=True)
    rows, cols, matrix = list(class_names), list(class_names), cm
    scope = f"{n} classes"
    if n > MAX_TICK_CLASSES:
        keep = most_confused(cm)
        rows = [class_names[i] for i in keep]
        cols = [*rows, "(any other class)"]
        inner = cm[np.ix_(keep, keep)]
        matrix = np.column_stack([inner, cm[keep].sum(axis=1) - inner.sum(axis=1)])
        row_sums = row_sums[keep]
        scope = f"the {len(keep)} of {n} classes with the most errors"
    side = float(np.clip(0.24 * len(cols) + 3.5, 5, 15.5))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    normalised = np.divide(matrix, row_sums, out=np.full(matrix.shape, np.nan), where=row_sums > 0)
    _confusion_panel(axes[0], matrix, rows, cols, "counts", counts=True)
    title = "row-normalised (recall per class)"
    _confusion_panel(axes[1], normalised, rows, cols, title, counts=False)
    fig.suptitle(f"{name}: test confusion matrix ({scope})")
    _save(fig, path, spec)


@_plain_text
def plot_pr_curves(
    name: str,
    class_names: list[str],
    classes: metrics.ClassRanks,
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
        # Points where recall rises, drawn steps-pre: each step's area sums to the AP exactly.
        precision, recall = classes.curve(c)
        ax.plot(recall, precision, drawstyle="steps-pre", linewidth=1.4)
        ax.axhline(stats.support[c] / classes.n, color="grey", linestyle="--", linewidth=0.8)
        title = f"{short(class_names[c])}\nAP {stats.ap[c]:.3f}, n={stats.support[c]}"
        ax.set_title(title, fontsize=8)
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
    fig.suptitle(f"{name}: precision–recall, {scope} classes with positives by support")
    _save(fig, path, spec)


@_plain_text
def plot_comparison(
    runs: list[tuple[str, list[dict[str, Any]]]], path: Path, spec: FigureSpec, x: str = "epoch"
) -> None:
    """Validation curves of several runs, given as (name, metrics records), against ``x``:
    hit@1, loss, and GAP@20 when a run logged it."""
    shown = ["hit_at_1", "loss"]
    if any(is_num(r.get("val_gap_at_20")) for _, records in runs for r in records):
        shown.append("gap_at_20")
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    drawn = set()
    for ax, metric in zip(axes[0], shown, strict=True):
        ylabel = f"val {METRIC_LABELS[metric]}"
        for i, (run_name, records) in enumerate(runs):
            xs, ys = series(records, f"val_{metric}", x)
            if xs:
                marker = _MARKERS[i % len(_MARKERS)]
                ax.plot(xs, ys, marker=marker, markersize=4, label=run_name)
                drawn.add(i)
        ax.set(title=f"{ylabel} {_per(x)}", xlabel=x, ylabel=ylabel)
        _integer_x(ax)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    missing = [name for i, (name, _) in enumerate(runs) if i not in drawn]
    note = f"; no validation records: {', '.join(missing)}" if missing else ""
    fig.suptitle(f"Validation curves of {len(drawn)} runs{note}")
    _save(fig, path, spec)
