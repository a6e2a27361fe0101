"""Run reports: figures and a Markdown summary (``report.md``) for one or more run directories.

Reads only what a run directory holds, by the file names the trainer writes
(:mod:`heads.checkpoint`): config.json, label_map.json, metrics.jsonl, test_metrics.json,
test_predictions.npz. Every file is optional and what is missing is reported as "—" or left out
with a note. The best epoch is the trainer's (the epoch its best checkpoint holds), never
recomputed. Figures are drawn by :mod:`heads.figures`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heads import checkpoint as ck
from heads import metrics
from heads.config import METRICS as METRIC_NAMES
from heads.errors import ReportError
from heads.figures import (
    DPI,
    MAX_TICK_CLASSES,
    FigureSpec,
    is_num,
    plot_comparison,
    plot_confusion,
    plot_pr_curves,
    plot_training,
)
from heads.labels import multilabel_loss
from heads.predictions import npz_arrays, row_blocks
from vidfeat import atomic

log = logging.getLogger(__name__)

MISSING = "—"
# A training run has all three, an ensemble (heads ensemble) test_metrics.json alone.
RUN_FILES = (ck.CONFIG, ck.METRICS, ck.TEST_METRICS)
_MODEL_KEYS = ("model", "model_name", "head", "head_name", "arch")


@dataclass
class _Run:
    name: str
    slug: str
    config: dict[str, Any]
    evaluations: list[dict[str, Any]]  # metrics.jsonl's records, in order
    logged_best: dict[str, Any] | None  # the last record metrics.jsonl marks as improved
    test_metrics: dict[str, Any]
    class_names: list[str]
    multilabel: bool
    classes: metrics.ClassRanks | None  # per-class results of test_predictions.npz


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


def _read_evaluations(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """metrics.jsonl records in order, the last one per (epoch, step) (a run resumed by an
    older version may repeat some), and the last record the trainer marked ``improved`` (its
    best checkpoint)."""
    by_key: dict[tuple[Any, Any], dict[str, Any]] = {}
    best = None
    for i, record in enumerate(ck.read_jsonl(path)):
        # Step-based runs (--eval-every) evaluate several times per epoch: the step tells apart.
        by_key[(record.get("epoch", i + 1), record.get("step"))] = record
        if record.get("improved") is True:
            best = record
    order = sorted(by_key, key=lambda k: tuple((not is_num(v), v if is_num(v) else 0) for v in k))
    return [by_key[k] for k in order], best


def _x_axis(runs: list[_Run]) -> str:
    """``step`` when some run evaluated more than once per epoch and every record has its
    step (curves per epoch would drop those points), else ``epoch``."""
    records = [r for run in runs for r in run.evaluations]
    if not records or not all(is_num(r.get("step")) for r in records):
        return "epoch"
    per_epoch = [Counter(r.get("epoch") for r in run.evaluations) for run in runs]
    return "step" if any(n > 1 for counts in per_epoch for n in counts.values()) else "epoch"


def _read_predictions(path: Path) -> tuple[metrics.ClassRanks, list[str]] | None:
    """Per-class results (both passes done) and class names ([] when the file has none) of a
    test_predictions.npz, read a block of rows at a time: at YouTube-8M's scale each (N, C)
    array is gigabytes. Files written before ranking scores were saved rank by the scores."""
    if not path.is_file():
        return None
    try:
        with contextlib.ExitStack() as held:
            arrays = npz_arrays(path, ("scores", "ranking", "labels", "class_names"), held=held)
            names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else []
            scores, labels = arrays["scores"], arrays["labels"]
            ranking = arrays.get("ranking", scores)
            shapes = [np.shape(a) for a in (scores, ranking, labels)]
            if any(len(shape) != 2 for shape in shapes):
                raise ValueError(f"scores, ranking and labels must be 2-D (N, C), got {shapes}")
            if len(set(shapes)) != 1:
                raise ValueError(f"scores, ranking and labels differ in shape: {shapes}")
            n, n_classes = np.shape(scores)
            if not n:
                raise ValueError("it holds no test video")
            classes = metrics.ClassRanks(n_classes)
            for rows in row_blocks(n, n_classes):
                classes.count(scores[rows], ranking[rows], labels[rows])
            # The ranking alone: blocks 8 times larger spread the per-class work of a block
            # (a loop over the classes) over more rows, at 32 MB of float32 a block.
            for rows in row_blocks(n, n_classes, factor=8):
                classes.rank(ranking[rows])
            return classes, names
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # A truncated file (a full disk, a copy cut short) is a damaged run, not a bug.
        raise ReportError(f"{path}: cannot read test predictions: {exc}") from exc


def _load_run(run_dir: Path, slug: str, name: str) -> _Run:
    if not run_dir.is_dir():
        raise ReportError(f"run directory not found: {run_dir}")
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise ReportError(
            f"{run_dir} is neither a heads run nor an ensemble (none of {', '.join(RUN_FILES)})"
        )
    label_map = _read_json(run_dir / ck.LABEL_MAP) or {}
    evaluations, logged_best = _read_evaluations(run_dir / ck.METRICS)
    predictions = _read_predictions(run_dir / f"{ck.TEST_PREDICTIONS}.npz")
    classes, saved_names = predictions if predictions else (None, [])
    names = [str(n) for n in label_map.get("labels", [])] or saved_names
    if classes is not None:
        n_classes = classes.n_classes
        if names and len(names) != n_classes:
            raise ReportError(
                f"{run_dir}: label_map.json has {len(names)} labels but "
                f"test_predictions.npz has {n_classes} classes"
            )
        names = names or [f"class_{i}" for i in range(n_classes)]
    multilabel = label_map.get("multilabel")
    if not isinstance(multilabel, bool):
        multilabel = classes is not None and not classes.single_label
    config = _read_json(run_dir / ck.CONFIG) or {}
    # Which rule turns scores into decisions follows the outputs the run trained (--loss
    # single gives softmax scores even on multi-label data), not the data alone.
    multilabel = multilabel_loss(str(config.get("loss", "auto")), multilabel)
    return _Run(
        name=name,
        slug=slug,
        config=config,
        evaluations=evaluations,
        logged_best=logged_best,
        test_metrics=_read_json(run_dir / ck.TEST_METRICS) or {},
        class_names=names,
        multilabel=multilabel,
        classes=classes,
    )


def _display_names(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name, with as many parent folders as it takes to tell apart runs of
    the same name (``exp1/bilstm``, ``exp2/bilstm``)."""
    # absolute(), not resolve(): a run reached through a symlink keeps the name it was given.
    parts = [Path(p).absolute().parts[1:] or ("run",) for p in run_dirs]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        seen = Counter(names)
        clash = [i for i, n in enumerate(names) if seen[n] > 1 and depth[i] < len(parts[i])]
        if not clash:
            return names
        for i in clash:
            depth[i] += 1


def _slugs(names: list[str]) -> list[str]:
    """File-name stems of the runs' figures, from their display names."""
    slugs: list[str] = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"
        slug, n = base, 2
        while slug in slugs:  # names alike once file-safe (or a run given twice) keep apart
            slug, n = f"{base}_{n}", n + 1
        slugs.append(slug)
    return slugs


# ---------------------------------------------------------------- summary values


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


def _best_at(run: _Run, x: str = "epoch") -> Any:
    """The trainer's best evaluation, as its epoch or its step (``x``): from test_metrics.json,
    else the last record it marked as an improvement (a run still training)."""
    best = run.test_metrics.get(f"best_{x}")
    if is_num(best):
        return best
    return run.logged_best.get(x) if run.logged_best else None


def _monitor(run: _Run) -> str:
    return str(run.config.get("monitor") or "val_loss")


def _summary(run: _Run) -> dict[str, Any]:
    # Totals written at the end of training win; metrics.jsonl covers runs that never got there.
    wall = run.test_metrics.get("train_wall_s")
    if not is_num(wall):
        per_epoch = [e["wall_s"] for e in run.evaluations if is_num(e.get("wall_s"))]
        wall = sum(per_epoch) if per_epoch else None
    params = run.test_metrics.get("trainable_params")
    if not is_num(params):
        counts = [r.get("trainable_params") for r in run.evaluations]
        logged = [n for n in counts if is_num(n)]
        params = logged[-1] if logged else run.config.get("trainable_params")
    return {
        "model": _model_name(run.config),
        "hit_at_1": run.test_metrics.get("hit_at_1"),
        "gap_at_20": run.test_metrics.get("gap_at_20"),
        "mean_ap": run.test_metrics.get("mean_ap"),
        "best_epoch": _best_at(run),
        "wall_s": wall,
        "trainable_params": params,
    }


def _fmt(value: object, spec: str = ".4f") -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float):
        if spec == ".4f" and 0 < abs(value) < 5e-5:
            return format(value, ".1e")  # not 0.0000: a GAP of 2.6e-05 is not zero
        return format(value, spec)
    return str(value)


# Characters that Markdown (and GitHub's maths) would read as markup in a name.
# An underscore inside a word (class_1) is not markup in CommonMark and stays as it is.
_MARKUP = re.compile(r"([\\`*\[\]<>|$~#]|(?<![^\W_])_|_(?![^\W_]))")


def md_text(text: str) -> str:
    """``text`` shown as is in Markdown: a class named ``*starred*`` stays starred."""
    return _MARKUP.sub(r"\\\1", text).replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table of cells already escaped (names through :func:`md_text`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _figure(title: str, name: str, spec: FigureSpec) -> str:
    """An image line; a PDF is a link, since Markdown viewers show no PDF inline."""
    return f"[{title} (PDF)]({name})" if spec.fmt == "pdf" else f"![{title}]({name})"


# ---------------------------------------------------------------- Markdown


def _comparison_table(runs: list[_Run]) -> list[str]:
    by_step = _x_axis(runs) == "step"
    header = ["run", "model", "test hit@1", "GAP@20", "mAP", "best epoch"]
    header += ["best step"] if by_step else []
    header += ["train wall time (s)", "trainable params"]
    rows = []
    for run in runs:
        s = _summary(run)
        params = s["trainable_params"]
        rows.append(
            [
                md_text(run.name),
                md_text(_fmt(s["model"])),
                *(_fmt(s[k]) for k in ("hit_at_1", "gap_at_20", "mean_ap", "best_epoch")),
                *([_fmt(_best_at(run, "step"))] if by_step else []),
                _fmt(s["wall_s"], ".1f"),
                f"{params:,}" if isinstance(params, int) else _fmt(params),
            ]
        )
    return _table(header, rows)


def _class_table(run: _Run, stats: metrics.ClassStats) -> list[str]:
    rule = "score ≥ 0.5 (multi-label)" if run.multilabel else "argmax (single-label)"
    order = np.arange(len(run.class_names))
    many = len(order) > MAX_TICK_CLASSES
    if many:  # the classes with the most test videos first
        order = np.lexsort((order, -stats.support))
    rows = [
        [
            md_text(run.class_names[c]),
            *(_fmt(float(v[c])) for v in (stats.precision, stats.recall, stats.ap)),
            str(int(stats.support[c])),
        ]
        for c in order
    ]
    with_pos = stats.ap[stats.support > 0]
    mean = _fmt(float(with_pos.mean())) if with_pos.size else MISSING
    intro = (
        f"Precision and recall at {rule}; AP over the full ranking of the test videos (nan: no "
        f"positives). Their mean over classes with positives, {mean}, is the full-ranking mAP; "
        "the mAP above ranks, as YouTube-8M's does, only each video's top 20 classes, and it "
        "too averages over the classes with positives."
    )
    if many:
        intro += " Classes with the most test videos first."
    return [intro, "", *_table(["class", "precision", "recall", "AP", "support"], rows)]


def _confused_pairs(run: _Run, cm: np.ndarray, k: int = 15) -> list[str]:
    """The ``k`` most frequent (true, predicted) errors: at many classes the figure shows only
    some classes, and this is what a reader looks for in it."""
    errors = cm.copy()
    np.fill_diagonal(errors, 0)
    flat = np.argsort(-errors, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, cm.shape) for i in flat if errors.flat[i] > 0]
    if not pairs:
        return []
    support = cm.sum(axis=1)
    rows = [
        [
            md_text(run.class_names[t]),
            md_text(run.class_names[p]),
            str(int(cm[t, p])),
            _fmt(float(cm[t, p] / support[t]), ".2f"),
        ]
        for t, p in pairs
    ]
    header = ["true class", "predicted as", "test videos", "share of the true class"]
    return ["Most frequent confusions:", "", *_table(header, rows)]


def _run_section(run: _Run, out_dir: Path, spec: FigureSpec) -> list[str]:
    lines = [f"## Run {md_text(run.name)}", ""]
    keys = [*METRIC_NAMES, "n_test"]
    lines += _table(keys, [[_fmt(run.test_metrics.get(k)) for k in keys]])
    if run.evaluations:
        name = spec.name(f"{run.slug}_training")
        x = _x_axis([run])
        best = _best_at(run, x)
        plot_training(run.name, run.evaluations, best, _monitor(run), out_dir / name, spec, x=x)
        lines += [_figure("Training curves", name, spec), ""]
    else:
        lines += [f"_No {ck.METRICS}: training curves omitted._", ""]
    classes = run.classes
    if classes is None:
        return [*lines, f"_No {ck.TEST_PREDICTIONS}.npz: per-class results omitted._", ""]
    stats = classes.stats(run.multilabel)
    if not run.multilabel and classes.single_label:  # one true class per video
        cm = classes.confusion()
        name = spec.name(f"{run.slug}_confusion")
        plot_confusion(run.name, cm, run.class_names, out_dir / name, spec)
        lines += [_figure("Confusion matrix", name, spec), ""]
        if len(run.class_names) > MAX_TICK_CLASSES:
            lines += _confused_pairs(run, cm)
    if (stats.support > 0).any():
        name = spec.name(f"{run.slug}_pr_curves")
        plot_pr_curves(run.name, run.class_names, classes, stats, out_dir / name, spec)
        lines += [_figure("Precision-recall curves", name, spec), ""]
    return lines + _class_table(run, stats)


def write_report(run_dirs: list[Path], out_dir: Path, *, fmt: str = "png", dpi: int = DPI) -> Path:
    """Write figures (``fmt``: png, pdf or svg, at ``dpi``) and ``report.md`` for ``run_dirs``
    into ``out_dir``; return the report path."""
    spec = FigureSpec(fmt, dpi)
    if not run_dirs:
        raise ReportError("no run directories given")
    run_dirs = [Path(p) for p in run_dirs]
    out_dir = Path(out_dir)
    names = _display_names(run_dirs)
    runs = [
        _load_run(p, slug, name)
        for p, slug, name in zip(run_dirs, _slugs(names), names, strict=True)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Run report", "", "## Summary", "", *_comparison_table(runs)]
    if len(runs) > 1:
        name = spec.name("comparison_val_curves")
        curves = [(r.name, r.evaluations) for r in runs]
        plot_comparison(curves, out_dir / name, spec, x=_x_axis(runs))
        lines += [_figure("Validation curves of all runs", name, spec), ""]
    for run in runs:
        lines += _run_section(run, out_dir, spec)
    report = out_dir / "report.md"
    atomic.write_text(report, "\n".join(lines), durable=False)
    log.info("wrote report for %d run(s) to %s", len(runs), report)
    return report
