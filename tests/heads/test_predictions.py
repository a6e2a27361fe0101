"""heads.predictions: vocabulary indices for YouTube-8M's submission format."""

from __future__ import annotations

import pytest

from heads.predictions import read_vocabulary, vocabulary_indices
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
