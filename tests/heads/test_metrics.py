"""heads.metrics against independent implementations: scikit-learn, loop-based brute force,
a port of YouTube-8M's own evaluation code, and hand-computed examples."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from heads import metrics as m
from vidfeat.errors import VidfeatError

# ---------------------------------------------------------------- reference: YouTube-8M port
# Re-implements google/youtube-8m eval_util.py + average_precision_calculator.py (ap_at_n,
# top_k_by_class, MeanAveragePrecisionCalculator with filter_empty_classes=True). Its shuffle
# uses a private RNG here; on tie-free data the shuffle cannot change the result anyway.


def yt8m_ap_at_n(predictions, actuals, total_num_positives=None):
    predictions = np.asarray(predictions, dtype=np.float64)
    actuals = np.asarray(actuals, dtype=np.float64)
    if predictions.size == 0:
        return 0.0  # peek_ap_at_n on an empty heap
    shuffle = random.Random(0).sample(range(len(predictions)), len(predictions))
    predictions, actuals = predictions[shuffle], actuals[shuffle]
    sortidx = sorted(range(len(predictions)), key=lambda i: predictions[i], reverse=True)
    numpos = np.size(np.where(actuals > 0)) if total_num_positives is None else total_num_positives
    if numpos == 0:
        return 0.0
    ap, poscount = 0.0, 0.0
    for i, idx in enumerate(sortidx):
        if actuals[idx] > 0:
            poscount += 1
            ap += poscount / (i + 1) / numpos
    return ap


def yt8m_top_k_by_class(predictions, labels, k):
    k = min(k, predictions.shape[1])
    n_classes = predictions.shape[1]
    out_pred = [[] for _ in range(n_classes)]
    out_lab = [[] for _ in range(n_classes)]
    for v in range(predictions.shape[0]):
        for c in np.argpartition(predictions[v], -k)[-k:]:
            out_pred[c].append(predictions[v, c])
            out_lab[c].append(labels[v, c])
    return out_pred, out_lab, [labels[:, c].sum() for c in range(n_classes)]


def yt8m_gap(predictions, labels, k=20):
    p, a, npos = yt8m_top_k_by_class(predictions, labels, k)
    flat_p = [x for sub in p for x in sub]
    flat_a = [x for sub in a for x in sub]
    return yt8m_ap_at_n(flat_p, flat_a, sum(npos))


def yt8m_map(predictions, labels, k=20):
    p, a, npos = yt8m_top_k_by_class(predictions, labels, k)
    aps = [yt8m_ap_at_n(p[c], a[c], npos[c]) for c in range(len(npos)) if npos[c] > 0]
    return float(np.mean(aps))


def yt8m_hit_at_one(predictions, labels):
    return float(np.average(labels[np.arange(labels.shape[0]), np.argmax(predictions, 1)]))


def yt8m_perr(predictions, labels):
    total = 0.0
    for row in range(labels.shape[0]):
        n = int(labels[row].sum())
        top = np.argpartition(predictions[row], -n)[-n:]
        total += sum(labels[row, i] for i in top if predictions[row, i] > 0) / top.size
    return total / labels.shape[0]


# ---------------------------------------------------------------- reference: plain loops


def brute_top(scores_row, k):
    return sorted(range(len(scores_row)), key=lambda c: (-scores_row[c], c))[:k]


def brute_gap(scores, labels, k):
    pool = []
    for v in range(scores.shape[0]):
        pool += [(-scores[v, c], v, c, labels[v, c]) for c in brute_top(scores[v], k)]
    pool.sort()
    total, hits, ap = int(labels.sum()), 0, 0.0
    for rank, entry in enumerate(pool, start=1):
        if entry[3]:
            hits += 1
            ap += hits / rank
    return ap / total if total else 0.0


def brute_hit_at_k(scores, labels, k):
    n_hit = sum(any(labels[v, c] for c in brute_top(scores[v], k)) for v in range(len(scores)))
    return n_hit / len(scores)


def brute_perr(scores, labels):
    precisions = []
    for v in range(len(scores)):
        n = int(labels[v].sum())
        if n:
            precisions.append(sum(labels[v, c] for c in brute_top(scores[v], n)) / n)
    return sum(precisions) / len(precisions)


def random_case(seed, n=60, c=12, p_pos=0.15, every_row_positive=True):
    """Tie-free probabilities and sparse multi-labels."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n, c))
    labels = (rng.random((n, c)) < p_pos).astype(np.uint8)
    if every_row_positive:
        labels[np.arange(n), rng.integers(0, c, n)] = 1
    return scores, labels


# ---------------------------------------------------------------- agreement with YouTube-8M


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 20])
def test_matches_youtube8m_port(seed, k):
    scores, labels = random_case(seed)
    assert m.gap(scores, labels, k=k) == pytest.approx(yt8m_gap(scores, labels, k), abs=1e-12)
    assert m.mean_average_precision(scores, labels, top_k=k) == pytest.approx(
        yt8m_map(scores, labels, k), abs=1e-12
    )
    assert m.hit_at_k(scores, labels, 1) == pytest.approx(yt8m_hit_at_one(scores, labels))
    assert m.perr(scores, labels) == pytest.approx(yt8m_perr(scores, labels), abs=1e-12)


def test_ap_matches_tf_model_garden_expected_values():
    # Ranked lists and expected APs from TF Model Garden's yt8m eval_util_test.py.
    lists = [
        (
            [0.98, 0.88, 0.77, 0.65, 0.64, 0.59, 0.45, 0.43, 0.20, 0.05],
            [1, 1, 0, 0, 0, 1, 1, 0, 0, 1],
        ),
        ([0.878, 0.832, 0.759, 0.621, 0.458, 0.285, 0.134], [1, 0, 1, 0, 0, 1, 0]),
        ([0.98], [1]),
    ]
    for (scores, labels), expected in zip(lists, [0.714, 0.722, 1.0], strict=True):
        col = np.array(scores)[:, None], np.array(labels)[:, None]
        assert m.average_precision_per_class(*col)[0] == pytest.approx(expected, abs=5e-4)
    # A list without positives has no AP: YouTube-8M says 0, we exclude it (nan).
    assert np.isnan(m.average_precision_per_class([[0.56]], [[0]])[0])


# ---------------------------------------------------------------- agreement with brute force


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 5, 50])
def test_gap_and_hit_match_brute_force_with_unretrieved_positives(seed, k):
    # Dense labels and some label-less videos: many positives fall outside every top-k.
    scores, labels = random_case(seed, n=40, c=8, p_pos=0.4, every_row_positive=False)
    assert labels.sum() > labels.shape[0]  # more positives than any top-1 can retrieve
    assert m.gap(scores, labels, k=k) == pytest.approx(brute_gap(scores, labels, k), abs=1e-12)
    assert m.hit_at_k(scores, labels, k=k) == pytest.approx(brute_hit_at_k(scores, labels, k))
    assert m.perr(scores, labels) == pytest.approx(brute_perr(scores, labels), abs=1e-12)


def test_brute_force_agreement_holds_with_heavy_ties():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 3, size=(30, 6)) / 2.0  # only 3 distinct values
    labels = (rng.random((30, 6)) < 0.3).astype(np.uint8)
    for k in (1, 2, 4):
        assert m.gap(scores, labels, k=k) == pytest.approx(brute_gap(scores, labels, k))
        assert m.hit_at_k(scores, labels, k=k) == pytest.approx(brute_hit_at_k(scores, labels, k))
    assert m.perr(scores, labels) == pytest.approx(brute_perr(scores, labels))


# ---------------------------------------------------------------- agreement with scikit-learn


@pytest.mark.parametrize("seed", range(3))
def test_full_and_untruncated_map_match_sklearn(seed):
    scores, labels = random_case(seed, n=80, c=10, p_pos=0.2)
    labels[:, 3] = 0  # a class without positives must be excluded, not counted as 0
    per_class = [
        skm.average_precision_score(labels[:, c], scores[:, c]) for c in range(10) if c != 3
    ]
    aps = m.average_precision_per_class(scores, labels)
    assert np.isnan(aps[3])
    np.testing.assert_allclose(np.delete(aps, 3), per_class, atol=1e-12)
    assert m.mean_average_precision_full(scores, labels) == pytest.approx(np.mean(per_class))
    # With top_k >= C every positive is retrieved, so the YouTube-8M variant is plain mAP.
    assert m.mean_average_precision(scores, labels, top_k=10) == pytest.approx(np.mean(per_class))
    assert m.mean_average_precision(scores, labels, top_k=2) < np.mean(per_class)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_single_label_top_k_accuracy_matches_sklearn(k):
    rng = np.random.default_rng(k)
    y_true = rng.integers(0, 7, size=120)
    scores = rng.random((120, 7))
    onehot = np.eye(7, dtype=np.uint8)[y_true]
    expected = skm.top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(7))
    assert m.top_k_accuracy(scores, onehot, k=k) == pytest.approx(expected)


def test_confusion_matrix_and_single_label_precision_recall_match_sklearn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 5, size=90)
    y_true[:3] = [0, 1, 2]
    scores = rng.random((90, 6))  # class 5 never true: a column of zeros
    onehot = np.eye(6, dtype=np.uint8)[y_true]
    y_pred = scores.argmax(axis=1)
    cm = m.confusion_matrix(scores, onehot)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=np.arange(6)))
    assert cm.dtype == np.int64
    assert cm.sum() == 90
    stats = m.per_class_precision_recall(scores, onehot)
    p, r, _, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(6), zero_division=0
    )
    np.testing.assert_allclose(stats.precision, p)
    np.testing.assert_allclose(stats.recall, r)
    np.testing.assert_array_equal(stats.support, support)
    assert np.isnan(stats.ap[5])
    expected_ap = [skm.average_precision_score(onehot[:, c], scores[:, c]) for c in range(5)]
    np.testing.assert_allclose(stats.ap[:5], expected_ap)


def test_multilabel_precision_recall_thresholds_at_half_and_matches_sklearn():
    scores, labels = random_case(11, n=70, c=6, p_pos=0.3)
    stats = m.per_class_precision_recall(scores, labels)  # inferred multi-label
    p, r, _, _ = skm.precision_recall_fscore_support(
        labels, (scores >= 0.5).astype(int), average=None, zero_division=0
    )
    np.testing.assert_allclose(stats.precision, p)
    np.testing.assert_allclose(stats.recall, r)
    # Forcing single-label on the same data switches the rule to argmax.
    argmax_stats = m.per_class_precision_recall(scores, labels, multilabel=False)
    assert argmax_stats.precision.tolist() != stats.precision.tolist()


def test_precision_recall_curve_integrates_to_sklearn_ap():
    scores, labels = random_case(5, n=50, c=1, p_pos=0.3)
    precision, recall = m.precision_recall_curve(scores[:, 0], labels[:, 0])
    assert (precision[0], recall[0], recall[-1]) == (1.0, 0.0, 1.0)
    assert len(recall) == 1 + labels.sum() and (np.diff(recall) > 0).all()  # one per positive
    step_ap = float(np.sum(np.diff(recall) * precision[1:]))
    assert step_ap == pytest.approx(skm.average_precision_score(labels[:, 0], scores[:, 0]))
    with pytest.raises(m.MetricInputError, match="positive"):
        m.precision_recall_curve([0.2, 0.4], [0, 0])


# ---------------------------------------------------------------- hand-computed examples

TINY_SCORES = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.6]])
TINY_LABELS = np.array([[1, 0, 1], [0, 0, 1]])


def test_tiny_example_by_hand():
    # top-2 pool: (.9 +) (.8 -) (.6 +) (.5 -); video 0's class 2 is never retrieved -> 3 positives
    assert m.gap(TINY_SCORES, TINY_LABELS, k=2) == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m.gap(TINY_SCORES, TINY_LABELS, k=1) == pytest.approx((1 / 1) / 3)
    assert m.hit_at_k(TINY_SCORES, TINY_LABELS, k=1) == 0.5
    assert m.hit_at_k(TINY_SCORES, TINY_LABELS, k=2) == 1.0
    assert m.perr(TINY_SCORES, TINY_LABELS) == pytest.approx((1 / 2 + 0 / 1) / 2)
    # top-2 mAP: class 0 AP 1; class 1 has no positives; class 2 retrieves 1 of 2 positives.
    assert m.mean_average_precision(TINY_SCORES, TINY_LABELS, top_k=2) == pytest.approx(0.75)
    assert m.mean_average_precision_full(TINY_SCORES, TINY_LABELS) == pytest.approx(1.0)


def test_evaluate_all_combines_the_individual_metrics():
    scores, labels = random_case(2, n=50, c=30)
    result = m.evaluate_all(scores, labels)
    assert set(result) == {"hit_at_1", "top5", "gap_at_20", "mean_ap", "perr", "n"}
    assert result["n"] == 50
    assert result["hit_at_1"] == m.hit_at_k(scores, labels, 1)
    assert result["top5"] == m.top_k_accuracy(scores, labels, 5)
    assert result["gap_at_20"] == m.gap(scores, labels, 20)
    assert result["mean_ap"] == m.mean_average_precision(scores, labels, 20)
    assert result["perr"] == m.perr(scores, labels)
    assert result["gap_at_20"] != m.gap(scores, labels, 5)  # k matters with C=30


def test_metrics_depend_only_on_the_ranking():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(40, 9)) * 4
    labels = (rng.random((40, 9)) < 0.3).astype(np.uint8)
    probs = 1 / (1 + np.exp(-logits))
    res_logits, res_probs = m.evaluate_all(logits, labels), m.evaluate_all(probs, labels)
    for key, value in res_logits.items():
        assert value == pytest.approx(res_probs[key], abs=1e-12, nan_ok=True), key


# ---------------------------------------------------------------- ties and determinism


def test_ties_break_by_video_then_class_index():
    # Same score for both pooled entries: the earlier video is ranked first.
    scores = np.array([[0.5, 0.1], [0.5, 0.1]])
    assert m.gap(scores, [[0, 0], [1, 0]], k=1) == pytest.approx(0.5)
    assert m.gap(scores, [[1, 0], [0, 0]], k=1) == pytest.approx(1.0)
    # Within a video the lower class index wins.
    assert m.hit_at_k([[0.5, 0.5]], [[0, 1]], k=1) == 0.0
    assert m.hit_at_k([[0.5, 0.5]], [[1, 0]], k=1) == 1.0
    assert m.perr([[0.5, 0.5, 0.5]], [[0, 1, 1]]) == pytest.approx(0.5)


def test_tied_results_are_deterministic_and_leave_global_rngs_alone():
    rng = np.random.default_rng(9)
    scores = np.round(rng.random((200, 15)), 1)  # plenty of ties
    labels = (rng.random((200, 15)) < 0.2).astype(np.uint8)
    np.random.seed(123)
    random.seed(456)
    np_state, py_state = np.random.get_state(), random.getstate()
    first = m.evaluate_all(scores, labels)
    after_np, after_py = np.random.get_state(), random.getstate()
    assert all(np.array_equal(a, b) for a, b in zip(np_state, after_np, strict=True))
    assert py_state == after_py
    for seed in (0, 1, 2):
        np.random.seed(seed)
        random.seed(seed)
        assert m.evaluate_all(scores, labels) == first


# ---------------------------------------------------------------- edge cases


def test_label_less_videos_count_as_misses_for_hit_but_not_for_perr():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    labels = np.array([[1, 0], [0, 0], [0, 1]])
    assert m.hit_at_k(scores, labels, 1) == pytest.approx(2 / 3)
    assert m.perr(scores, labels) == pytest.approx(1.0)
    # Video 1's 0.8 is pooled as a negative, ranked second: (1/1 + 2/3) / 2.
    assert m.gap(scores, labels, k=1) == pytest.approx((1 + 2 / 3) / 2)


def test_no_positives_at_all():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    labels = np.zeros((2, 2))
    result = m.evaluate_all(scores, labels)
    assert result["hit_at_1"] == 0.0
    assert result["gap_at_20"] == 0.0  # YouTube-8M convention
    assert np.isnan(result["mean_ap"])
    assert np.isnan(result["perr"])


def test_k_larger_than_class_count_uses_all_classes():
    scores, labels = random_case(1, n=20, c=4)
    assert m.gap(scores, labels, k=100) == m.gap(scores, labels, k=4)
    assert m.hit_at_k(scores, labels, k=100) == 1.0


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs", "match"),
    [
        (np.zeros((3, 4)), np.zeros((3, 5)), {}, "shape mismatch"),
        (np.zeros(4), np.zeros(4), {}, "2-D"),
        (np.zeros((0, 4)), np.zeros((0, 4)), {}, "at least one video"),
        (np.zeros((2, 2)), np.array([[0, 2], [1, 0]]), {}, "binary"),
        (np.zeros((2, 2)), np.array([[0, 0.5], [1, 0]]), {}, "binary"),
        (np.array([[np.nan, 0], [1, 0]]), np.zeros((2, 2)), {}, "NaN"),
        (np.array([[np.inf, 0], [1, 0]]), np.zeros((2, 2)), {}, "infinite"),
        (np.array([["a", "b"]]), np.zeros((1, 2)), {}, "numeric"),
        (np.zeros((2, 2)), np.zeros((2, 2)), {"k": 0}, "k must be"),
        (np.zeros((2, 2)), np.zeros((2, 2)), {"k": 1.5}, "k must be"),
        (np.zeros((2, 2)), np.zeros((2, 2)), {"k": True}, "k must be"),
    ],
)
def test_invalid_input_raises_typed_error(scores, labels, kwargs, match):
    with pytest.raises(m.MetricInputError, match=match) as info:
        m.hit_at_k(scores, labels, **kwargs) if kwargs else m.evaluate_all(scores, labels)
    assert isinstance(info.value, VidfeatError) and isinstance(info.value, ValueError)


def test_parameter_validation_on_every_k_taking_function():
    s, y = TINY_SCORES, TINY_LABELS
    for call in (
        lambda: m.gap(s, y, k=-1),
        lambda: m.top_k_accuracy(s, y, k=0),
        lambda: m.mean_average_precision(s, y, top_k=0),
        lambda: m.average_precision_per_class(s, y, top_k=0),
    ):
        with pytest.raises(m.MetricInputError, match="must be an integer >= 1"):
            call()


def test_map_names_its_parameter_and_the_full_ranking_variant():
    with pytest.raises(m.MetricInputError, match=r"top_k .* None .*_full"):
        m.mean_average_precision(TINY_SCORES, TINY_LABELS, top_k=None)


def test_confusion_matrix_rejects_multilabel_rows():
    with pytest.raises(m.MetricInputError, match="exactly one positive"):
        m.confusion_matrix(TINY_SCORES, TINY_LABELS)


def test_rows_sorted_in_chunks_give_the_same_result(monkeypatch):
    scores, labels = random_case(6, n=37, c=5)
    expected = m.evaluate_all(scores, labels)
    monkeypatch.setattr(m, "_SORT_CHUNK_ELEMS", 11)  # 2 rows per chunk, ragged last chunk
    assert m.evaluate_all(scores, labels) == expected


def test_importing_metrics_does_not_import_torch():
    code = "import sys, heads.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_precision_recall_curve_takes_one_class_only():
    # (N, C) input was flattened and every (video, class) pair pooled as one class.
    scores, labels = np.random.default_rng(0).random((3, 2)), np.array([[1, 0], [0, 1], [1, 0]])
    with pytest.raises(m.MetricInputError, match="one class"):
        m.precision_recall_curve(scores, labels)
    precision, recall = m.precision_recall_curve(scores[:, 0], labels[:, 0])
    assert len(precision) == len(recall) == 3 and recall[-1] == 1.0  # the start, 2 positives


@pytest.mark.parametrize("seed", range(6))
def test_top_k_class_aps_equal_the_masked_full_ranking(seed):
    # The top-k path ranks only the N * k retrieved entries; the masked path ranks all (N, C).
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(40, 25)), seed % 3).astype(np.float32)  # many ties
    labels = rng.random((40, 25)) < 0.15
    s, y = m._validate(scores, labels)
    for k in (1, 4, 20, 25, 30):
        order = m.rank_classes(s, k)
        retrieved = np.zeros_like(y)
        np.put_along_axis(retrieved, order, True, axis=1)
        np.testing.assert_allclose(
            m._class_aps_top_k(s, y, order), m._class_aps(s, y, retrieved), rtol=1e-12
        )
    assert s.dtype == np.float32  # kept: no float64 copy of the scores
    assert m.evaluate_all(scores, labels) == m.evaluate_all(scores.astype(np.float64), labels)


@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_top_k_ranking_equals_the_head_of_a_full_stable_sort(decimals):
    # Partition then sort must keep YouTube-8M's order, ties by class index, even when the
    # k-th score ties with classes left out of the partition.
    rng = np.random.default_rng(decimals)
    scores = np.round(rng.normal(size=(200, 37)), decimals).astype(np.float32)
    scores[:20] = 0.5  # whole rows tied
    full = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 2, 5, 20, 36, 37, 50):
        np.testing.assert_array_equal(m.rank_classes(scores, k), full[:, :k])


def test_top_k_ranking_of_rows_with_fewer_than_k_numbers_matches_a_stable_sort():
    # Predictions rank scores that metrics would refuse: NaN sorts last, in class order.
    scores = np.array([[np.nan, 1.0, np.nan, np.nan, 0.5], [0.1, np.nan, 0.3, 0.2, 0.0]])
    full = np.argsort(-scores, axis=1, kind="stable")
    for k in (1, 2, 3, 4, 5):
        np.testing.assert_array_equal(m.rank_classes(scores, k), full[:, :k])
    with pytest.raises(m.MetricInputError, match="k must be"):
        m.rank_classes(scores, 0)


# ---------------------------------------------------------------- batch by batch


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, c = int(rng.integers(1, 60)), int(rng.integers(1, 45))
    if rng.random() < 0.5:
        scores = rng.integers(0, 4, (n, c)).astype(np.float32)  # ties everywhere
    else:
        scores = rng.normal(size=(n, c))
    return scores, rng.random((n, c)) < rng.choice([0.02, 0.1, 0.5])


def _batches(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """The rows 0..n-1 shuffled and cut into up to 5 batches, as a bucketing loader gives them."""
    order = rng.permutation(n)
    cuts = rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 5))), replace=False)
    return np.split(order, np.sort(cuts))


def _same_metrics(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float) and np.isnan(value):
            assert np.isnan(got[key]), key
        else:
            assert got[key] == value, key  # the same arithmetic in the same order


def test_streamed_batches_in_any_order_give_evaluate_all_of_the_whole_set():
    rng = np.random.default_rng(7)
    for _ in range(150):
        scores, labels = _random_case(rng)
        stream = m.MetricStream(scores.shape[1])
        for rows in _batches(rng, len(scores)):
            stream.add(rows, scores[rows], labels[rows])
        _same_metrics(stream.result(), m.evaluate_all(scores, labels))


def test_ranks_shares_merge_into_the_whole_and_must_cover_each_row_once():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(40, 12))
    labels = rng.random((40, 12)) < 0.2
    shares = []
    for rows in (np.arange(0, 40, 2), np.arange(1, 40, 2)):  # two ranks, interleaved rows
        share = m.MetricStream(12)
        share.add(rows, scores[rows], labels[rows])
        shares.append(share.state())
    _same_metrics(m.MetricStream.merged(shares, 40).result(), m.evaluate_all(scores, labels))
    with pytest.raises(RuntimeError, match="1 rows missing and 0 duplicated"):
        m.MetricStream.merged(shares, 41)
    with pytest.raises(RuntimeError, match="0 rows missing and 20 duplicated"):
        m.MetricStream.merged([*shares, shares[0]], 40)


def test_a_stream_refuses_what_evaluate_all_refuses():
    stream = m.MetricStream(3)
    with pytest.raises(m.NonFiniteScores):
        stream.add([0], np.array([[0.1, np.nan, 0.2]]), np.array([[1, 0, 0]]))
    with pytest.raises(m.MetricInputError, match="4 classes, expected 3"):
        stream.add([0], np.zeros((1, 4)), np.zeros((1, 4)))
    with pytest.raises(m.MetricInputError, match="got none"):
        stream.result()


# ---------------------------------------------------------------- per class, in blocks


def _class_ranks_in_blocks(scores, ranking, labels, step):
    ranks = m.ClassRanks(scores.shape[1])
    for i in range(0, len(scores), step):
        ranks.count(scores[i : i + step], ranking[i : i + step], labels[i : i + step])
    for i in range(0, len(scores), step):
        ranks.rank(ranking[i : i + step])
    return ranks


@pytest.mark.parametrize("seed", range(8))
def test_class_ranks_in_blocks_equal_the_whole_array_definitions(seed):
    # Scores rounded to few values: most positives tie with other videos, and with each other.
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 60)), int(rng.integers(1, 9))
    ranking = np.round(rng.normal(size=(n, c)), seed % 3).astype([np.float32, np.float64][seed % 2])
    ranking[rng.random((n, c)) < 0.1] = -0.0  # equal to 0.0 in every comparison
    scores = 1 / (1 + np.exp(-ranking.astype(np.float64)))
    labels = rng.random((n, c)) < 0.3
    s, y = m._validate(ranking, labels)
    expected_ap = m._class_aps(s, y, np.ones_like(y))
    for step in (1, 3, 7, n):
        ranks = _class_ranks_in_blocks(scores, ranking, labels, step)
        for multilabel in (True, False):
            stats = ranks.stats(multilabel)
            if multilabel:
                predicted = scores >= 0.5
            else:
                predicted = np.eye(c, dtype=bool)[ranking.argmax(axis=1)]
            tp, n_pred = (predicted & labels).sum(axis=0), predicted.sum(axis=0)
            np.testing.assert_array_equal(
                stats.precision, np.where(n_pred, tp / np.maximum(n_pred, 1), 0)
            )
            np.testing.assert_array_equal(stats.support, labels.sum(axis=0))
            np.testing.assert_allclose(stats.ap, expected_ap, rtol=1e-12)
        for k in np.flatnonzero(labels.any(axis=0)):
            order = np.argsort(-ranking[:, k], kind="stable")
            hits = labels[order, k]
            at_hits = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
            precision, recall = ranks.curve(k)
            np.testing.assert_allclose(precision[1:], at_hits, rtol=1e-12)
            np.testing.assert_allclose(recall[1:], np.arange(1, hits.sum() + 1) / hits.sum())


def test_class_ranks_ap_and_curve_match_sklearn_without_ties():
    scores, labels = random_case(21, n=200, c=7, p_pos=0.2)
    ranks = _class_ranks_in_blocks(scores, scores, labels, 16)
    stats = ranks.stats()
    expected = [skm.average_precision_score(labels[:, k], scores[:, k]) for k in range(7)]
    np.testing.assert_allclose(stats.ap, expected, rtol=1e-12)
    precision, recall = ranks.curve(3)
    assert float(np.sum(np.diff(recall) * precision[1:])) == pytest.approx(expected[3])


def test_class_ranks_refuse_passes_out_of_order():
    scores, labels = random_case(2, n=10, c=3)
    ranks = m.ClassRanks(3)
    ranks.count(scores[:6], scores[:6], labels[:6])
    ranks.count(scores[6:], scores[6:], labels[6:])
    ranks.rank(scores[:6])
    with pytest.raises(m.MetricInputError, match="6 of the 10 rows"):
        ranks.stats()
    with pytest.raises(m.MetricInputError, match="pass 1 is over"):
        ranks.count(scores, scores, labels)
    with pytest.raises(m.MetricInputError, match="after 6 of 10 rows"):
        ranks.rank(scores)  # more rows than pass 1 counted
    with pytest.raises(m.MetricInputError, match="at least one video"):
        m.ClassRanks(3).stats()
    labels[0] = [1, 1, 0]  # a video with two labels: no confusion matrix
    multi = m.ClassRanks(3)
    multi.count(scores, scores, labels)
    assert not multi.single_label
    with pytest.raises(m.MetricInputError, match="one positive"):
        multi.confusion()
    with pytest.raises(m.MetricInputError, match="2-D"):
        m.confusion_matrix(np.float64(1.0), np.float64(1.0))
