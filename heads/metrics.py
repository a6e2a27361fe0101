"""YouTube-8M evaluation metrics in plain numpy (importable without torch).

Every function takes ``scores`` (N, C) float and ``labels`` (N, C) binary, one row per video.
Only the ranking of scores matters, so probabilities and logits give identical results in
exact arithmetic. In float32 they do not: sigmoid is exactly 1.0 above a logit of about 17,
and the ties it makes would be broken by class index. Callers therefore rank on the logits
(sigmoid outputs) or log-probabilities (softmax): ``heads.objective.Loss.ranking_scores``.

Definitions follow YouTube-8M's ``eval_util.py``, ``average_precision_calculator.py`` and
``mean_average_precision_calculator.py``, with three deliberate differences:

- Ties are broken deterministically: within a video by class index, in pooled lists by
  (video index, class index). YouTube-8M shuffles with a global RNG and uses ``argpartition``,
  so its result on tied scores depends on process state.
- PERR averages over videos with at least one positive (YouTube-8M counts label-less videos
  as 0) and has no "score > 0" rule, which only differs for scores <= 0, i.e. logits.
- Undefined averages (no video or class with a positive) are ``nan`` rather than 0.

mAP averages the classes with at least one positive among the videos evaluated, as YouTube-8M's
calculator does by default since mid-2019 (``filter_empty_classes=True``). Its code before then
divided by every class, counting a class absent from a split as an AP of 0: figures from that
code are ours times the share of classes present.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidfeat.errors import VidfeatError

# Rows argsorted per chunk: bounds the (rows, C) int64 index array to ~32 MiB.
_SORT_CHUNK_ELEMS = 1 << 22


class MetricInputError(VidfeatError, ValueError):
    """Scores, labels or a metric parameter are invalid."""


class NonFiniteScores(MetricInputError):
    """Scores hold NaN or infinity: from a model whose weights blew up, not from bad data."""


@dataclass(frozen=True)
class ClassStats:
    """Per-class statistics, each an array of shape (C,).

    ``precision``/``recall`` are at the decision rule of :func:`per_class_precision_recall`
    (0.0 when undefined, like scikit-learn's ``zero_division=0``); ``ap`` is full-ranking AP
    (``nan`` for a class without positives); ``support`` is the number of positives.
    """

    precision: np.ndarray
    recall: np.ndarray
    ap: np.ndarray
    support: np.ndarray


# ---------------------------------------------------------------- validation / ranking


def _validate(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores float32 or float64, labels bool), both (N, C), or raise
    MetricInputError. Float32 scores stay float32: converting them would not change one
    comparison, and a float64 copy of a YouTube-8M-sized score matrix is gigabytes."""
    try:
        s = np.asarray(scores)
        if s.dtype not in (np.float32, np.float64):
            s = np.asarray(scores, dtype=np.float64)
        y_raw = np.asarray(labels)
        if y_raw.dtype.kind not in "biuf":
            y_raw = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"scores and labels must be numeric arrays: {exc}") from exc
    if s.ndim != 2 or y_raw.ndim != 2:
        raise MetricInputError(
            f"scores and labels must be 2-D (N, C); got shapes {s.shape} and {y_raw.shape}"
        )
    if s.shape != y_raw.shape:
        raise MetricInputError(f"shape mismatch: scores {s.shape} vs labels {y_raw.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise MetricInputError(f"need at least one video and one class; got shape {s.shape}")
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise NonFiniteScores(f"scores contain {bad} NaN or infinite value(s)")
    if y_raw.dtype != bool and not ((y_raw == 0) | (y_raw == 1)).all():
        raise MetricInputError("labels must be binary (0/1 or bool)")
    return s, y_raw.astype(bool, copy=False)


def _validate_k(k: object, name: str = "k", hint: str = "") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricInputError(f"{name} must be an integer >= 1, got {k!r}{hint}")
    return int(k)


def rank_classes(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Class indices per video by descending score, ties by class index: (N, min(k, C))."""
    n, c = scores.shape
    k = c if k is None else min(_validate_k(k), c)
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, _SORT_CHUNK_ELEMS // c)
    for start in range(0, n, step):
        out[start : start + step] = _top_k_rows(-scores[start : start + step], k)
    return out


def _top_k_rows(neg: np.ndarray, k: int) -> np.ndarray:
    """The k smallest entries of each row of ``neg``, ascending, ties by column index."""
    if k >= neg.shape[1]:
        return np.argsort(neg, axis=1, kind="stable")  # keeps equal values in index order
    # Partition out k candidates per row, then sort only them (by value, then index): ~8x
    # faster than sorting all C when k << C.
    top = np.argpartition(neg, k - 1, axis=1)[:, :k]
    top.sort(axis=1)
    order = np.argsort(np.take_along_axis(neg, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    # Where the k-th value ties with an entry left out, the partition may have kept any of the
    # tied entries rather than the lowest-indexed: sort those rows whole. So too where it is NaN
    # (fewer than k numbers in the row; predictions do not refuse NaN as metrics do), which no
    # comparison finds tied.
    kth = np.take_along_axis(neg, top[:, -1:], axis=1)
    tied = ((neg <= kth).sum(axis=1) > k) | np.isnan(kth[:, 0])
    if tied.any():
        top[tied] = np.argsort(neg[tied], axis=1, kind="stable")[:, :k]
    return top


def _ap_of_ranked_hits(hits: np.ndarray, n_positives: int) -> float:
    """Non-interpolated AP of a ranked 0/1 list, normalised by all positives (retrieved or not)."""
    if n_positives == 0:
        return 0.0
    ranks = np.arange(1, hits.size + 1)
    precision_at_hit = np.cumsum(hits)[hits] / ranks[hits]
    return float(precision_at_hit.sum() / n_positives)


def _class_aps(s: np.ndarray, y: np.ndarray, retrieved: np.ndarray) -> np.ndarray:
    """AP per class over the retrieved videos, ranked by score then video index: (C,)."""
    # Unretrieved entries sort last and never count as hits, so they only enter the denominator.
    masked = np.where(retrieved, -s, np.inf)
    order = np.argsort(masked, axis=0, kind="stable")
    hits = np.take_along_axis(y & retrieved, order, axis=0)
    ranks = np.arange(1, s.shape[0] + 1, dtype=np.float64)[:, None]
    precision_sum = (np.cumsum(hits, axis=0) / ranks * hits).sum(axis=0)
    return _ap_of_sums(precision_sum, y.sum(axis=0))


def _class_aps_top_k(s: np.ndarray, y: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``_class_aps`` with each video retrieving the classes ``top`` (N, k) lists for it."""
    return _class_aps_retrieved(
        top,
        np.take_along_axis(s, top, axis=1),
        np.take_along_axis(y, top, axis=1),
        y.sum(axis=0),
    )


def _class_aps_retrieved(
    classes: np.ndarray, scores: np.ndarray, hits: np.ndarray, support: np.ndarray
) -> np.ndarray:
    """``_class_aps`` from the entries each video retrieved alone, (N, k) classes, scores and
    hits with videos in row order, and (C,) positives per class: the same ranks (score, then
    video index), hits and denominators, in memory that grows with k instead of C."""
    n, k = classes.shape
    videos = np.repeat(np.arange(n), k)
    classes, scores, hits = classes.ravel(), scores.ravel(), hits.ravel()
    by_class = np.lexsort((videos, -scores, classes))  # class, then descending score, video
    classes, hits = classes[by_class], hits[by_class]
    first = np.searchsorted(classes, classes)  # where each entry's class begins
    ranks = np.arange(1, classes.size + 1) - first  # 1-based rank within the class
    cum_hits = np.cumsum(hits)
    in_class = cum_hits - (cum_hits[first] - hits[first])  # hits so far within the class
    precision_sum = np.bincount(
        classes, weights=np.where(hits, in_class / ranks, 0.0), minlength=support.size
    )
    return _ap_of_sums(precision_sum, support)


def _ap_of_sums(precision_sum: np.ndarray, support: np.ndarray) -> np.ndarray:
    """(C,) AP from each class's sum of precisions at its hits: normalised by all its
    positives (``support``), retrieved or not; ``nan`` for a class without positives."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, precision_sum / support, np.nan)


def _nanmean_or_nan(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


# ---------------------------------------------------------------- internals on validated input


def _hit_at_k(y: np.ndarray, order: np.ndarray, k: int) -> float:
    return float(_hit_rows(y, order, k).mean())


def _hit_rows(y: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: whether each video's top k classes hold one of its labels."""
    return np.take_along_axis(y, order[:, :k], axis=1).any(axis=1)


def _gap(s: np.ndarray, y: np.ndarray, order: np.ndarray, k: int) -> float:
    top = order[:, :k]
    scores, hits = np.take_along_axis(s, top, axis=1), np.take_along_axis(y, top, axis=1)
    return _gap_retrieved(scores, hits, int(y.sum()))


def _gap_retrieved(scores: np.ndarray, hits: np.ndarray, n_positives: int) -> float:
    """GAP from each video's (N, k) top scores and hits, videos in row order, ranks in order."""
    # Row-major flattening lists entries by (video, rank); rank order within a video already
    # follows class index on ties, so a stable sort realises the (-score, video, class) key.
    by_score = np.argsort(-scores.ravel(), kind="stable")
    return _ap_of_ranked_hits(hits.ravel()[by_score], n_positives)


def _perr(y: np.ndarray, order: np.ndarray) -> float:
    return _nanmean_or_nan(_perr_rows(y, order))


def _perr_rows(y: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(N,) each video's precision in its top n for n positives; ``nan`` without positives."""
    n_pos = y.sum(axis=1)
    has_pos = n_pos > 0
    out = np.full(len(y), np.nan)
    hits_cum = np.cumsum(np.take_along_axis(y[has_pos], order[has_pos], axis=1), axis=1)
    n = n_pos[has_pos]
    out[has_pos] = hits_cum[np.arange(n.size), n - 1] / n
    return out


# ---------------------------------------------------------------- public metrics


def hit_at_k(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of all N videos whose top-k classes contain at least one true label."""
    s, y = _validate(scores, labels)
    k = _validate_k(k)
    return _hit_at_k(y, rank_classes(s, k), k)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Top-k accuracy: for single-label data the usual definition; for multi-label, hit@k."""
    return hit_at_k(scores, labels, k)


def gap(scores: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """YouTube-8M global average precision over each video's top-k (class, score) pairs.

    The pooled pairs are ranked by score and AP is normalised by ``labels.sum()``, so positives
    outside every top-k count as misses. 0.0 when there are no positives (as YouTube-8M).
    """
    s, y = _validate(scores, labels)
    k = _validate_k(k)
    return _gap(s, y, rank_classes(s, k), k)


def perr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Precision at equal recall rate: precision of each video's top-n, n = its positives.

    Mean over videos with >= 1 positive; ``nan`` if there are none.
    """
    s, y = _validate(scores, labels)
    return _perr(y, rank_classes(s, max(1, int(y.sum(axis=1).max()))))


def average_precision_per_class(
    scores: np.ndarray, labels: np.ndarray, top_k: int | None = None
) -> np.ndarray:
    """AP of each class, (C,) float64; ``nan`` for classes without positives.

    ``top_k=None`` ranks all videos per class. With ``top_k`` only the classes in a video's
    top_k are retrieved for it (YouTube-8M's sparse predictions); the AP denominator is always
    every positive of the class.
    """
    s, y = _validate(scores, labels)
    if top_k is None:
        return _class_aps(s, y, np.ones_like(y))
    top_k = _validate_k(top_k, "top_k")
    return _class_aps_top_k(s, y, rank_classes(s, top_k))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, top_k: int = 20) -> float:
    """YouTube-8M's mAP: per-class AP on top_k-sparsified predictions, averaged over the
    classes with positives (``nan`` if none), as its calculator's ``filter_empty_classes``."""
    # None here would silently be the full-ranking mAP, which has its own name.
    top_k = _validate_k(top_k, "top_k", " (mean_average_precision_full ranks every class)")
    return _nanmean_or_nan(average_precision_per_class(scores, labels, top_k=top_k))


def mean_average_precision_full(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes with positives of full-ranking AP (``nan`` if none)."""
    return _nanmean_or_nan(average_precision_per_class(scores, labels, top_k=None))


def precision_recall_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One class's PR curve from 1-D scores (N,) and binary labels (N,).

    Returns (precision, recall): the starting point (precision 1, recall 0), then one point
    per positive in rank order (ties by index), where recall rises. Raises if there is no
    positive.
    """
    if np.ndim(scores) != 1 or np.ndim(labels) != 1:  # reshaping would pool the classes
        raise MetricInputError(
            f"a precision-recall curve takes one class: 1-D scores and labels, got "
            f"{np.shape(scores)} and {np.shape(labels)}"
        )
    column = np.reshape(scores, (-1, 1))
    return _whole(column, np.reshape(labels, (-1, 1)), column).curve(0)


def per_class_precision_recall(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    multilabel: bool | None = None,
    threshold: float = 0.5,
    ranking: np.ndarray | None = None,
) -> ClassStats:
    """Per-class precision, recall, full-ranking AP and support.

    Single-label: each video predicts its best class (ties -> lowest index). Multi-label:
    a video predicts every class with ``score >= threshold`` (scores must be probabilities).
    ``ranking``: scores in the same order as ``scores`` without their ties (logits, say),
    which then pick the best class and rank for AP. ``multilabel=None`` infers single-label
    when every video has exactly one positive.
    """
    return _whole(scores, labels, scores if ranking is None else ranking).stats(multilabel)


def confusion_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted argmax (single-label only)."""
    s, y = _validate(scores, labels)
    ranks = ClassRanks(s.shape[1])
    ranks.count(s, s, y)
    return ranks.confusion()


def evaluate_all(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """hit_at_1, top5, gap_at_20, mean_ap (YouTube-8M, top 20), perr and n (videos)."""
    s, y = _validate(scores, labels)
    stream = MetricStream(s.shape[1])
    stream._add_valid(np.arange(len(s)), s, y)
    return stream.result()


# ---------------------------------------------------------------- batch by batch

_RETRIEVED = 20  # GAP and mAP read each video's top 20 (YouTube-8M's top_k)


@dataclass
class _Scored:
    """What ``evaluate_all`` reads of some videos: their rows in the whole set, their top 20
    classes with those scores and hits, hit@1 and top-5 per video, PERR per video."""

    rows: np.ndarray  # (n,) int64
    classes: np.ndarray  # (n, 20) int32 (fewer columns with fewer classes)
    scores: np.ndarray  # (n, 20) float
    hits: np.ndarray  # (n, 20) bool
    hit1: np.ndarray  # (n,) bool
    top5: np.ndarray  # (n,) bool
    perr: np.ndarray  # (n,) float64, nan without positives


class MetricStream:
    """``evaluate_all`` fed a batch of videos at a time: per video it keeps its 20 best classes
    with their scores and hits, in place of the (N, C) scores and labels (at YouTube-8M's
    validation size, 1.1M videos x 3,862 classes, 17 GB each in float32). The result equals
    ``evaluate_all`` on the whole set, whatever the batches and their order: every metric is
    per video up to the pooled rankings, which take the videos in row order.

    Under torchrun each rank streams its share; ``state()`` is what rank 0 gathers and
    ``merged`` joins, checking that the shares cover each row once.
    """

    def __init__(self, n_classes: int) -> None:
        self.support = np.zeros(n_classes, np.int64)  # positives per class
        self.parts: list[_Scored] = []

    def add(self, rows: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
        """Score the videos ``rows`` (their indices in the whole set): (n, C) each."""
        s, y = _validate(scores, labels)
        if s.shape[1] != self.support.size:
            raise MetricInputError(f"{s.shape[1]} classes, expected {self.support.size}")
        self._add_valid(rows, s, y)

    def _add_valid(self, rows: np.ndarray, s: np.ndarray, y: np.ndarray) -> None:
        """``add`` of scores and labels ``_validate`` has already checked and converted."""
        order = rank_classes(s, max(_RETRIEVED, int(y.sum(axis=1).max())))
        top = order[:, :_RETRIEVED]
        self.parts.append(
            _Scored(
                rows=np.asarray(rows, np.int64),
                classes=top.astype(np.int32),
                scores=np.take_along_axis(s, top, axis=1),
                hits=np.take_along_axis(y, top, axis=1),
                hit1=_hit_rows(y, order, 1),
                top5=_hit_rows(y, order, 5),
                perr=_perr_rows(y, order),
            )
        )
        self.support += y.sum(axis=0)

    def state(self) -> tuple[np.ndarray, list[_Scored]]:
        return self.support, self.parts

    @classmethod
    def merged(cls, states: list[tuple[np.ndarray, list[_Scored]]], n_rows: int) -> MetricStream:
        """One stream of ranks' states; every row of ``range(n_rows)`` exactly once."""
        stream = cls(len(states[0][0]))
        for support, parts in states:
            stream.support += support
            stream.parts += parts
        rows = [p.rows for p in stream.parts] or [np.zeros(0, np.int64)]
        count = np.bincount(np.concatenate(rows), minlength=n_rows)
        if count.size != n_rows or not (count == 1).all():
            raise RuntimeError(
                f"{int((count[:n_rows] == 0).sum())} rows missing and {int((count > 1).sum())} "
                "duplicated after gathering: the ranks' shares do not partition the set"
            )
        return stream

    def result(self) -> dict[str, float | int]:
        if not self.parts:
            raise MetricInputError("need at least one video and one class; got none")
        parts = self.parts
        rows = np.concatenate([p.rows for p in parts])
        at = np.argsort(rows, kind="stable")  # the videos in row order, as the pooled ranks need

        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])[at]

        scores, hits = joined("scores"), joined("hits")
        return {
            "hit_at_1": float(joined("hit1").mean()),
            "top5": float(joined("top5").mean()),
            "gap_at_20": _gap_retrieved(scores, hits, int(self.support.sum())),
            "mean_ap": _nanmean_or_nan(
                _class_aps_retrieved(joined("classes"), scores, hits, self.support)
            ),
            "perr": _nanmean_or_nan(joined("perr")),
            "n": int(rows.size),
        }


# ---------------------------------------------------------------- per class, in two passes


@dataclass
class _ClassPlan:
    """One class's positives, for ranking them against every video in the second pass."""

    unique: np.ndarray  # (u,) its positives' distinct ranking scores, ascending
    group: np.ndarray  # (p,) each positive's index in ``unique``, positives in rank order
    keys: np.ndarray  # (p,) int64 group * n + row, ascending: ties within a group by row
    at_key: np.ndarray  # (p,) where each positive (rank order) sits in ``keys``
    group_end: np.ndarray  # (u,) where each group's keys end
    greater: np.ndarray  # (u + 1,) videos whose score has k unique positive scores below it
    tied: np.ndarray  # (p + 1,) difference array: tied videos at or before each positive's row


class ClassRanks:
    """Per-class results over the full ranking of every video (``per_class_precision_recall``,
    ``confusion_matrix``, precision-recall curves), fed blocks of rows in two passes, in place
    of whole (N, C) arrays (a test split of YouTube-8M's size is gigabytes per array).

    Pass 1, :meth:`count`: (scores, ranking, labels) of each block of rows, in row order.
    Pass 2, :meth:`rank`: the ranking of the same blocks, in the same order. In between, only
    the positives (class, score, row) and per-class counts are kept. A positive's precision
    needs its rank among all videos of its class (by score, then video index), which pass 2
    counts: the videos scoring above each distinct positive score, and the videos tied with
    one, up to its row. The results equal the whole-array definitions (``_class_aps``).
    """

    def __init__(self, n_classes: int, *, threshold: float = 0.5) -> None:
        self.n_classes = n_classes
        self.threshold = threshold
        self.n = 0  # rows counted in pass 1
        self.support = np.zeros(n_classes, np.int64)
        self.single_label = True  # every row so far has exactly one positive
        # True positives and predictions per class under each rule: multi-label (score >=
        # threshold) and single-label (the best class of the ranking).
        self._tp = {rule: np.zeros(n_classes, np.int64) for rule in (True, False)}
        self._predicted = {rule: np.zeros(n_classes, np.int64) for rule in (True, False)}
        self._best: list[np.ndarray] = []  # per row: argmax of the ranking
        self._true: list[np.ndarray] = []  # per row: its positive class
        self._positives: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._plans: dict[int, _ClassPlan] | None = None
        self._ranked = 0  # rows seen in pass 2

    def count(self, scores: np.ndarray, ranking: np.ndarray, labels: np.ndarray) -> None:
        """Pass 1: the next block of rows."""
        if self._plans is not None:
            raise MetricInputError("count() after rank(): pass 1 is over")
        s, y = _validate(scores, labels)
        r = _validate(ranking, labels)[0]
        if s.shape[1] != self.n_classes:
            raise MetricInputError(f"{s.shape[1]} classes, expected {self.n_classes}")
        predicted = s >= self.threshold
        self._tp[True] += (predicted & y).sum(axis=0)
        self._predicted[True] += predicted.sum(axis=0)
        best = r.argmax(axis=1)  # ties -> lowest index
        self._tp[False] += np.bincount(best[y[np.arange(len(y)), best]], minlength=self.n_classes)
        self._predicted[False] += np.bincount(best, minlength=self.n_classes)
        self.single_label &= bool((y.sum(axis=1) == 1).all())
        if self.single_label:  # what a confusion matrix needs, while one can be drawn
            self._best.append(best.astype(np.int32))
            self._true.append(y.argmax(axis=1).astype(np.int32))
        else:
            self._best, self._true = [], []
        self.support += y.sum(axis=0)
        video, cls = np.nonzero(y)
        self._positives.append((cls.astype(np.int32), r[video, cls], video + self.n))
        self.n += len(y)

    def rank(self, ranking: np.ndarray) -> None:
        """Pass 2: the ranking of the next block of rows, as given to :meth:`count`."""
        plans = self._plan()
        r = np.asarray(ranking)
        if r.dtype not in (np.float32, np.float64):  # as pass 1 read it (``_validate``)
            r = r.astype(np.float64)
        if r.ndim != 2 or r.shape[1] != self.n_classes or self._ranked + len(r) > self.n:
            raise MetricInputError(
                f"rank() got a block of shape {r.shape} after {self._ranked} of {self.n} rows"
            )
        rows = np.arange(self._ranked, self._ranked + len(r), dtype=np.int64)
        columns = np.ascontiguousarray(r.T)  # a class's scores in one run of memory
        for c, plan in plans.items():
            v = columns[c]
            below = np.searchsorted(plan.unique, v, side="left")  # positive scores under v
            plan.greater += np.bincount(below, minlength=plan.greater.size)
            inside = np.flatnonzero(below < plan.unique.size)
            tie = inside[plan.unique[below[inside]] == v[inside]]
            if tie.size:  # rare: equal scores in float; ranked by row among themselves
                group = below[tie]
                first = np.searchsorted(plan.keys, group * self.n + rows[tie], side="left")
                np.add.at(plan.tied, first, 1)
                np.add.at(plan.tied, plan.group_end[group], -1)
        self._ranked += len(r)

    def _plan(self) -> dict[int, _ClassPlan]:
        """Close pass 1: each class's positives in rank order, and its counters for pass 2."""
        if self._plans is not None:
            return self._plans
        if not self.n:
            raise MetricInputError("need at least one video and one class; got none")
        cls, score, row = (np.concatenate(part) for part in zip(*self._positives, strict=True))
        self._positives = []
        order = np.lexsort((row, -score, cls))  # class, then descending score, then row
        cls, score, row = cls[order], score[order], row[order]
        bounds = np.searchsorted(cls, np.arange(self.n_classes + 1))
        self._plans = {}
        for c in np.flatnonzero(np.diff(bounds)):
            s, r = score[bounds[c] : bounds[c + 1]], row[bounds[c] : bounds[c + 1]]
            unique = np.unique(s)
            group = np.searchsorted(unique, s)
            keys = group.astype(np.int64) * self.n + r
            at_key = np.argsort(keys, kind="stable")
            sorted_keys = keys[at_key]
            self._plans[int(c)] = _ClassPlan(
                unique=unique,
                group=group,
                keys=sorted_keys,
                at_key=np.argsort(at_key),
                group_end=np.searchsorted(sorted_keys, (np.arange(unique.size) + 1) * self.n),
                greater=np.zeros(unique.size + 1, np.int64),
                tied=np.zeros(s.size + 1, np.int64),
            )
        return self._plans

    def _ranks(self, c: int) -> np.ndarray:
        """(p,) float64 rank of each positive of class ``c`` among all videos, rank order."""
        if self._ranked != self.n:
            raise MetricInputError(f"rank() saw {self._ranked} of the {self.n} rows counted")
        plan = self._plan()[c]
        above = np.cumsum(plan.greater[::-1])[::-1][1:]  # videos scoring above each group
        tied = np.cumsum(plan.tied)[:-1][plan.at_key]  # tied videos up to the positive's row
        return (above[plan.group] + tied).astype(np.float64)

    def stats(self, multilabel: bool | None = None) -> ClassStats:
        """Precision and recall at the rule (multi-label: score >= threshold; single-label:
        the best class; ``None``: single-label when every video has one positive), full-ranking
        AP (``nan`` without positives) and support."""
        multilabel = (not self.single_label) if multilabel is None else multilabel
        tp, n_predicted = self._tp[multilabel], self._predicted[multilabel]
        precision = np.divide(tp, n_predicted, out=np.zeros(tp.shape), where=n_predicted > 0)
        recall = np.divide(tp, self.support, out=np.zeros(tp.shape), where=self.support > 0)
        precision_sum = np.zeros(self.n_classes)
        for c in self._plan():
            ranks = self._ranks(c)
            precision_sum[c] = (np.arange(1, ranks.size + 1) / ranks).sum()
        ap = _ap_of_sums(precision_sum, self.support)
        return ClassStats(precision=precision, recall=recall, ap=ap, support=self.support.copy())

    def curve(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Class ``c``'s precision-recall curve: (precision, recall) at (1, 0), then at each
        positive in rank order, where recall rises. Drawn as steps, the area is the AP."""
        if not self.support[c]:
            raise MetricInputError("a precision-recall curve needs at least one positive")
        hits = np.arange(1, self.support[c] + 1, dtype=np.float64)
        precision = np.concatenate([[1.0], hits / self._ranks(c)])
        return precision, np.concatenate([[0.0], hits / hits[-1]])

    def confusion(self) -> np.ndarray:
        """(C, C) int64 counts, rows = true class, columns = the best class of the ranking."""
        if not self.single_label:
            raise MetricInputError("confusion_matrix needs exactly one positive label per video")
        c = self.n_classes
        flat = np.concatenate(self._true).astype(np.int64) * c + np.concatenate(self._best)
        return np.bincount(flat, minlength=c * c).reshape(c, c)


def _whole(scores: np.ndarray, labels: np.ndarray, ranking: np.ndarray) -> ClassRanks:
    """Both passes of :class:`ClassRanks` over whole arrays, as one block."""
    s, _ = _validate(scores, labels)
    ranks = ClassRanks(s.shape[1])
    ranks.count(s, ranking, labels)
    ranks.rank(ranking)
    return ranks
