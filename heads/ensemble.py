"""Ensembles of trained runs: a weighted mean of their test-split scores (Zhao's LR + LSTM).

Every run saves its best checkpoint's class scores on its test split (``test_predictions.npz``).
An ensemble averages those scores, so it needs no store and no model: only runs with the same
classes (matched by name, read in the first run's order), the same single/multi-label loss and
the same test videos can be combined; anything else is refused with a message naming the
difference.

Weights: ``equal``; ``gap``, each run's validation GAP@20 (at its best evaluation) over their
sum; or a JSON file with one non-negative weight per run (a list in run order, or an object
keyed by the run paths as given). Weights are normalised to sum to 1. Outputs: test_metrics.json,
test_predictions.{npz,csv} as a run writes them, and the YouTube-8M submission CSV.

The runs' scores are read from their ``.npz`` files a block of videos at a time, and the
metrics and files are written a block at a time: at YouTube-8M's scale each run's
(N, C) arrays are gigabytes, and the ensemble never holds them whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from heads import checkpoint as ck
from heads.errors import CheckpointError, RunExistsError
from heads.labels import LabelMap, multilabel_loss
from heads.metrics import MetricStream
from heads.predictions import (
    NpzRows,
    PredictionsWriter,
    Scored,
    format_yt8m_pairs,
    npz_arrays,
    recorded_vocabulary,
    row_blocks,
    vocabulary_indices,
)
from vidfeat import atomic
from vidfeat.errors import ConfigError

log = logging.getLogger(__name__)

YT8M_CSV = "test_predictions_yt8m.csv"


@dataclass
class Member:
    run_dir: Path
    video_ids: list[str]  # sorted
    rows: np.ndarray  # (N,) the file's row of each video, in video_ids order
    # (N, C) in the file's row order, read a block of rows at a time: float32 probabilities,
    # the ranking scores that order them exactly where saved (None in files from before),
    # multi-hot labels.
    scores: np.ndarray | NpzRows
    ranking: np.ndarray | NpzRows | None
    labels: np.ndarray | NpzRows
    label_map: LabelMap
    val_gap: float | None  # GAP@20 on validation at the best evaluation
    multilabel: bool  # sigmoid outputs (else softmax): what its scores mean
    # The file's column of each class of the ensemble (the first run's order), when this run
    # has the same classes in another order (other --classes orders); None: the same order.
    columns: np.ndarray | None = None

    def log_probabilities(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, C) float64 log p and log(1 - p) of the videos ``video_ids[start:stop]``, from
        the ranking scores where saved: exact where float32 (or even float64) probabilities
        of a confident run round to 1.0 or 0.0."""
        ranking = None if self.ranking is None else self._read(self.ranking, start, stop)
        return _log_probabilities(self._read(self.scores, start, stop), ranking, self.multilabel)

    def labels_of(self, start: int, stop: int) -> np.ndarray:
        """(n, C) float32 multi-hot labels of the videos ``video_ids[start:stop]``."""
        return np.asarray(self._read(self.labels, start, stop), np.float32)

    def _read(self, array: np.ndarray | NpzRows, start: int, stop: int) -> np.ndarray:
        try:
            block = array[self.rows[start:stop]]
            return block if self.columns is None else block[:, self.columns]
        except (OSError, ValueError) as exc:  # e.g. the file cut short since it was opened
            path = self.run_dir / f"{ck.TEST_PREDICTIONS}.npz"
            raise CheckpointError(f"{path}: cannot read test predictions: {exc}") from exc


def load_member(run_dir: str | Path, held: contextlib.ExitStack) -> Member:
    """One finished run's saved test scores, sorted by video id; the (N, C) arrays stay in
    the file, which ``held`` keeps open."""
    run_dir = Path(run_dir)
    path = run_dir / f"{ck.TEST_PREDICTIONS}.npz"
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        finished = (run_dir / ck.TEST_METRICS).is_file()
        why = "its test split was empty" if finished else f"has the run in {run_dir} finished?"
        raise CheckpointError(f"{path} not found: {why}")
    label_map = LabelMap.from_dict(ck.read_json(run_dir / ck.LABEL_MAP))
    try:
        arrays = npz_arrays(path, ("video_id", "scores", "ranking", "labels"), held=held)
        ids, scores, labels = arrays["video_id"], arrays["scores"], arrays["labels"]
        ranking = arrays.get("ranking")
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: cannot read test predictions: {exc}") from exc
    if not len(ids):
        raise CheckpointError(f"{path}: no test videos")
    expected = (len(ids), len(label_map))
    for name, array in (("scores", scores), ("ranking", ranking), ("labels", labels)):
        if array is not None and array.shape != expected:
            raise CheckpointError(
                f"{path}: {name} is {array.shape}, expected {expected} "
                f"({len(ids)} videos, {len(label_map)} classes in {ck.LABEL_MAP})"
            )
    order = np.argsort(ids, kind="stable")
    return Member(
        run_dir=run_dir,
        video_ids=[str(v) for v in ids[order]],
        rows=order,
        scores=scores,
        ranking=ranking,
        labels=labels,
        label_map=label_map,
        val_gap=_best_val_gap(run_dir),
        multilabel=multilabel_loss(_trained_loss(run_dir), label_map),
    )


def _log_probabilities(
    scores: np.ndarray, ranking: np.ndarray | None, multilabel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(log p, log(1 - p)) in float64 from a run's ranking scores (logits under sigmoid,
    log-probabilities under softmax), which keep apart what probabilities round to 1.0 or
    0.0; from the saved probabilities where a run saved no ranking scores."""
    with np.errstate(divide="ignore"):  # log(0) = -inf is the value meant
        if ranking is None:
            p = scores.astype(np.float64)
            return np.log(p), np.log1p(-p)
        r = ranking.astype(np.float64)
        if multilabel:  # log sigmoid(r), log sigmoid(-r), without overflow
            return -np.logaddexp(0.0, -r), -np.logaddexp(0.0, r)
        return r, np.log1p(-np.exp(r))


def _ranking(log_p: np.ndarray, log_q: np.ndarray, multilabel: bool) -> np.ndarray:
    """float32 ranking scores of probabilities given as (log p, log(1 - p)): the log-odds under
    sigmoid (1 - p keeps apart what rounds to 1), the log under softmax. Infinite only from
    saved probabilities of exactly 0 or 1 (files without ranking scores), which tie there
    anyway: clipped, since the metrics refuse infinity."""
    limit = float(np.finfo(np.float32).max)
    return np.clip(log_p - log_q if multilabel else log_p, -limit, limit).astype(np.float32)


def _trained_loss(run_dir: Path) -> str:
    """The run's --loss (read_json names a missing or broken config.json)."""
    config = ck.read_json(run_dir / ck.CONFIG)
    if not isinstance(config, dict):
        raise CheckpointError(f"{run_dir / ck.CONFIG}: not a run's config")
    return str(config.get("loss", "auto"))


def _best_val_gap(run_dir: Path) -> float | None:
    """val_gap_at_20 of the last improving evaluation in metrics.jsonl (the best checkpoint)."""
    best = [r for r in ck.read_jsonl(run_dir / ck.METRICS) if r.get("improved")]
    return best[-1].get("val_gap_at_20") if best else None


def check_compatible(members: list[Member]) -> list[Member]:
    """Refuse members whose label maps or test splits differ; returns them with the classes
    of a run that has the first's in another order read in the first's order."""
    first = members[0]
    aligned = [first]
    for other in members[1:]:
        if other.label_map != first.label_map and _same_classes(other.label_map, first.label_map):
            column = {label: i for i, label in enumerate(other.label_map.labels)}
            order = np.array([column[label] for label in first.label_map.labels])
            other = replace(other, label_map=first.label_map, columns=order)
        aligned.append(other)
        if other.label_map != first.label_map:
            raise ConfigError(
                f"runs {first.run_dir} and {other.run_dir} have different label maps "
                f"({_label_map_difference(first.label_map, other.label_map)}); "
                "train them with the same --classes and --loss"
            )
        if other.multilabel != first.multilabel:
            kinds = {True: "sigmoid (multi-label)", False: "softmax"}
            raise ConfigError(
                f"runs {first.run_dir} and {other.run_dir} were trained with different losses "
                f"({kinds[first.multilabel]} vs {kinds[other.multilabel]}): their scores do not "
                "mean the same; train them with the same --loss"
            )
        if other.video_ids != first.video_ids:
            only = sorted(set(first.video_ids) ^ set(other.video_ids))
            raise ConfigError(
                f"runs {first.run_dir} and {other.run_dir} have different test splits "
                f"({len(only)} videos in one only, e.g. {only[:3]}); "
                "train them with the same --seed or --split-file"
            )
    return aligned


def _same_classes(a: LabelMap, b: LabelMap) -> bool:
    """The same classes, in any order, and the same multi-label flag."""
    return a.multilabel == b.multilabel and sorted(a.labels) == sorted(b.labels)


def _label_map_difference(a: LabelMap, b: LabelMap) -> str:
    """What differs between two label maps, and only that."""
    said = []
    if a.labels != b.labels:
        only = sorted(set(a.labels) ^ set(b.labels))
        where = f", e.g. {only[:3]} in one only" if only else ", in another order"
        said.append(f"{len(a)} vs {len(b)} classes{where}")
    if a.multilabel != b.multilabel:
        said.append(f"multilabel {a.multilabel} vs {b.multilabel}")
    return "; ".join(said)


def resolve_weights(members: list[Member], weights: str | Path) -> np.ndarray:
    """(R,) weights summing to 1 from ``equal``, ``gap`` or a JSON file."""
    if str(weights) == "equal":
        raw = np.ones(len(members))
    elif str(weights) == "gap":
        missing = [str(m.run_dir) for m in members if m.val_gap is None]
        if missing:
            raise ConfigError(
                f"--weights gap needs each run's validation GAP, and {', '.join(missing)} "
                "recorded none (no validation split?); use --weights equal or a weights file"
            )
        raw = np.array([float(m.val_gap) for m in members])
    else:
        raw = _weights_file(Path(weights), members)
    if (raw < 0).any() or not np.isfinite(raw).all() or raw.sum() <= 0:
        raise ConfigError(f"ensemble weights must be non-negative with a positive sum: {raw}")
    return raw / raw.sum()


def _weights_file(path: Path, members: list[Member]) -> np.ndarray:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(data, dict):
        missing = [str(m.run_dir) for m in members if str(m.run_dir) not in data]
        if missing:
            raise ConfigError(f"weights file {path} has no weight for {missing}")
        data = [data[str(m.run_dir)] for m in members]
    if not isinstance(data, list) or len(data) != len(members):
        raise ConfigError(f"weights file {path} must give {len(members)} weights")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in data):
        raise ConfigError(f"weights in {path} must be numbers, got {data}")
    return np.array(data, dtype=np.float64)


def ensemble_runs(
    runs: list[str | Path],
    out: str | Path,
    weights: str | Path = "equal",
    *,
    vocabulary: dict[str, int] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the ensemble of ``runs`` to ``out``; returns its test metrics. The YouTube-8M CSV
    needs vocabulary indices: labels that are indices, or ``vocabulary`` (label -> index).
    ``force`` replaces an ensemble already in ``out``; a training run there is never touched."""
    if len(runs) < 2:
        raise ConfigError("an ensemble needs at least two runs")
    out = Path(out)
    _check_out(out, force)
    with contextlib.ExitStack() as held:
        members = check_compatible([load_member(r, held) for r in runs])
        w = resolve_weights(members, weights)
        made = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            metrics = _write_ensemble(members, w, out, vocabulary)
        except BaseException:
            if made:  # nothing was committed in it: leave no empty folder behind
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
    log.info("ensemble of %d runs: gap_at_20 %.4f", len(members), metrics["gap_at_20"])
    return metrics


def _write_ensemble(
    members: list[Member], w: np.ndarray, out: Path, vocabulary: dict[str, int] | None
) -> dict[str, Any]:
    """Score the ensemble a block of videos at a time into its files in ``out``. Its metrics
    are settled before any file is committed, and written last: a failure leaves the files
    of an earlier ensemble there as they were."""
    first = members[0]
    n, n_classes = len(first.video_ids), len(first.label_map)
    if vocabulary is None and (first.run_dir / ck.CONFIG).is_file():
        # As heads predict does: the vocabulary the run's store was imported with.
        config = ck.read_json(first.run_dir / ck.CONFIG)
        vocabulary = recorded_vocabulary(config.get("store", {}).get("attrs", {}))
    yt8m_names = _yt8m_indices(first.label_map, vocabulary)
    ensemble = MetricStream(n_classes)
    alone = [MetricStream(n_classes) for _ in members]
    with contextlib.ExitStack() as files:
        writer = files.enter_context(
            PredictionsWriter(out / ck.TEST_PREDICTIONS, first.video_ids, first.label_map)
        )
        yt8m = None
        if yt8m_names is not None:
            fh = atomic.atomic_open(out / YT8M_CSV, "w", newline="", encoding="utf-8")
            yt8m = (files.enter_context(fh), yt8m_names)
        # Per block and run, float64 log p and log(1 - p) of BLOCK_VALUES scores each (8 MB),
        # and their stacks across runs for the mean.
        for rows in row_blocks(n, n_classes):
            start, stop = int(rows[0]), int(rows[-1]) + 1
            logs = [m.log_probabilities(start, stop) for m in members]
            labels = [m.labels_of(start, stop) for m in members]
            for stream, m, (log_p, log_q), y in zip(alone, members, logs, labels, strict=True):
                stream.add(rows, _ranking(log_p, log_q, m.multilabel), y)
            scored = _weighted_mean(w, logs, first.multilabel, labels[0])
            ensemble.add(rows, scored.ranking, scored.labels)
            writer.add(rows, scored)
            if yt8m is not None:
                _write_yt8m_rows(yt8m[0], first.video_ids[start:stop], scored, yt8m[1], start)
        metrics = {k: v for k, v in ensemble.result().items() if k != "n"}
        metrics |= {
            "n_test": n,
            "members": [str(m.run_dir) for m in members],
            "weights": [float(x) for x in w],
            "member_gap_at_20": [float(stream.result()["gap_at_20"]) for stream in alone],
        }
    if yt8m is None:  # an earlier ensemble's (with --force) would outlive its scores
        (out / YT8M_CSV).unlink(missing_ok=True)
    ck.write_json(out / ck.LABEL_MAP, first.label_map.to_dict())  # what heads report reads
    ck.write_json(out / ck.TEST_METRICS, metrics)
    return metrics


def _weighted_mean(
    w: np.ndarray,
    logs: list[tuple[np.ndarray, np.ndarray]],
    multilabel: bool,
    labels: np.ndarray,
) -> Scored:
    """The weighted mean probability of a block of videos, from each run's (log p, log(1 - p)):
    log sum_k w_k p_k, and of 1 - p, in log space."""
    with np.errstate(divide="ignore"):
        log_w = np.log(w)[:, None, None]
    log_mean = np.logaddexp.reduce(log_w + np.stack([p for p, _ in logs]), axis=0)
    log_rest = np.logaddexp.reduce(log_w + np.stack([q for _, q in logs]), axis=0)
    return Scored(
        probs=np.exp(log_mean).astype(np.float32),
        ranking=_ranking(log_mean, log_rest, multilabel),
        labels=labels,
    )


def _check_out(out: Path, force: bool) -> None:
    """An ensemble's files share their names with a run's test results: never write them over
    a training run, and over an earlier ensemble only with ``force``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if (out / ck.CONFIG).exists():
        raise RunExistsError(f"{out} holds a training run; write the ensemble to another --out")
    if (out / ck.TEST_METRICS).exists() and not force:
        raise RunExistsError(f"{out} already holds an ensemble; add --force to replace it")


def _yt8m_indices(label_map: LabelMap, vocabulary: dict[str, int] | None) -> tuple[str, ...] | None:
    """The classes' vocabulary indices for the YouTube-8M CSV; None when they have none."""
    try:
        return tuple(str(i) for i in vocabulary_indices(label_map.labels, vocabulary))
    except ConfigError as exc:  # the metrics are still worth having
        # An extra file nobody asked for by name: not worth a warning on every ensemble of
        # runs with named classes.
        log.info("%s not written: %s", YT8M_CSV, exc)
        return None


def _write_yt8m_rows(
    fh: Any, video_ids: list[str], scored: Scored, names: tuple[str, ...], start: int
) -> None:
    """YouTube-8M submission format, VideoId,LabelConfidencePairs ("index score ..." top 20),
    for a block of videos (the header with the first)."""
    k = min(20, len(names))
    rows = zip(scored.probs, scored.ranking, strict=True)
    pairs = [format_yt8m_pairs(s, names, k, r) for s, r in rows]
    table = pd.DataFrame({"VideoId": video_ids, "LabelConfidencePairs": pairs})
    table.to_csv(fh, index=False, header=start == 0)
