"""`heads finetune` through click's CliRunner, inside the `heads` group (its error handling)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from heads import checkpoint as ck
from heads.transfer import FINETUNE_LR
from tests.heads.stores import make_cluster_store
from vidfeat_cli.finetune import finetune
from vidfeat_cli.heads import EXIT_CANNOT_RUN, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCE = "class0,class1,class2,class3,class4"
SMALL = ("--hidden-size", "8", "--fc-size", "16", "--batch-size", "8", "--epochs", "2")


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cluster_store(tmp_path_factory.mktemp("s") / "s.zarr", 80, n_classes=10)


@pytest.fixture(scope="module")
def parent(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`heads train --classes`: a BiLSTM on 5 of the 10 classes."""
    run = tmp_path_factory.mktemp("runs") / "five"
    result = invoke("train", store, "-m", "bilstm", "-o", run, "--classes", SOURCE, *SMALL)
    assert result.exit_code == 0, result.output
    return run


def test_train_on_a_class_subset_records_it(store: Path, parent: Path) -> None:
    labels = json.loads((parent / ck.LABEL_MAP).read_text())["labels"]
    assert labels == SOURCE.split(",")
    ids = pd.read_csv(parent / ck.SPLIT)["video_id"]
    assert len(ids) == 40  # the other classes' videos are excluded


def test_finetune_then_evaluate_and_report(store: Path, parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "ten"
    result = invoke("finetune", parent, "--store", store, "--out", out, "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert "--train head" in result.output and "trainable parameters" in result.output
    config = json.loads((out / ck.CONFIG).read_text())
    assert config["finetune"]["train"] == "head" and config["epochs"] == 3
    assert config["lr"] == FINETUNE_LR["head"] and config["data"]["batch_size"] == 8
    assert config["finetune"]["trainable_params"] == 16 * 10 + 10  # fc_size x classes + bias
    with np.load(out / "test_predictions.npz") as npz:
        assert npz["scores"].shape[1] == 10

    result = invoke("evaluate", out, "--json")
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.output)["n"] == json.loads((out / ck.TEST_METRICS).read_text())["n_test"]
    )
    result = invoke("report", out, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    pngs = list((tmp_path / "report").glob("*.png"))
    assert len(pngs) >= 3 and all(p.stat().st_size > 5000 for p in pngs)


def test_finetune_top_with_options(store: Path, parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "top"
    args = ("--train", "top", "--lr", "0.002", "--classes", "class0,class9", "--epochs", "2")
    result = invoke("finetune", parent, "--store", store, "-o", out, *args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / ck.CONFIG).read_text())
    assert config["lr"] == 0.002 and config["data"]["classes"] == ["class0", "class9"]
    assert config["finetune"]["train"] == "top"
    assert config["finetune"]["new_classes"] == ["class9"]
    # bilstm top block: Linear(2 x hidden, fc_size); classifier: Linear(fc_size, 2)
    assert config["finetune"]["trainable_params"] == (16 * 16 + 16) + (16 * 2 + 2)


def test_incompatible_store_is_one_line_and_exit_2(parent: Path, tmp_path: Path) -> None:
    other = make_cluster_store(
        tmp_path / "o.zarr", 20, attrs={"backbone": "synthetic", "weights": "w1", "pca": "p64"}
    )
    result = invoke("finetune", parent, "--store", other, "--out", tmp_path / "x")
    assert result.exit_code == EXIT_CANNOT_RUN
    assert result.output.startswith("error: ") and "pca" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--classes", "class0,nope"), "not found in the store"),
        (("--lr", "-1"), "lr must be"),
    ],
)
def test_bad_options_exit_2(store: Path, parent: Path, tmp_path: Path, args, message) -> None:
    result = invoke("finetune", parent, "--store", store, "--out", tmp_path / "x", *args)
    assert result.exit_code == EXIT_CANNOT_RUN, result.output
    assert message in result.output and not (tmp_path / "x").exists()


def test_missing_parent_run_exit_2(store: Path, tmp_path: Path) -> None:
    result = invoke("finetune", tmp_path / "nope", "--store", store, "--out", tmp_path / "x")
    assert result.exit_code == EXIT_CANNOT_RUN
    assert "not found" in result.output


def test_bad_train_mode_is_a_usage_error(store: Path, parent: Path, tmp_path: Path) -> None:
    result = invoke("finetune", parent, "--store", store, "-o", tmp_path / "x", "--train", "x")
    assert result.exit_code == 2 and "Invalid value for '--train'" in result.output


def test_help_has_examples_and_finetune_defaults() -> None:
    result = invoke("finetune", "--help")
    assert result.exit_code == 0
    assert "heads finetune runs/five --store feats.zarr --out runs/ten" in result.output
    words = " ".join(result.output.split())  # as wrapped to the terminal's width
    assert "[default: the parent run's]" in words
    assert "[default: every class in the store]" in words
    lr_help = next(p.help for p in finetune.params if p.name == "lr")
    assert f"{FINETUNE_LR['head']:g} head" in lr_help and f"{FINETUNE_LR['all']:g} all" in lr_help
