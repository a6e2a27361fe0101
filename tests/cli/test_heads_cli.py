import io
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from heads.synthetic import write_store
from tests.heads.stores import cluster_videos, make_cluster_store
from vidfeat_cli.heads import main

METRICS = {"hit_at_1", "top5", "gap_at_20", "mean_ap", "perr"}


STORE_ATTRS = {"backbone": "synthetic", "weights": "w1", "pca": None}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small store with a split column, and two runs on it: bof and gru."""
    root = tmp_path_factory.mktemp("cli")
    videos = cluster_videos(60, n_classes=4, seed=0)
    splits = {vid: ("test" if i % 5 == 0 else "train") for i, (vid, _, _) in enumerate(videos)}
    store = write_store(
        root / "s.h5",
        videos,
        dim=16,
        splits=splits,
        attrs=STORE_ATTRS,
    )
    runner = CliRunner()
    for model in ("bof", "gru"):
        result = runner.invoke(
            main,
            [
                "-q",
                "train",
                str(store),
                "-m",
                model,
                "-o",
                str(root / model),
                "--epochs",
                "3",
                "--hidden-size",
                "16",
            ],
        )
        assert result.exit_code == 0, result.output
        assert result.output.startswith("test (12 videos): hit_at_1 ")
    return root, store


def test_train_writes_the_run_directory(trained):
    root, _ = trained
    names = {p.name for p in (root / "bof").iterdir()}
    assert {
        "config.json",
        "label_map.json",
        "split.csv",
        "metrics.jsonl",
        "best.pt",
        "last.pt",
        "test_metrics.json",
        "test_predictions.npz",
        "test_predictions.csv",
    } <= names
    split = pd.read_csv(root / "bof" / "split.csv")
    assert (split["split"] == "test").sum() == 12  # the store's split column was used
    assert set(split["split"]) == {"train", "val", "test"}  # val carved out of train
    config = json.loads((root / "gru" / "config.json").read_text())
    assert config["model"] == "gru" and config["head"]["hidden_size"] == 16
    assert config["epochs"] == 3 and config["lr"] == 1e-3 and config["store"]["dim"] == 16


def test_evaluate_json_matches_test_metrics(trained):
    root, _ = trained
    result = CliRunner().invoke(main, ["evaluate", str(root / "bof"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    saved = json.loads((root / "bof" / "test_metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == saved["n_test"] == 12
    for key in METRICS:
        assert metrics[key] == pytest.approx(saved[key])


def test_evaluate_on_another_store_says_what_to_do(trained, tmp_path):
    root, _ = trained
    runner = CliRunner()
    # The run's video ids with other features: "test" is assumed, refused, and --split all named.
    # Its command line differs too, which says nothing of the features: not named.
    same_ids = write_store(
        tmp_path / "same_ids.zarr",
        cluster_videos(60, n_classes=4, seed=0, signal=3.0),
        dim=16,
        attrs={**STORE_ATTRS, "command": "vidfeat extract other.csv --out same_ids.zarr"},
    )
    result = runner.invoke(main, ["evaluate", str(root / "bof"), "--store", str(same_ids)])
    assert result.exit_code == 2 and "pass --split all" in result.output, result.output
    assert "command" not in result.output and "hold other features" in result.output
    result = runner.invoke(
        main, ["evaluate", str(root / "bof"), "--store", str(same_ids), "--split", "all"]
    )
    assert result.exit_code == 0, result.output
    # Labelled videos, but none with the run's classes.
    other = [(f"o{i}", x, ("zebra",)) for i, (_, x, _) in enumerate(cluster_videos(8, seed=3))]
    other_store = write_store(tmp_path / "other.zarr", other, dim=16, attrs=STORE_ATTRS)
    result = runner.invoke(main, ["evaluate", str(root / "bof"), "--store", str(other_store)])
    assert result.exit_code == 2, result.output
    assert "carries one of the run's 4 classes (class0, class1" in result.output


def test_predict_csv_and_yt8m(trained, tmp_path):
    root, store = trained
    runner = CliRunner()
    result = runner.invoke(
        main, ["predict", str(root / "bof"), "--store", str(store), "--top-k", "3"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    assert list(table.columns) == ["video_id", "predictions"] and len(table) == 60
    for cell in table["predictions"]:
        top = json.loads(cell)
        scores = [x["score"] for x in top]
        assert len(top) == 3 and scores == sorted(scores, reverse=True)
        assert {x["label"] for x in top} <= {"class0", "class1", "class2", "class3"}
    out = tmp_path / "sub.csv"
    yt8m = ["predict", str(root / "bof"), "--store", str(store), "--format", "yt8m"]
    refused = runner.invoke(main, [*yt8m, "--out", str(out)])
    assert refused.exit_code == 2 and "--vocabulary" in refused.output and not out.exists()
    vocab = tmp_path / "vocabulary.csv"
    index = {"class0": 7, "class1": 3, "class2": 11, "class3": 5}
    pd.DataFrame(
        {
            "Index": list(index.values()),
            "TrainVideoCount": [10, 9, 8, 7],
            "KnowledgeGraphId": [f"/m/0{i}" for i in range(4)],
            "Name": list(index),
            "WikiUrl": ["", "", "", ""],
        }
    ).to_csv(vocab, index=False)
    result = runner.invoke(main, [*yt8m, "--vocabulary", str(vocab), "--out", str(out)])
    assert result.exit_code == 0, result.output
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["VideoId", "LabelConfidencePairs"]
    first = sub["LabelConfidencePairs"][0].split(" ")
    assert len(first) == 8 and {int(i) for i in first[::2]} == set(index.values())
    # Same scores in both formats, the label replaced by its vocabulary index.
    best = json.loads(table["predictions"][0])[0]
    assert first[0] == str(index[best["label"]])
    assert float(first[1]) == pytest.approx(best["score"], rel=1e-5, abs=1e-6)
    # A store that records its vocabulary (import-yt8m --vocabulary) needs no file.
    recorded = tmp_path / "recorded.h5"  # an HDF5 store: the root file's "vidfeat" attribute
    shutil.copy(store, recorded)
    shutil.copytree(f"{store}.parts", f"{recorded}.parts")
    with h5py.File(recorded, "r+") as root_file:
        meta = json.loads(root_file.attrs["vidfeat"])
        meta["attrs"]["vocabulary"] = [[i, n] for n, i in index.items()]
        root_file.attrs["vidfeat"] = json.dumps(meta)
    by_store = tmp_path / "by_store.csv"
    args = ["predict", str(root / "bof"), "--store", str(recorded), "--format", "yt8m"]
    result = runner.invoke(main, [*args, "--out", str(by_store)])
    assert result.exit_code == 0, result.output
    assert by_store.read_bytes() == out.read_bytes()


def test_predict_per_frame_for_recurrent_heads(trained):
    root, store = trained
    runner = CliRunner()
    result = runner.invoke(
        main, ["predict", str(root / "gru"), "--store", str(store), "--per-frame", "--top-k", "2"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    lengths = {vid: len(x) for vid, x, _ in cluster_videos(60, n_classes=4, seed=0)}
    assert len(table) == sum(lengths.values())
    assert table.groupby("video_id").size().to_dict() == lengths
    first = table[table["video_id"] == "c0-0000"]
    assert first["frame"].tolist() == list(range(lengths["c0-0000"]))
    np.testing.assert_allclose(first["timestamp_s"], np.arange(len(first)))  # 1 fps default
    refused = runner.invoke(
        main, ["predict", str(root / "bof"), "--store", str(store), "--per-frame"]
    )
    assert refused.exit_code == 2
    assert refused.output.strip().count("\n") == 0 and "per-frame" in refused.output


def test_report(trained, tmp_path):
    root, _ = trained
    result = CliRunner().invoke(
        main, ["report", str(root / "bof"), str(root / "gru"), "--out", str(tmp_path / "rep")]
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "bof" in text and "gru" in text
    args = ["report", str(root / "bof"), "--out", str(tmp_path / "svg"), "--format", "svg"]
    result = CliRunner().invoke(main, [*args, "--dpi", "80"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "svg" / "bof_confusion.svg").read_text().count("<svg") == 1


def test_force_replaces_a_finished_run_and_logger_tensorboard(trained, tmp_path):
    _, store = trained
    run = tmp_path / "run"
    args = ["-q", "train", str(store), "-m", "bof", "-o", str(run), "--epochs", "1"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (run / "metrics.csv").is_file() and not (run / "tensorboard").exists()
    both = ["--logger", "tensorboard", "--logger", "csv"]
    again = CliRunner().invoke(main, [*args, "--force", *both])
    assert again.exit_code == 0, again.output
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header and epoch 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{missing}", "-m", "bof", "-o", "{tmp}/r"], "no feature store"),
        (["train", "{store}", "-m", "bof", "-o", "{tmp}/r", "--classes", "nope"], "nope"),
        (["train", "{store}", "-m", "bof", "-o", "{tmp}/r", "--dropout", "2"], "dropout"),
        (["evaluate", "{tmp}/not-a-run"], "not found"),
        (["predict", "{run}", "--store", "{other}"], "weights"),
        (["train", "{store}", "-m", "bof", "-o", "{run}"], "finished run; add --force"),
        (["evaluate", "{run}", "--store", "{changed}"], "not the data this run was trained on"),
        (["report", "{tmp}"], "neither a heads run nor an ensemble"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(trained, tmp_path, args, message):
    root, store = trained
    other = make_cluster_store(tmp_path / "o.zarr", n_videos=8, attrs={"weights": "w9"})
    # The run's video ids, one frame shorter each: another extraction of the same videos.
    shorter = [(v, x[:-1], labels) for v, x, labels in cluster_videos(60, n_classes=4, seed=0)]
    changed = write_store(tmp_path / "c.zarr", shorter, dim=16, attrs=STORE_ATTRS)
    values = {
        "changed": changed,
        "missing": tmp_path / "nope.zarr",
        "tmp": tmp_path,
        "store": store,
        "run": root / "bof",
        "other": other,
    }
    result = CliRunner().invoke(main, [a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "report"])
def test_help_has_examples(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and f"heads {command} " in result.output


def test_split_file_groups_and_config_reuse(tmp_path):
    store = make_cluster_store(tmp_path / "s.zarr", n_videos=60)
    with_ids = pd.DataFrame({"video_id": [f"c0-{i:04d}" for i in range(60)]})
    with_ids["group"] = [f"source{i // 6}" for i in range(60)]  # ten sources of six clips
    with_ids.to_csv(tmp_path / "manifest.csv", index=False)
    runner = CliRunner()
    args = [
        "-q",
        "train",
        str(store),
        "-m",
        "logistic",
        "-o",
        str(tmp_path / "a"),
        "--epochs",
        "1",
        "--split-file",
        str(tmp_path / "manifest.csv"),
        "--seed",
        "5",
    ]
    assert runner.invoke(main, args).exit_code == 0
    split = pd.read_csv(tmp_path / "a" / "split.csv").merge(with_ids, on="video_id")
    assert split.groupby("group")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}
    # --config starts from another run's config.json; explicit options still win.
    again = [
        "-q",
        "train",
        str(store),
        "-m",
        "logistic",
        "-o",
        str(tmp_path / "b"),
        "--config",
        str(tmp_path / "a" / "config.json"),
        "--lr",
        "0.01",
    ]
    assert runner.invoke(main, again).exit_code == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["seed"] == 5 and config["epochs"] == 1 and config["lr"] == 0.01
    # The recorded --split-file came with it: the same groups, the same splits.
    assert config["split_file"] == str(tmp_path / "manifest.csv")
    first, second = (pd.read_csv(tmp_path / r / "split.csv") for r in ("a", "b"))
    pd.testing.assert_frame_equal(first, second)
    rerun = runner.invoke(main, again)
    assert rerun.exit_code == 2 and "finished run; add --force" in rerun.output


def test_predict_attention_weights_per_step(trained, tmp_path):
    root, store = trained
    runner = CliRunner()
    args = ["-q", "train", str(store), "-m", "gru", "--reduction", "attention"]
    args += ["-o", str(tmp_path / "att"), "--epochs", "1", "--hidden-size", "8"]
    assert runner.invoke(main, args).exit_code == 0
    result = runner.invoke(
        main, ["predict", str(tmp_path / "att"), "--store", str(store), "--attention"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    lengths = {vid: len(x) for vid, x, _ in cluster_videos(60, n_classes=4, seed=0)}
    assert table.groupby("video_id").size().to_dict() == lengths
    np.testing.assert_allclose(table.groupby("video_id")["attention"].sum(), 1.0, atol=1e-5)
    assert (table["attention"] > 0).all()
    refused = runner.invoke(
        main, ["predict", str(root / "gru"), "--store", str(store), "--attention"]
    )
    assert refused.exit_code == 2 and "no attention weights" in refused.output


def test_a_training_command_builds_the_stores_index_once(tmp_path, monkeypatch):
    # Each open builds the store's whole index (hundreds of MB at millions of videos): the
    # command's checks, the run and its three splits share one. Counted, not replaced.
    from vidfeat.store.reader import StoreReader

    built = []
    build = StoreReader._build_table
    monkeypatch.setattr(StoreReader, "_build_table", lambda self: built.append(1) or build(self))
    store = make_cluster_store(tmp_path / "s.zarr", n_videos=30)
    args = ["-q", "train", str(store), "-m", "bof", "-o", str(tmp_path / "run"), "--epochs", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(built) == 1
