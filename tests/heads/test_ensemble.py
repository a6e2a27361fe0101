"""`heads ensemble`: weighted mean of runs' test scores, refusing runs that do not match."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from heads import checkpoint as ck
from heads import ensemble, predictions
from heads.ensemble import YT8M_CSV, load_member
from heads.metrics import evaluate_all
from heads.predictions import NpzRows
from heads.synthetic import write_store
from tests.heads.stores import cluster_videos
from vidfeat_cli.heads import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds of one model on a store with a fixed split, plus a run on fewer classes."""
    root = tmp_path_factory.mktemp("ens")
    videos = cluster_videos(180, dim=16, n_classes=6, signal=0.5)
    splits = {v[0]: ("test", "val", "train", "train", "train")[i % 5] for i, v in enumerate(videos)}
    store = write_store(
        root / "s.zarr", videos, dim=16, attrs={"backbone": "synthetic"}, splits=splits
    )
    runner = CliRunner()
    made = {}
    for name, extra in (("a", ["--seed", "1"]), ("b", ["--seed", "2"])):
        made[name] = root / name
        args = ["train", str(store), "-m", "bof", "-o", str(made[name]), "--epochs", "15"]
        result = runner.invoke(main, [*args, "--batch-size", "16", "--pooling", "mean", *extra])
        assert result.exit_code == 0, result.output
    made["multi"] = root / "multi"  # a's settings, but sigmoid outputs
    args = ["train", str(store), "-m", "bof", "-o", str(made["multi"]), "--epochs", "1"]
    result = runner.invoke(main, [*args, "--batch-size", "16", "--loss", "multi"])
    assert result.exit_code == 0, result.output
    made["few"] = root / "few"
    args = ["train", str(store), "-m", "logistic", "-o", str(made["few"]), "--epochs", "1"]
    result = runner.invoke(main, [*args, "--classes", "class0,class1"])
    assert result.exit_code == 0, result.output
    return root, made


def _vocabulary(path, first_index: int = 0):
    """A YouTube-8M vocabulary CSV naming the fixture's 6 classes class0..class5."""
    names = [f"class{c}" for c in range(6)]
    indices = range(first_index, first_index + 6)
    table = pd.DataFrame({"Index": indices, "KnowledgeGraphId": "", "Name": names})
    table.to_csv(path, index=False)
    return path


def _member_gaps(run_dirs) -> list[float]:
    out = []
    for run in run_dirs:
        with np.load(run / f"{ck.TEST_PREDICTIONS}.npz") as data:
            out.append(evaluate_all(data["scores"], data["labels"])["gap_at_20"])
    return out


def test_gap_weighted_ensemble_of_two_seeds_beats_their_mean(runs):
    root, made = runs
    out = root / "ens"
    vocabulary = _vocabulary(root / "vocabulary.csv", first_index=10)
    args = ["ensemble", str(made["a"]), str(made["b"]), "--out", str(out), "--weights", "gap"]
    result = CliRunner().invoke(main, [*args, "--vocabulary", str(vocabulary)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / ck.TEST_METRICS).read_text())
    gaps = _member_gaps([made["a"], made["b"]])
    assert metrics["member_gap_at_20"] == pytest.approx(gaps)
    assert metrics["gap_at_20"] > np.mean(gaps)
    assert metrics["gap_at_20"] >= max(gaps) - 0.01
    # gap weights: each run's best validation GAP over their sum
    val = []
    for run in (made["a"], made["b"]):
        records = [json.loads(x) for x in (run / ck.METRICS).read_text().splitlines()]
        val.append([r for r in records if r["improved"]][-1]["val_gap_at_20"])
    assert metrics["weights"] == pytest.approx([v / sum(val) for v in val])
    table = pd.read_csv(out / YT8M_CSV)
    assert list(table.columns) == ["VideoId", "LabelConfidencePairs"]
    assert len(table) == metrics["n_test"] == 36
    indices = {int(x) for pairs in table["LabelConfidencePairs"] for x in pairs.split()[::2]}
    assert indices <= set(range(10, 16))  # vocabulary indices, not names
    assert (out / f"{ck.TEST_PREDICTIONS}.csv").is_file()
    # heads report takes the ensemble beside its members, with the classes' names.
    report_dir = root / "report"
    result = CliRunner().invoke(main, ["report", str(made["a"]), str(out), "-o", str(report_dir)])
    assert result.exit_code == 0, result.output
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    assert f"{metrics['gap_at_20']:.4f}" in md and "| class5 |" in md


def test_the_vocabulary_a_store_was_imported_with_serves_the_ensemble(tmp_path):
    # heads predict took the vocabulary recorded by import-yt8m --vocabulary; the ensemble of
    # runs on that store asked for --vocabulary and wrote no YouTube-8M CSV without it.
    videos = cluster_videos(60, dim=8, n_classes=3, signal=0.5)
    recorded = [[20 + c, f"class{c}"] for c in range(3)]
    store = write_store(tmp_path / "s.zarr", videos, dim=8, attrs={"vocabulary": recorded})
    runner = CliRunner()
    made = []
    for model in ("logistic", "bof"):
        made.append(str(tmp_path / model))
        args = ["train", str(store), "-m", model, "-o", made[-1], "--epochs", "1"]
        result = runner.invoke(main, [*args, "--batch-size", "8"])
        assert result.exit_code == 0, result.output
    out = tmp_path / "ens"
    result = runner.invoke(main, ["ensemble", *made, "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / YT8M_CSV)
    indices = {int(x) for pairs in table["LabelConfidencePairs"] for x in pairs.split()[::2]}
    assert indices and indices <= {20, 21, 22}


def test_equal_and_file_weights(runs, tmp_path):
    _, made = runs
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps([3, 1]))
    outs = {}
    for key, spec in (("equal", "equal"), ("file", str(weights))):
        outs[key] = tmp_path / key
        args = ["ensemble", str(made["a"]), str(made["b"]), "-o", str(outs[key])]
        result = CliRunner().invoke(main, [*args, "--weights", spec])
        assert result.exit_code == 0, result.output
    members = []
    for run in (made["a"], made["b"]):
        with np.load(run / f"{ck.TEST_PREDICTIONS}.npz") as data:
            order = np.argsort(data["video_id"])
            members.append(data["scores"][order])
    for key, w in (("equal", (0.5, 0.5)), ("file", (0.75, 0.25))):
        with np.load(outs[key] / f"{ck.TEST_PREDICTIONS}.npz") as data:
            np.testing.assert_allclose(
                data["scores"], w[0] * members[0] + w[1] * members[1], rtol=1e-6
            )


def test_blocks_of_videos_give_the_same_files_and_the_runs_stay_on_disk(
    runs, tmp_path, monkeypatch
):
    # The runs' (N, C) arrays are read where they lie and combined a block of videos at a
    # time: at YouTube-8M's scale they are gigabytes. The blocks change no byte of the output.
    _, made = runs
    with contextlib.ExitStack() as held:
        member = load_member(made["a"], held)
        assert isinstance(member.scores, NpzRows) and isinstance(member.ranking, NpzRows)
    vocabulary = _vocabulary(tmp_path / "vocabulary.csv")
    outs = {}
    for name, videos_per_block in (("one block", None), ("blocks of 5", 5)):
        if videos_per_block:
            monkeypatch.setattr(predictions, "BLOCK_VALUES", videos_per_block * 6)  # 6 classes
        outs[name] = tmp_path / name
        args = ["ensemble", str(made["a"]), str(made["b"]), "-o", str(outs[name])]
        result = CliRunner().invoke(
            main, [*args, "--weights", "gap", "--vocabulary", str(vocabulary)]
        )
        assert result.exit_code == 0, result.output
    files = sorted(p.name for p in outs["one block"].iterdir())
    assert YT8M_CSV in files and f"{ck.TEST_PREDICTIONS}.npz" in files
    assert files == sorted(p.name for p in outs["blocks of 5"].iterdir())
    for name in files:
        assert (outs["one block"] / name).read_bytes() == (outs["blocks of 5"] / name).read_bytes()


def test_a_late_failure_leaves_out_as_it_was(runs, tmp_path, monkeypatch):
    # Scores are written a block at a time; a failure on the way commits none of it: a new
    # --out is not left behind, and an ensemble replaced with --force keeps all its files.
    _, made = runs
    args = ["ensemble", str(made["a"]), str(made["b"]), "--weights", "gap"]
    earlier = tmp_path / "earlier"
    result = CliRunner().invoke(main, [*args, "-o", str(earlier)])
    assert result.exit_code == 0, result.output
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    monkeypatch.setattr(predictions, "BLOCK_VALUES", 5 * 6)  # 5 videos a block
    calls = []
    real_add = ensemble.PredictionsWriter.add

    def fails_on_the_third_block(self, rows, scored):
        calls.append(len(rows))
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_add(self, rows, scored)

    monkeypatch.setattr(ensemble.PredictionsWriter, "add", fails_on_the_third_block)
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(main, [*args, "-o", str(fresh)])
    assert result.exit_code != 0 and "disk full" in result.output
    assert not fresh.exists()
    result = CliRunner().invoke(main, [*args, "-o", str(earlier), "--force", "-w", "equal"])
    assert result.exit_code != 0
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


def test_a_replaced_ensemble_keeps_no_stale_submission_file(runs, tmp_path):
    _, made = runs
    out = tmp_path / "ens"
    vocabulary = _vocabulary(tmp_path / "vocabulary.csv")
    args = ["ensemble", str(made["a"]), str(made["b"]), "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--vocabulary", str(vocabulary)])
    assert result.exit_code == 0 and (out / YT8M_CSV).is_file()
    # Named classes and no vocabulary: no submission file, and not the earlier one either.
    result = CliRunner().invoke(main, [*args, "--force", "--weights", "gap"])
    assert result.exit_code == 0, result.output
    assert not (out / YT8M_CSV).exists()


def test_gap_weights_without_a_validation_gap_say_what_else_to_use(runs, tmp_path):
    _, made = runs
    unvalidated = tmp_path / "unvalidated"
    shutil.copytree(made["b"], unvalidated)
    (unvalidated / ck.METRICS).write_text("")  # trained without a validation split
    args = ["ensemble", str(made["a"]), str(unvalidated), "-o", str(tmp_path / "x")]
    result = CliRunner().invoke(main, [*args, "--weights", "gap"])
    assert result.exit_code == 2, result.output
    assert str(unvalidated) in result.output and "use --weights equal" in result.output
    assert CliRunner().invoke(main, args).exit_code == 0  # equal weights need no GAP


def _run_with_predictions(run, copy, change):
    """A copy of ``run`` whose test_predictions.npz holds ``change(saved arrays)``."""
    shutil.copytree(run, copy)
    path = copy / f"{ck.TEST_PREDICTIONS}.npz"
    with np.load(path) as data:
        saved = dict(data)
    np.savez(path, **change(saved))
    return copy


def test_a_run_without_test_videos_is_refused(runs, tmp_path):
    _, made = runs
    empty = _run_with_predictions(
        made["b"],
        tmp_path / "empty",
        lambda saved: {k: v[:0] if k != "class_names" else v for k, v in saved.items()},
    )
    args = ["ensemble", str(made["a"]), str(empty), "-o", str(tmp_path / "x")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "no test videos" in result.output, result.output


def test_saved_scores_of_another_shape_are_refused(runs, tmp_path):
    _, made = runs
    odd = _run_with_predictions(
        made["b"], tmp_path / "odd", lambda saved: {**saved, "ranking": saved["ranking"][:, :5]}
    )
    args = ["ensemble", str(made["a"]), str(odd), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "ranking is (36, 5), expected (36, 6)" in result.output


def test_confident_members_are_averaged_from_their_logits(runs, tmp_path):
    # Two sigmoid runs so sure of two classes per video that float32, and float64 too, round
    # both to 1.0: the ensemble averages in log space from the saved logits, which keep the
    # true class ahead on half the videos, where the rounded ones tie and fall to class order.
    _, made = runs
    members = []
    for name in ("m1", "m2"):
        shutil.copytree(made["multi"], tmp_path / name)
        path = tmp_path / name / f"{ck.TEST_PREDICTIONS}.npz"
        with np.load(path) as data:
            saved = dict(data)
        true = saved["labels"].argmax(axis=1)
        rows = np.arange(len(true))
        logits = np.full(saved["labels"].shape, -5.0, np.float32)
        ahead = rows % 2 == 0  # the true class leads on even rows, a neighbour on odd ones
        logits[rows, true] = np.where(ahead, 50.0, 45.0)
        logits[rows, (true + 1) % logits.shape[1]] = np.where(ahead, 45.0, 50.0)
        probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
        np.savez(path, **{**saved, "scores": probs.astype(np.float32), "ranking": logits})
        members.append(tmp_path / name)
    assert (np.load(members[0] / f"{ck.TEST_PREDICTIONS}.npz")["scores"].max(axis=1) == 1).all()
    out = tmp_path / "ens"
    result = CliRunner().invoke(main, ["ensemble", *map(str, members), "-o", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / ck.TEST_METRICS).read_text())
    assert metrics["hit_at_1"] == pytest.approx(np.mean(rows % 2 == 0))
    assert metrics["member_gap_at_20"][0] == pytest.approx(
        evaluate_all(logits, saved["labels"])["gap_at_20"]
    )


def test_runs_with_other_classes_are_refused(runs, tmp_path):
    _, made = runs
    args = ["ensemble", str(made["a"]), str(made["few"]), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    # Only what differs: "multilabel False vs False" was printed as if it did.
    assert (
        "different label maps (6 vs 2 classes, e.g. ['class2', 'class3', 'class4'] in one only)"
        in result.output
    )
    assert "multilabel" not in result.output
    assert not (tmp_path / "x").exists()
    # A mistyped run is named as missing, not as a run that may not have finished.
    typo = CliRunner().invoke(
        main, ["ensemble", str(made["a"]), str(tmp_path / "nope"), "-o", str(tmp_path / "y")]
    )
    assert (
        typo.exit_code == 2 and f"run directory {tmp_path / 'nope'} does not exist" in typo.output
    )


def test_runs_with_the_same_classes_in_another_order_are_read_in_the_first_ones(runs, tmp_path):
    # Two runs trained with --classes in two orders have the same classes in other columns:
    # they were refused ("in another order; train them with the same --classes").
    _, made = runs
    perm = np.array([3, 0, 5, 1, 4, 2])

    def reordered(saved):
        arrays = ("scores", "ranking", "labels", "class_names")
        return {k: (v[..., perm] if k in arrays else v) for k, v in saved.items()}

    other = _run_with_predictions(made["b"], tmp_path / "b_reordered", reordered)
    label_map = json.loads((other / ck.LABEL_MAP).read_text())
    label_map["labels"] = [label_map["labels"][i] for i in perm]
    (other / ck.LABEL_MAP).write_text(json.dumps(label_map))
    outs = {}
    for name, second in (("plain", made["b"]), ("reordered", other)):
        outs[name] = tmp_path / name
        args = ["ensemble", str(made["a"]), str(second), "-o", str(outs[name])]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    metrics = [json.loads((outs[n] / ck.TEST_METRICS).read_text()) for n in outs]
    for m in metrics:
        m.pop("members")
    assert metrics[0] == metrics[1]
    npz = [np.load(outs[n] / f"{ck.TEST_PREDICTIONS}.npz") for n in outs]
    for key in ("scores", "ranking", "labels", "class_names", "video_id"):
        np.testing.assert_array_equal(npz[0][key], npz[1][key])


def test_evaluating_an_ensemble_says_it_has_no_model(runs, tmp_path):
    # It said "checkpoint .../best.pt not found", as if the run were damaged.
    root, made = runs
    out = tmp_path / "ens"
    assert (
        CliRunner()
        .invoke(main, ["ensemble", str(made["a"]), str(made["b"]), "-o", str(out)])
        .exit_code
        == 0
    )
    for command in (["evaluate", str(out)], ["predict", str(out), "--store", str(root / "s.zarr")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert f"{out} is an ensemble" in result.output and str(made["a"]) in result.output
    # The folder above the runs (or a store) said "best.pt not found"; it names the runs in it.
    result = CliRunner().invoke(main, ["evaluate", str(root)])
    assert result.exit_code == 2
    assert f"{root} is not a heads run" in result.output and "the runs in it: a, b" in result.output


def test_a_truncated_prediction_file_is_a_one_line_error(runs, tmp_path):
    _, made = runs
    broken = tmp_path / "broken"
    shutil.copytree(made["b"], broken)
    npz = broken / f"{ck.TEST_PREDICTIONS}.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    args = ["ensemble", str(made["a"]), str(broken), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "cannot read test predictions" in result.output
    # A finished run without predictions had no test videos: said so, not "finished?".
    npz.unlink()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "its test split was empty" in result.output, result.output


def test_a_torn_metrics_line_is_skipped_and_a_damaged_one_named(runs, tmp_path):
    # A run killed mid-write leaves a torn last line: its earlier records still weigh it.
    _, made = runs
    torn = tmp_path / "torn"
    shutil.copytree(made["b"], torn)
    with (torn / ck.METRICS).open("a") as fh:
        fh.write('{"epoch": 99, "val_gap')
    args = ["ensemble", str(made["a"]), str(torn), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = (torn / ck.METRICS).read_text().splitlines()
    (torn / ck.METRICS).write_text("\n".join(["{not json", *lines]) + "\n")
    result = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "y")])
    assert result.exit_code == 2 and f"{ck.METRICS}:1: invalid JSON" in result.output, result.output


def test_runs_with_another_loss_are_refused(runs, tmp_path):
    # The same classes and test videos, but softmax against sigmoid scores.
    _, made = runs
    args = ["ensemble", str(made["a"]), str(made["multi"]), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "different losses" in result.output
    assert not (tmp_path / "x").exists()


def test_out_never_overwrites_a_run_and_an_ensemble_only_with_force(runs, tmp_path):
    _, made = runs
    before = (made["b"] / ck.TEST_METRICS).read_bytes()
    into_run = ["ensemble", str(made["a"]), str(made["b"]), "--out", str(made["b"])]
    result = CliRunner().invoke(main, into_run)
    assert result.exit_code == 2 and "holds a training run" in result.output
    assert (made["b"] / ck.TEST_METRICS).read_bytes() == before
    out = tmp_path / "ens"
    first = CliRunner().invoke(main, ["ensemble", str(made["a"]), str(made["b"]), "-o", str(out)])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, ["ensemble", str(made["a"]), str(made["b"]), "-o", str(out)])
    assert again.exit_code == 2 and "add --force" in again.output
    args = ["ensemble", str(made["a"]), str(made["b"]), "-o", str(out), "--weights", "gap"]
    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / ck.TEST_METRICS).read_text())["weights"] != [0.5, 0.5]
    # Nor does a training run go over an ensemble, even with --force: their files share names.
    ensemble = (out / ck.TEST_METRICS).read_bytes()
    for extra in ([], ["--force"]):
        args = ["train", str(runs[0] / "s.zarr"), "-m", "logistic", "-o", str(out), *extra]
        result = CliRunner().invoke(main, [*args, "--epochs", "1"])
        assert result.exit_code == 2 and "holds an ensemble's results" in result.output
        assert (out / ck.TEST_METRICS).read_bytes() == ensemble and not (out / ck.CONFIG).exists()
