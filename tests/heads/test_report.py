"""heads.report on fake run directories laid out per the run-directory contract."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from heads import figures, predictions, report
from heads.errors import ReportError
from vidfeat.errors import VidfeatError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["walk", "run", "jump|hop", "swim"]  # "|" must be escaped in Markdown tables


def make_run(
    root: Path,
    name: str,
    *,
    seed: int,
    model: str | None = "lstm",
    n_epochs: int = 6,
    best: int = 4,
    classes: list[str] = CLASSES,
    multilabel: bool = False,
    n_test: int = 40,
    with_test_metrics: bool = True,
    with_predictions: bool = True,
) -> dict:
    """Write a complete run directory with synthetic numbers; return what was written."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir(parents=True)
    config = {
        "head": {"hidden_size": 32, "num_layers": 1},
        "epochs": n_epochs,
        "store": {"path": "f.zarr", "dim": 2048, "dtype": "float32", "attrs": {"model": "inc"}},
    }
    if model is not None:
        config["model"] = model
    (run / "config.json").write_text(json.dumps(config))
    (run / "label_map.json").write_text(json.dumps({"labels": classes, "multilabel": multilabel}))
    ids = [f"vid{i:03d}" for i in range(n_test)]
    (run / "split.csv").write_text("video_id,split\n" + "".join(f"{v},test\n" for v in ids))

    epochs = []
    lowest = np.inf
    for e in range(1, n_epochs + 1):
        val_loss = 1.0 + 0.1 * abs(e - best) + 0.01 * rng.random()
        improved, lowest = val_loss < lowest, min(lowest, val_loss)  # as the trainer marks it
        epochs.append(
            {
                "epoch": e,
                "train_loss": 2.0 / e,
                "val_loss": val_loss,
                "train_hit_at_1": 1 - 1 / (e + 1),
                "val_hit_at_1": 0.5 + 0.05 * e * rng.random(),
                "val_gap_at_20": 0.4,
                "lr": 1e-3,
                "wall_s": 10.0 + e,
                "trainable_params": 12345 * seed,
                "improved": bool(improved),
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))

    c = len(classes)
    # Every class present, supports uneven so "top classes by support" is meaningful.
    y_true = rng.permutation(np.concatenate([np.arange(c), rng.integers(0, c, n_test - c)]))
    labels = np.eye(c, dtype=np.uint8)[y_true]
    if multilabel:
        labels |= (rng.random((n_test, c)) < 0.3).astype(np.uint8)
    # Mostly correct predictions with some confusions.
    y_pred = np.where(rng.random(n_test) < 0.7, y_true, rng.integers(0, c, n_test))
    scores = (rng.random((n_test, c)) * 0.4 + 0.6 * np.eye(c)[y_pred]).astype(np.float32)
    if with_predictions:
        np.savez(run / "test_predictions.npz", video_id=np.array(ids), scores=scores, labels=labels)
    test_metrics = {
        "hit_at_1": 0.6123,
        "top5": 0.95,
        "gap_at_20": 0.5432,
        "mean_ap": 0.4321,
        "perr": 0.55,
        "n_test": n_test,
        "train_wall_s": 123.4,  # the trainer's own total, preferred over summing epochs
        "best_epoch": best,
    }
    if with_test_metrics:
        (run / "test_metrics.json").write_text(json.dumps(test_metrics))
    return {
        "dir": run,
        "epochs": epochs,
        "scores": scores,
        "labels": labels,
        "y_true": y_true,
        "y_pred": y_pred,
        "test_metrics": test_metrics,
    }


def assert_png(path: Path, min_kb: float = 10) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_kb * 1024, (path, len(data))
    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert height > 300 and width > 400, (path, image.shape)
    assert image[..., :3].std() > 0.01  # not a blank canvas
    return height, width


def table_row(md: str, first_cell: str, after: str = "") -> list[str]:
    """Cells of the first table row starting with first_cell, searched after ``after``."""
    for line in md[md.index(after) :].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def test_single_run_report(tmp_path):
    run = make_run(tmp_path / "runs", "lstm_a", seed=1)
    out = tmp_path / "report"
    md_path = report.write_report([run["dir"]], out)
    assert md_path == out / "report.md"
    md = md_path.read_text(encoding="utf-8")

    for png in ("lstm_a_training.png", "lstm_a_confusion.png", "lstm_a_pr_curves.png"):
        assert f"]({png})" in md
        assert_png(out / png)
    assert not (out / "comparison_val_curves.png").exists()
    h, w = assert_png(out / "lstm_a_confusion.png")
    assert w > 1.5 * h  # counts and row-normalised side by side

    # Summary row: values from test_metrics.json / metrics.jsonl / config.json.
    assert table_row(md, "lstm_a") == [
        "lstm_a", "lstm", "0.6123", "0.5432", "0.4321", "4", "123.4", "12,345"
    ]  # fmt: skip

    # Per-class table, recomputed here with plain counting and scikit-learn's AP.
    y_true, y_pred = run["y_true"], run["y_pred"]
    for c, name in enumerate(CLASSES):
        tp = int(np.sum((y_true == c) & (y_pred == c)))
        precision = tp / max(int(np.sum(y_pred == c)), 1)
        recall = tp / int(np.sum(y_true == c))
        ap = average_precision_score(run["labels"][:, c], run["scores"][:, c])
        row = table_row(md, name.replace("|", "\\|"), after="| class | precision")
        assert row[1:] == [
            f"{precision:.4f}", f"{recall:.4f}", f"{ap:.4f}", str(int(np.sum(y_true == c)))
        ]  # fmt: skip
    assert "argmax (single-label)" in md


def test_two_runs_compared_with_missing_fields(tmp_path):
    a = make_run(tmp_path / "x", "gru", seed=2, model="gru", best=2)
    b = make_run(
        tmp_path / "y", "bof", seed=3, model=None, best=5,
        with_test_metrics=False, with_predictions=False,
    )  # fmt: skip
    out = tmp_path / "out"
    md = report.write_report([a["dir"], b["dir"]], out).read_text(encoding="utf-8")

    assert "](comparison_val_curves.png)" in md
    assert_png(out / "comparison_val_curves.png")
    for slug in ("gru", "bof"):
        assert_png(out / f"{slug}_training.png")
        assert f"## Run {slug}\n" in md
    assert (out / "gru_confusion.png").exists() and not (out / "bof_confusion.png").exists()
    assert table_row(md, "gru")[1:6] == ["gru", "0.6123", "0.5432", "0.4321", "2"]
    # bof has no model in config.json and no test_metrics.json.
    assert table_row(md, "bof")[1:6] == ["—", "—", "—", "—", "5"]
    # Without test_metrics.json, totals come from metrics.jsonl.
    assert table_row(md, "bof")[6] == f"{sum(r['wall_s'] for r in b['epochs']):.1f}"
    assert table_row(md, "bof")[7] == f"{12345 * 3:,}"
    summary = md.split("## Run")[0]
    assert summary.index("| gru |") < summary.index("| bof |")  # runs keep the given order


def test_multilabel_run_has_no_confusion_matrix(tmp_path):
    run = make_run(tmp_path, "moe", seed=4, multilabel=True)
    out = tmp_path / "out"
    md = report.write_report([run["dir"]], out).read_text(encoding="utf-8")
    assert not (out / "moe_confusion.png").exists()
    assert_png(out / "moe_pr_curves.png")
    assert "score ≥ 0.5 (multi-label)" in md
    precision = np.sum((run["scores"][:, 0] >= 0.5) & (run["labels"][:, 0] == 1)) / np.sum(
        run["scores"][:, 0] >= 0.5
    )
    assert table_row(md, "walk", after="| class |")[1] == f"{precision:.4f}"


def test_many_classes_get_one_pr_panel_each_for_the_largest(tmp_path, monkeypatch):
    classes = [f"class_{i:02d}" for i in range(60)]
    run = make_run(tmp_path, "big", seed=5, classes=classes, n_test=300)
    seen = {}
    original_save = figures._save

    def spy(fig, path, spec):
        if "pr_curves" not in path.name:
            return original_save(fig, path, spec)
        panels = [ax for ax in fig.axes if ax.get_visible()]
        curves = [(ax.get_title(), *ax.get_lines()[0].get_data()) for ax in panels]
        seen[path.name] = (fig.get_suptitle(), curves)
        original_save(fig, path, spec)

    monkeypatch.setattr(figures, "_save", spy)
    report.write_report([run["dir"]], tmp_path / "out")
    title, curves = seen["big_pr_curves.png"]
    assert len(curves) == figures.MAX_PR_PANELS == 16
    assert "top 16 of 60" in title
    support = np.bincount(run["y_true"], minlength=60)
    top_names = [classes[c] for c in np.argsort(-support, kind="stable")[:16]]
    assert [t.split("\n")[0] for t, _, _ in curves] == top_names
    # Each panel's curve is drawn as steps whose area is the AP printed in its title.
    for name, (panel_title, recall, precision) in zip(top_names, curves, strict=True):
        c = classes.index(name)
        ap = average_precision_score(run["labels"][:, c], run["scores"][:, c])
        assert f"AP {ap:.3f}, n={support[c]}" in panel_title
        assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(ap)
    assert_png(tmp_path / "out" / "big_confusion.png")


def test_resumed_and_torn_metrics_log(tmp_path):
    run = make_run(tmp_path, "resumed", seed=6, best=4, with_test_metrics=False)
    log_path = run["dir"] / "metrics.jsonl"
    # Resume re-ran epoch 2 with a much lower val loss (the trainer marked it), then the
    # process died mid-line.
    redo = dict(run["epochs"][1], val_loss=0.01, improved=True)
    log_path.write_text(log_path.read_text() + json.dumps(redo) + "\n" + '{"epoch": 7, "val_')
    md = report.write_report([run["dir"]], tmp_path / "out").read_text(encoding="utf-8")
    assert table_row(md, "resumed")[5] == "2"
    wall = sum(r["wall_s"] for r in run["epochs"])  # epoch 2 counted once
    assert table_row(md, "resumed")[6] == f"{wall:.1f}"


def test_run_with_only_config_still_reports(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    # The store's provenance may name the backbone; only the head's model name counts.
    config = {"store": {"model": "inception_v3", "dim": 2048}, "train": {"model": "attention"}}
    (run / "config.json").write_text(json.dumps(config))
    md = report.write_report([run], tmp_path / "out").read_text(encoding="utf-8")
    assert table_row(md, "bare")[1:] == ["attention", "—", "—", "—", "—", "—", "—"]
    assert "training curves omitted" in md
    assert "per-class results omitted" in md


def test_same_folder_names_get_distinct_plot_files(tmp_path):
    a = make_run(tmp_path / "one", "run", seed=7, with_predictions=False)
    b = make_run(tmp_path / "two", "run", seed=8)
    out = tmp_path / "out"
    md = report.write_report([a["dir"], b["dir"]], out).read_text(encoding="utf-8")
    assert (out / "one_run_training.png").exists() and (out / "two_run_training.png").exists()
    assert "](two_run_confusion.png)" in md
    assert not (out / "one_run_confusion.png").exists()  # the first run has no predictions
    # Shown as one/run and two/run (they were both "run", in the table and the headings).
    assert table_row(md, "one/run") and table_row(md, "two/run")
    assert "## Run one/run\n" in md and "## Run two/run\n" in md


def _spy_figures(monkeypatch) -> dict:
    """What each figure drew, by file name: its axes' titles, tick labels, lines and images."""
    seen = {}
    original_save = figures._save

    def spy(fig, path, spec):
        seen[path.name] = {
            "suptitle": fig.get_suptitle(),
            "titles": [ax.get_title() for ax in fig.axes],
            "xticks": [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes],
            "xtick_values": [list(ax.get_xticks()) for ax in fig.axes],
            "yticks": [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes],
            "images": [ax.images[0].get_array() for ax in fig.axes if ax.images],
        }
        original_save(fig, path, spec)

    monkeypatch.setattr(figures, "_save", spy)
    return seen


def test_many_classes_show_the_most_confused_classes_and_pairs(tmp_path, monkeypatch):
    # At 300 classes a full matrix was a scatter of sub-pixel cells without names.
    classes = [f"class_{i:03d}" for i in range(300)]
    run = make_run(tmp_path, "many", seed=11, classes=classes, n_test=900)
    seen = _spy_figures(monkeypatch)
    md = report.write_report([run["dir"]], tmp_path / "out").read_text(encoding="utf-8")
    cm = np.zeros((300, 300), int)
    np.add.at(cm, (run["y_true"], run["y_pred"]), 1)
    drawn = seen["many_confusion.png"]
    counts = np.asarray(drawn["images"][0])
    assert (
        counts.shape == (20, 21) and "20 of 300 classes with the most errors" in drawn["suptitle"]
    )
    rows = [classes.index(name) for name in drawn["yticks"][0]]
    errors = cm.sum(0) + cm.sum(1) - 2 * np.diag(cm)
    assert min(errors[rows]) >= max(np.delete(errors, rows))  # the classes with most errors
    assert drawn["xticks"][0][-1] == "(any other class)"
    np.testing.assert_array_equal(counts[:, :20], cm[np.ix_(rows, rows)])
    np.testing.assert_array_equal(counts.sum(axis=1), cm[rows].sum(axis=1))  # rows stay whole
    # The most frequent confusion heads its table.
    off = cm - np.diag(np.diag(cm))
    t, p = np.unravel_index(np.argmax(off), cm.shape)
    top = table_row(md, classes[t], after="Most frequent confusions")
    assert top[1:3] == [classes[p], str(off[t, p])]
    # The per-class table lists the classes with most test videos first.
    body = md[md.index("| class | precision") :].splitlines()[2]
    assert body.split(" | ")[0].strip("| ") == classes[int(np.argmax(np.bincount(run["y_true"])))]


def test_tiny_metrics_are_not_printed_as_zero(tmp_path):
    run = make_run(tmp_path, "tiny", seed=15)
    metrics = json.loads((run["dir"] / "test_metrics.json").read_text())
    (run["dir"] / "test_metrics.json").write_text(json.dumps({**metrics, "gap_at_20": 2.6e-05}))
    md = report.write_report([run["dir"]], tmp_path / "out").read_text(encoding="utf-8")
    assert table_row(md, "tiny")[3] == "2.6e-05"


def test_per_class_ap_states_its_mean_beside_the_youtube8m_map(tmp_path):
    run = make_run(tmp_path, "aps", seed=12)
    md = report.write_report([run["dir"]], tmp_path / "out").read_text(encoding="utf-8")
    aps = [
        average_precision_score(run["labels"][:, c], run["scores"][:, c])
        for c in range(len(CLASSES))
    ]
    assert f"Their mean over classes with positives, {np.mean(aps):.4f}, is the full-ranking" in md
    assert "only each video's top 20 classes, and it too averages over the classes" in md


def test_curves_show_the_monitored_metric_and_gap(tmp_path, monkeypatch):
    run = make_run(tmp_path, "mon", seed=13, n_epochs=1, best=1)  # a single evaluation
    config = json.loads((run["dir"] / "config.json").read_text())
    config["monitor"] = "val_mean_ap"
    (run["dir"] / "config.json").write_text(json.dumps(config))
    records = [dict(r, val_mean_ap=0.3) for r in run["epochs"]]
    (run["dir"] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    seen = _spy_figures(monkeypatch)
    report.write_report([run["dir"]], tmp_path / "out")
    drawn = seen["mon_training.png"]
    titles = [t for t in drawn["titles"] if t]
    assert [t.split(" ")[0] for t in titles] == ["hit@1", "loss", "mAP", "GAP@20"]
    assert titles[2].endswith("(early stopping)")
    # One evaluation: the epoch axis ticks whole epochs (it showed 0.95, 0.96, ...).
    assert all(float(v).is_integer() for v in drawn["xtick_values"][0])


def test_long_and_markup_names_are_cut_in_figures_and_escaped_in_markdown(tmp_path, monkeypatch):
    long = "a very long class name that describes the whole scene in words"
    classes = [long, "*starred*", "<b>bold</b>", "plain"]
    run = make_run(tmp_path, "names", seed=14, classes=classes, n_test=20)
    seen = _spy_figures(monkeypatch)
    md = report.write_report([run["dir"]], tmp_path / "out").read_text(encoding="utf-8")
    ticks = seen["names_confusion.png"]["yticks"][0]
    assert ticks[0] == figures.short(long) and len(ticks[0]) == figures.MAX_LABEL_CHARS
    assert ticks[0].endswith("…") and ticks[1] == "*starred*"
    assert table_row(md, long, after="| class |")  # whole in the table
    assert table_row(md, "\\*starred\\*", after="| class |")
    assert table_row(md, "\\<b\\>bold\\</b\\>", after="| class |")


def test_a_softmax_run_on_multilabel_data_is_judged_by_argmax(tmp_path):
    # --loss single trains softmax outputs even where videos carry several labels: a 0.5
    # threshold would call most positives missed.
    run = make_run(tmp_path, "soft", seed=4, multilabel=True)
    config = json.loads((run["dir"] / "config.json").read_text())
    (run["dir"] / "config.json").write_text(json.dumps({**config, "loss": "single"}))
    out = tmp_path / "out"
    md = report.write_report([run["dir"]], out).read_text(encoding="utf-8")
    assert "argmax (single-label)" in md and "multi-label)" not in md
    assert not (out / "soft_confusion.png").exists()  # undefined with several true classes
    # Precision of class 0 under argmax: videos whose best score is class 0.
    picked = run["scores"].argmax(axis=1) == 0
    precision = np.sum(picked & (run["labels"][:, 0] == 1)) / np.sum(picked)
    assert table_row(md, "walk", after="| class |")[1] == f"{precision:.4f}"


def test_names_with_dollar_signs_and_other_scripts_are_drawn_as_text(tmp_path):
    # matplotlib reads "$...$" as mathtext: "a $\\x$ b" made it raise, "US$ and $5" lost its
    # spaces. A run name may hold them too.
    classes = ["a $\\x$ b", "US$ and $5", "日本", "plain"]
    run = make_run(tmp_path, "run $1", seed=3, classes=classes, n_test=12)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no glyph warnings either
        md = report.write_report([run["dir"]], out).read_text(encoding="utf-8")
    assert_png(out / "run_1_confusion.png")
    assert_png(out / "run_1_pr_curves.png")
    assert table_row(md, "US\\$ and \\$5", after="| class |")  # not maths on GitHub


def test_invalid_inputs_raise_report_error(tmp_path):
    with pytest.raises(ReportError, match="no run directories"):
        report.write_report([], tmp_path / "out")
    with pytest.raises(ReportError, match="not found"):
        report.write_report([tmp_path / "missing"], tmp_path / "out")
    run = make_run(tmp_path, "bad", seed=9)
    (run["dir"] / "label_map.json").write_text(json.dumps({"labels": ["a", "b"]}))
    with pytest.raises(ReportError, match="2 labels but"):
        report.write_report([run["dir"]], tmp_path / "out")
    (run["dir"] / "label_map.json").write_text("{not json")
    with pytest.raises(ReportError, match="cannot read JSON") as info:
        report.write_report([run["dir"]], tmp_path / "out")
    assert isinstance(info.value, VidfeatError)
    assert not (tmp_path / "out" / "report.md").exists()


def test_figures_for_a_paper_pdf_svg_and_dpi(tmp_path, monkeypatch):
    run = make_run(tmp_path / "runs", "paper", seed=7, n_test=12)  # counts of 0..4 per cell
    seen = {}
    original_save = figures._save

    def spy(fig, path, spec):
        if "confusion" in path.name:
            counts, rates, counts_bar, _ = fig.axes
            seen["ticks"] = [
                t for t in counts_bar.get_yticks() if 0 <= t <= counts.images[0].norm.vmax
            ]
            seen["rates"] = rates.images[0].get_array()
            seen["rate_texts"] = [t.get_text() for t in rates.texts]
        original_save(fig, path, spec)

    monkeypatch.setattr(figures, "_save", spy)
    md = report.write_report([run["dir"]], tmp_path / "pdf", fmt="pdf").read_text()
    for stem in ("paper_training", "paper_confusion", "paper_pr_curves"):
        assert f" (PDF)]({stem}.pdf)" in md
        assert (tmp_path / "pdf" / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    assert "![" not in md  # links, not images: Markdown viewers show no PDF inline
    assert seen["ticks"] and all(float(t).is_integer() for t in seen["ticks"])
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (run["y_true"], run["y_pred"]), 1)
    # Empty cells are masked (drawn blank) and carry no "0.00"; the others show their rate.
    assert np.array_equal(np.ma.getmaskarray(seen["rates"]), cm == 0)
    assert len(seen["rate_texts"]) == int((cm > 0).sum()) and "0.00" not in seen["rate_texts"]

    report.write_report([run["dir"]], tmp_path / "svg", fmt="svg")
    assert b"<svg" in (tmp_path / "svg" / "paper_confusion.svg").read_bytes()[:2000]
    report.write_report([run["dir"]], tmp_path / "lo", dpi=60)
    report.write_report([run["dir"]], tmp_path / "hi", dpi=120)
    lo = mpimg.imread(tmp_path / "lo" / "paper_training.png").shape
    hi = mpimg.imread(tmp_path / "hi" / "paper_training.png").shape
    assert hi[1] == pytest.approx(2 * lo[1], abs=2)
    with pytest.raises(ReportError, match="png, pdf, svg"):
        report.write_report([run["dir"]], tmp_path / "x", fmt="jpg")


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="neither a heads run nor an ensemble"):
        report.write_report([tmp_path / "empty"], tmp_path / "out")
    run = make_run(tmp_path / "runs", "torn", seed=8)
    npz = run["dir"] / "test_predictions.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(ReportError, match="cannot read test predictions"):
        report.write_report([run["dir"]], tmp_path / "out")


def test_step_based_runs_plot_every_evaluation_against_its_step(tmp_path, monkeypatch):
    # --eval-every 5 for 30 steps, all within epoch 1: six evaluations, best at step 20.
    run = tmp_path / "steps"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "gru", "eval_every": 5}))
    records = [
        {
            "epoch": 1,
            "step": step,
            "train_loss": 1.0 / step,
            "val_loss": abs(step - 20) / 10 + 0.5,
            "train_hit_at_1": step / 40,
            "val_hit_at_1": 0.5,
            "wall_s": 1.0,
            "improved": step <= 20,
        }
        for step in range(5, 35, 5)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    seen = {}
    original_save = figures._save

    def spy(fig, path, spec):
        ax = fig.axes[1]  # the loss panel
        seen[path.name] = (ax.get_xlabel(), [line.get_data() for line in ax.get_lines()])
        original_save(fig, path, spec)

    monkeypatch.setattr(figures, "_save", spy)
    report.write_report([run], tmp_path / "out")
    xlabel, lines = seen["steps_training.png"]
    assert xlabel == "step"
    train, val, best = lines
    assert list(train[0]) == list(val[0]) == [5, 10, 15, 20, 25, 30]
    assert list(val[1]) == [r["val_loss"] for r in records]
    assert list(best[0]) == [20, 20]  # the best evaluation's marker


def test_predictions_read_a_block_of_rows_at_a_time_give_the_same_report(tmp_path, monkeypatch):
    # A YouTube-8M-sized test split is gigabytes per (N, C) array: the report reads rows.
    classes = [f"c{i:02d}" for i in range(12)]
    # report.md is compared; drawing the figures' pixels would take most of the test's time.
    monkeypatch.setattr(figures, "_save", lambda fig, path, spec: figures.plt.close(fig))
    for multilabel in (False, True):
        name = f"blocks_{multilabel}"
        run = make_run(tmp_path, name, seed=12, classes=classes, n_test=120, multilabel=multilabel)
        whole = report.write_report([run["dir"]], tmp_path / f"{name}_whole").read_text()
        with monkeypatch.context() as patch:
            patch.setattr(predictions, "BLOCK_VALUES", 7 * 12)  # 7 videos a block, the last 1
            read = []
            original = predictions.NpzRows.__getitem__

            def spy(self, rows, original=original, read=read):
                read.append(len(rows))
                return original(self, rows)

            patch.setattr(predictions.NpzRows, "__getitem__", spy)
            blocks = report.write_report([run["dir"]], tmp_path / f"{name}_blocks").read_text()
        # Two passes: 3 arrays 7 rows at a time, then the ranking in blocks 8 times larger.
        assert sorted(set(read)) == [1, 7, 8, 56] and sum(read) == 120 * 4
        assert blocks == whole


def test_predictions_of_unequal_shapes_are_refused(tmp_path):
    run = make_run(tmp_path, "unequal", seed=13)
    path = run["dir"] / "test_predictions.npz"
    np.savez(path, scores=run["scores"], labels=run["labels"][:-1])
    with pytest.raises(ReportError, match="differ in shape"):
        report.write_report([run["dir"]], tmp_path / "out")
    np.savez(path, scores=run["scores"][:, 0], labels=run["labels"][:, 0])
    with pytest.raises(ReportError, match="must be 2-D"):
        report.write_report([run["dir"]], tmp_path / "out")
    np.savez(path, scores=run["scores"][:0], labels=run["labels"][:0])
    with pytest.raises(ReportError, match="no test video"):
        report.write_report([run["dir"]], tmp_path / "out")
