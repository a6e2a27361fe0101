"""Google's vocabulary.csv: indices kept as published, bad files refused with the line."""

from __future__ import annotations

import pytest

from tests.vidfeat.yt8m.helpers import VOCABULARY
from vidfeat.errors import ConfigError
from vidfeat.yt8m.vocabulary import COLUMNS, Vocabulary, read_vocabulary


def test_reads_google_columns_and_keeps_indices():
    vocab = read_vocabulary(str(VOCABULARY))
    assert vocab.name(0) == "Game"
    assert vocab.name(17) == "Car"
    assert vocab.name(3861) == "Rubik's Cube"  # quotes and commas in other columns are fine
    assert vocab.indices["Concert"] == 3
    assert len(vocab.names) == 7
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        vocab.name(5)


def test_json_round_trip():
    vocab = read_vocabulary(str(VOCABULARY))
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    assert vocab.to_json()[0] == [0, "Game"]


HEADER = ",".join(COLUMNS)


def _write(tmp_path, rows, header=HEADER):
    path = tmp_path / "vocabulary.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        (["0,1,/m/x,A;B,u,V,,,d"], "unusable name"),
        (["0,1,/m/x,A,u,V,,,d", "0,1,/m/y,B,u,V,,,d"], "appears twice"),
        (["0,1,/m/x,A,u,V,,,d", "1,1,/m/y,A,u,V,,,d"], "names both"),
        (["x,1,/m/x,A,u,V,,,d"], ":2: Index 'x'"),
        ([], "no classes"),
    ],
)
def test_bad_vocabularies_are_refused(tmp_path, rows, words):
    with pytest.raises(ConfigError, match=words):
        read_vocabulary(_write(tmp_path, rows))


def test_missing_column_or_file(tmp_path):
    with pytest.raises(ConfigError, match="no column"):
        read_vocabulary(_write(tmp_path, ["0,Game"], header="Index,Label"))
    with pytest.raises(ConfigError, match="cannot read"):
        read_vocabulary(str(tmp_path / "absent.csv"))
