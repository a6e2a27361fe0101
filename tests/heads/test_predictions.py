"""heads.predictions: prediction tables, and vocabulary indices for YouTube-8M's format."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from heads.labels import LabelMap
from heads.predictions import (
    read_vocabulary,
    top_classes,
    vocabulary_indices,
    write_predictions,
    write_table,
)
from vidfeat.errors import ConfigError


@pytest.fixture
def vocabulary(tmp_path):
    path = tmp_path / "vocabulary.csv"
    path.write_text(
        "Index,TrainVideoCount,KnowledgeGraphId,Name,WikiUrl\n"
        "0,100,/m/03bt1gh,Game,https://en.wikipedia.org/wiki/Game\n"
        "4,50,/m/01jddz,Concert,https://en.wikipedia.org/wiki/Concert\n"
        "7,20,/m/0k4j,Car,https://en.wikipedia.org/wiki/Car\n"
    )
    return read_vocabulary(path)


def test_labels_that_are_indices_need_no_vocabulary_and_ignore_one(vocabulary):
    assert vocabulary_indices(("1", "4", "7"), None) == [1, 4, 7]
    assert vocabulary_indices(("1", "4", "7"), vocabulary) == [1, 4, 7]


def test_names_and_knowledge_graph_ids_are_looked_up(vocabulary):
    assert vocabulary_indices(("Car", "/m/01jddz", "0"), vocabulary) == [7, 4, 0]


def test_names_without_a_vocabulary_or_missing_from_it_are_refused(vocabulary):
    with pytest.raises(ConfigError, match="pass --vocabulary"):
        vocabulary_indices(("Car", "Game"), None)
    with pytest.raises(ConfigError, match="not in the vocabulary: Boat"):
        vocabulary_indices(("Car", "Boat"), vocabulary)


def test_a_name_made_of_digits_is_looked_up_not_taken_for_an_index(tmp_path, vocabulary):
    path = tmp_path / "films.csv"
    path.write_text("Index,TrainVideoCount,KnowledgeGraphId,Name\n2,10,/m/0x,1984\n")
    assert vocabulary_indices(("1984", "Car"), {**vocabulary, **read_vocabulary(path)}) == [2, 7]
    # "²" is a Unicode digit, but no index: a name like any other.
    with pytest.raises(ConfigError, match="pass --vocabulary"):
        vocabulary_indices(("²",), None)
    with pytest.raises(ConfigError, match="not in the vocabulary: ²"):
        vocabulary_indices(("²",), vocabulary)


AWKWARD = ("x y:0.5", "Ice hockey", "c:d", "a,b", 'say "hi"', "café 日本")


def test_test_predictions_csv_reads_back_labels_with_spaces_colons_and_commas(tmp_path):
    scores = np.random.default_rng(0).random((4, len(AWKWARD))).astype(np.float32)
    truth = np.eye(len(AWKWARD), dtype=np.float32)[:4]
    write_predictions(
        tmp_path / "test_predictions",
        list("abcd"),
        scores,
        truth,
        LabelMap(AWKWARD, multilabel=False),
    )
    table = pd.read_csv(tmp_path / "test_predictions.csv")
    for i, (cell, labels) in enumerate(zip(table["predictions"], table["labels"], strict=True)):
        top = json.loads(cell)
        order = np.argsort(-scores[i], kind="stable")
        assert [x["label"] for x in top] == [AWKWARD[j] for j in order]
        np.testing.assert_allclose([x["score"] for x in top], scores[i][order], atol=1e-6)
        assert labels == AWKWARD[i]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_prediction_tables_round_trip_awkward_labels(tmp_path, fmt):
    scores = np.linspace(0.9, 0.1, len(AWKWARD), dtype=np.float32)
    table = pd.DataFrame({"video_id": ["v 1"], "predictions": [top_classes(scores, AWKWARD, 3)]})
    out = tmp_path / f"p.{fmt}"
    write_table(table, out, fmt)
    back = {
        "csv": lambda: pd.read_csv(out)["predictions"].map(json.loads),
        "jsonl": lambda: pd.read_json(out, lines=True)["predictions"],
        "parquet": lambda: pd.read_parquet(out)["predictions"].map(lambda v: [dict(x) for x in v]),
    }[fmt]()
    assert [x["label"] for x in back[0]] == list(AWKWARD[:3])
