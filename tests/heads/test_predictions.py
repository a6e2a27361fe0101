"""heads.predictions: prediction tables, and vocabulary indices for YouTube-8M's format."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from heads.batching import make_loader
from heads.labels import LabelMap
from heads.metrics import evaluate_all
from heads.predictions import (
    NpzRows,
    PredictionsWriter,
    Scored,
    ScoresWriter,
    as_csv_cells,
    format_yt8m_pairs,
    npz_arrays,
    read_vocabulary,
    top_classes,
    vocabulary_indices,
    write_table,
)
from vidfeat.errors import ConfigError
from vidfeat.store.base import LABEL_SEPARATOR


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


def test_a_vocabulary_import_yt8m_reads_is_read_for_predictions_too(tmp_path):
    # heads refused a vocabulary of Index,Name only ("lacks column(s) KnowledgeGraphId") that
    # import-yt8m had read: one reader serves both.
    path = tmp_path / "names.csv"
    path.write_text("Index,Name\n3,Game\n5,Car\n")
    assert read_vocabulary(path) == {"Game": 3, "Car": 5}
    with pytest.raises(ConfigError, match="appears twice"):
        path.write_text("Index,Name\n3,Game\n3,Car\n")
        read_vocabulary(path)


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


def test_yt8m_pairs_write_scores_as_googles_inference_does():
    # Google's inference.py writes "%i %g": six significant digits, so a score of 1.2e-05
    # keeps its digits (a fixed six decimals would write 0.000012, and 4e-07 as 0.000000).
    scores = np.array([0.5, 1.234567e-5, 0.25, 4e-7, 0.875], dtype=np.float32)
    line = format_yt8m_pairs(scores, ("10", "11", "12", "13", "14"), k=5)
    expected = " ".join("%i %g" % (i, scores[i - 10]) for i in (14, 10, 12, 11, 13))  # noqa: UP031 (Google's own spelling)
    assert line == expected
    assert line.split(" ")[-1] == "4e-07"


AWKWARD = ("x y:0.5", "Ice hockey", "c:d", "a,b", 'say "hi"', "café 日本")


def test_test_predictions_csv_reads_back_labels_with_spaces_colons_and_commas(tmp_path):
    scores = np.random.default_rng(0).random((4, len(AWKWARD))).astype(np.float32)
    truth = np.eye(len(AWKWARD), dtype=np.float32)[:4]
    scored = Scored(probs=scores, ranking=np.log(scores), labels=truth)
    label_map = LabelMap(AWKWARD, multilabel=False)
    with PredictionsWriter(tmp_path / "test_predictions", list("abcd"), label_map) as writer:
        writer.add(np.arange(4), scored)
    table = pd.read_csv(tmp_path / "test_predictions.csv")
    for i, (cell, labels) in enumerate(zip(table["predictions"], table["labels"], strict=True)):
        top = json.loads(cell)
        order = np.argsort(-scores[i], kind="stable")
        assert [x["label"] for x in top] == [AWKWARD[j] for j in order]
        np.testing.assert_allclose([x["score"] for x in top], scores[i][order], atol=1e-6)
        assert labels == AWKWARD[i]


def _scored(n: int, classes: int, seed: int = 0) -> Scored:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    logits[::7, :3] = 30.0  # saturated probabilities that tie: the ranking scores order them
    probs = (1 / (1 + np.exp(-logits))).astype(np.float32)
    return Scored(probs=probs, ranking=logits, labels=(rng.random((n, classes)) < 0.2) * 1.0)


def _savez_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_predictions_written_in_shuffled_batches_equal_savez_and_a_whole_table(
    tmp_path, monkeypatch
):
    n, labels = 23, LabelMap(AWKWARD, multilabel=True)
    scored, ids = _scored(n, len(AWKWARD)), [f"v{i}" for i in range(n)]
    monkeypatch.setattr(PredictionsWriter, "_CSV_BLOCK_VALUES", 4 * len(AWKWARD))  # 4 rows
    order = np.random.default_rng(1).permutation(n)
    with PredictionsWriter(tmp_path / "batched", ids, labels) as writer:
        for rows in np.array_split(order, 5):  # as a length-bucketed loader hands them over
            part = Scored(scored.probs[rows], scored.ranking[rows], scored.labels[rows])
            writer.add(rows, part)
    # What the writer replaced: np.savez of the whole arrays, and a table of the whole set.
    assert (tmp_path / "batched.npz").read_bytes() == _savez_bytes(
        video_id=np.array(ids, dtype=str),
        scores=scored.probs,
        ranking=scored.ranking,
        labels=scored.labels.astype(np.uint8),
        class_names=np.array(AWKWARD, dtype=str),
    )
    table = pd.DataFrame(
        {
            "video_id": ids,
            "labels": [LABEL_SEPARATOR.join(np.array(AWKWARD)[y > 0]) for y in scored.labels],
            "predictions": [
                top_classes(p, AWKWARD, 20, r)
                for p, r in zip(scored.probs, scored.ranking, strict=True)
            ],
        }
    )
    expected_csv = as_csv_cells(table).to_csv(index=False)
    assert (tmp_path / "batched.csv").read_bytes() == expected_csv.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batched.csv", "batched.npz"]


def test_scores_written_in_shuffled_batches_equal_savez(tmp_path):
    n = 17
    scored, ids = _scored(n, len(AWKWARD), seed=3), [f"v{i}" for i in range(n)]
    with ScoresWriter(tmp_path / "batched.npz", ids, AWKWARD) as writer:
        for rows in np.array_split(np.random.default_rng(4).permutation(n), 3):
            writer.add(rows, Scored(scored.probs[rows], scored.ranking[rows], scored.labels[rows]))
    assert (tmp_path / "batched.npz").read_bytes() == _savez_bytes(
        video_id=np.array(ids, dtype=str),
        scores=scored.probs,
        ranking=scored.ranking,
        class_names=np.array(AWKWARD, dtype=str),
    )


def test_npz_arrays_read_stored_rows_when_asked_and_the_rest_whole(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {
        "scores": rng.standard_normal((7, 5)).astype(np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((4, 3))),
        "video_id": np.array(["a", "bb", "ccc"]),
        "empty": np.zeros((0, 5), np.float32),
    }
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    ids = [f"v{i}" for i in range(7)]
    scored = _scored(7, 5, seed=6)
    with ScoresWriter(tmp_path / "written.npz", ids, tuple("abcde")) as writer:
        writer.add(np.arange(7), scored)
    with contextlib.ExitStack() as held:
        plain = npz_arrays(tmp_path / "plain.npz", held=held)
        packed = npz_arrays(tmp_path / "packed.npz", held=held)
        assert isinstance(plain["scores"], NpzRows) and plain["scores"].shape == (7, 5)
        assert not any(isinstance(a, NpzRows) for k, a in plain.items() if k != "scores")
        assert not any(isinstance(a, NpzRows) for a in packed.values())  # compressed: whole
        for name, expected in arrays.items():
            np.testing.assert_array_equal(packed[name], expected)
            if name != "scores":
                np.testing.assert_array_equal(plain[name], expected)
        # Any rows in any order, repeated too: one read per run of consecutive rows.
        for rows in ([3, 1, 1, 6, 0], np.arange(7), [], [6]):
            got = plain["scores"][np.array(rows, int)]
            np.testing.assert_array_equal(got, arrays["scores"][rows])
        with pytest.raises(IndexError):
            plain["scores"][np.array([7])]
        written = npz_arrays(tmp_path / "written.npz", ("video_id", "ranking"), held=held)
        assert sorted(written) == ["ranking", "video_id"]  # only those asked for
        assert isinstance(written["ranking"], NpzRows)
        np.testing.assert_array_equal(written["ranking"][np.arange(7)[::-1]], scored.ranking[::-1])
        np.testing.assert_array_equal(written["video_id"], np.array(ids))
        # The file replaced meanwhile (as an atomic rewrite does): rows come from the one opened.
        np.savez(tmp_path / "new.npz", **{**arrays, "scores": -arrays["scores"]})
        (tmp_path / "new.npz").replace(tmp_path / "plain.npz")
        np.testing.assert_array_equal(plain["scores"][np.arange(7)], arrays["scores"])


def test_npz_arrays_refuse_damage_and_ignore_entries_not_asked_for(tmp_path):
    scores = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", scores=scores, other=np.array([{"a": 1}], dtype=object))
    data = (tmp_path / "ok.npz").read_bytes()
    with contextlib.ExitStack() as held:
        # An entry of another kind (pickled objects) is no matter unless asked for.
        found = npz_arrays(tmp_path / "ok.npz", ("scores",), held=held)
        np.testing.assert_array_equal(found["scores"][np.arange(6)], scores)
        with pytest.raises(ValueError, match="allow_pickle"):
            npz_arrays(tmp_path / "ok.npz", held=held)
        flipped = bytearray(data)
        flipped[data.index(scores.tobytes()) + 5] ^= 0x10
        (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
        with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
            npz_arrays(tmp_path / "flipped.npz", ("scores",), held=held)
        (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
        with pytest.raises(zipfile.BadZipFile):
            npz_arrays(tmp_path / "cut.npz", held=held)
        # The central directory pointing past the end of the file: its record for the entry
        # (signature PK\1\2, the local header's offset at +42, the name at +46).
        moved = bytearray(data)
        record = data.index(b"PK\x01\x02")
        assert data[record + 46 :].startswith(b"scores.npy")
        moved[record + 42 : record + 46] = (len(data) - 10).to_bytes(4, "little")
        (tmp_path / "moved.npz").write_bytes(bytes(moved))
        with pytest.raises(zipfile.BadZipFile, match="past the end"):
            npz_arrays(tmp_path / "moved.npz", ("scores",), held=held)
    header = np.lib.format.header_data_from_array_1_0(scores)
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as npz, npz.open("s.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, {**header, "shape": (8, 4)})
        fh.write(scores.tobytes())
    with contextlib.ExitStack() as held, pytest.raises(ValueError, match="not what its header"):
        npz_arrays(tmp_path / "short.npz", held=held)


def test_a_failed_or_incomplete_prediction_write_leaves_no_files(tmp_path):
    labels, scored = LabelMap(AWKWARD, multilabel=True), _scored(6, len(AWKWARD))
    ids, first = list("abcdef"), Scored(scored.probs[:3], scored.ranking[:3], scored.labels[:3])

    def write(rows: np.ndarray, part: Scored, fail: bool = False) -> None:
        with PredictionsWriter(tmp_path / "p", ids, labels) as writer:
            writer.add(rows, part)
            if fail:
                raise RuntimeError("scoring broke")

    with pytest.raises(RuntimeError, match="scoring broke"):
        write(np.arange(3), first, fail=True)
    with pytest.raises(ValueError, match="3 of 6 videos have no predictions"):
        write(np.arange(3), first)
    with pytest.raises(ValueError, match=r"rows must be in \[0, 6\)"):
        write(np.array([6, 0, 1]), first)
    with pytest.raises(ValueError, match="integer indices"):
        write(np.array([0.0, 1.0, 2.0]), first)
    with pytest.raises(ValueError, match="given twice"):
        write(np.array([0, 0, 1]), first)
    with pytest.raises(FileNotFoundError, match="no folder"):
        PredictionsWriter(tmp_path / "missing" / "p", ids, labels)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_row_files_go_and_nobody_elses(tmp_path):
    labels, scored, ids = LabelMap(AWKWARD, multilabel=True), _scored(3, len(AWKWARD)), list("abc")
    killed = tmp_path / ".p-k1ll3d_x.parts"  # as mkdtemp names them; nobody holds its lock
    killed.mkdir()
    (killed / ".lock").touch()
    (killed / "scores.npy").write_bytes(b"x" * 100)
    sibling = tmp_path / ".p-v2-abcdefgh.parts"  # another output's (p-v2.npz) live folder
    sibling.mkdir()
    (sibling / ".lock").touch()
    with PredictionsWriter(tmp_path / "p", ids, labels) as live:  # a writer still at work
        live.add(np.arange(3), scored)
        with PredictionsWriter(tmp_path / "p", ids, labels) as second:
            second.add(np.arange(3), scored)
        assert live._parts.is_dir()  # its lock is held: left alone
    assert not killed.exists() and sibling.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p-v2-abcdefgh.parts", "p.csv", "p.npz"]


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


def test_confident_outputs_are_ranked_by_logits_not_saturated_probabilities(tmp_path):
    # Sigmoid rounds both of a video's logits (over 20) to probability 1.0 in float32; ranked
    # on those, the tie went to the lower class index, and hit@1, GAP and the predicted order
    # followed the index instead of the model.
    import torch

    from heads.config import TrainConfig
    from heads.data import FeatureDataset
    from heads.evaluation import validate
    from heads.models import create_head
    from heads.objective import Loss
    from heads.run import scored_batches
    from heads.synthetic import write_store
    from vidfeat.device import resolve_device

    # Video a's frames are all e0, video b's all e1: the weights below set their logits.
    videos = [
        (v, np.tile(np.eye(3, dtype=np.float32)[i], (5, 1)), ("b",)) for i, v in enumerate("ab")
    ]
    store = write_store(tmp_path / "s.zarr", videos, dim=3)
    cfg = TrainConfig(model="logistic", loss="multi")
    label_map = LabelMap(("a", "b", "c"), multilabel=True)
    model = create_head("logistic", input_dim=3, num_classes=3, cfg=cfg.head).eval()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[160.0, 140, 0], [120, 180, 0], [0, 0, 0]]))
        model.fc.bias.zero_()
    dataset = FeatureDataset(store, label_map=label_map, cfg=cfg.data)
    whole = [np.zeros((2, 3), np.float32) for _ in range(3)]  # the two videos' rows
    for rows, part in scored_batches(model, dataset, cfg, label_map, resolve_device("cpu")):
        for array, values in zip(whole, (part.probs, part.ranking, part.labels), strict=True):
            array[rows] = values
    scored = Scored(*whole)
    assert dataset.video_ids == ["a", "b"]
    # The inputs are normalised first, so the logits are not the weights; their order is.
    (aa, ab), (ba, bb) = scored.ranking[:, :2]
    assert bb > aa > ba > ab > 20
    assert (scored.probs[:, :2] == 1.0).all()  # what float32 probabilities could not tell apart

    # Video a's best class is "a" (wrong), video b's is "b" (right); of the pairs ranked
    # across videos, the true (b, b) comes first and the true (a, b) fourth.
    want = {"hit_at_1": 0.5, "gap_at_20": (1 / 1 + 2 / 4) / 2, "perr": 0.5}
    got = evaluate_all(scored.ranking, scored.labels)
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert evaluate_all(scored.probs, scored.labels)["hit_at_1"] == 0.0  # the old ranking
    loader = make_loader(dataset, cfg.data, shuffle=False)
    during_training = validate(model, loader, Loss(multilabel=True), resolve_device("cpu"))
    assert {k: during_training[k] for k in want} == pytest.approx(want)
    rows = zip(scored.probs, scored.ranking, strict=True)
    tops = [top_classes(p, label_map.labels, 2, r) for p, r in rows]
    assert [[c["label"] for c in top] for top in tops] == [["a", "b"], ["b", "a"]]


@pytest.mark.parametrize("multilabel", [True, False])
def test_validation_batch_by_batch_equals_scoring_the_whole_set(tmp_path, multilabel):
    """validate() streams the metrics (heads.metrics.MetricStream) over batches that come
    bucketed by length: the same numbers as the loss and evaluate_all of all logits at once."""
    import dataclasses

    import torch

    from heads.config import TrainConfig
    from heads.data import FeatureDataset
    from heads.evaluation import logit_batches, validate
    from heads.models import create_head
    from heads.objective import Loss
    from tests.heads.stores import LABELS, make_frame_store
    from vidfeat.device import resolve_device

    store = make_frame_store(tmp_path / "s.zarr", n_videos=37, multilabel=multilabel)
    cfg = TrainConfig(model="gru", loss="multi" if multilabel else "single")
    data = dataclasses.replace(cfg.data, batch_size=4, bucket_batches=3)
    torch.manual_seed(0)
    model = create_head("gru", input_dim=8, num_classes=len(LABELS), cfg=cfg.head).eval()
    dataset = FeatureDataset(store, label_map=LabelMap(LABELS, multilabel=multilabel), cfg=data)
    loader = make_loader(dataset, data, shuffle=False)
    loss_fn, cpu = Loss(multilabel=multilabel), resolve_device("cpu")
    logits = np.zeros((len(dataset), len(LABELS)), np.float32)  # in dataset order
    labels = np.zeros_like(logits)
    for rows, batch_logits, batch_labels in logit_batches(model, loader, cpu):
        logits[rows], labels[rows] = batch_logits.numpy(), batch_labels
    whole = evaluate_all(loss_fn.ranking_scores(torch.from_numpy(logits)).numpy(), labels)
    streamed = validate(model, loader, loss_fn, cpu)
    assert {k: streamed[k] for k in whole if k != "n"} == {k: whole[k] for k in whole if k != "n"}
    loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(labels)))
    assert streamed["loss"] == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("loss", ["single", "multi"])
def test_evaluate_scores_batch_by_batch_what_training_scored_whole(tmp_path, loss):
    """`heads evaluate` and the end of training both score a batch at a time; both equal
    ``evaluate_all`` on the whole test set's scores that training wrote with its predictions."""
    from click.testing import CliRunner

    from heads import checkpoint as ck
    from heads.inference import evaluate_run
    from tests.heads.stores import make_cluster_store
    from vidfeat_cli.heads import main

    store = make_cluster_store(tmp_path / "s.zarr", n_videos=90, signal=0.3)
    args = ["-q", "train", str(store), "-m", "gru", "-o", str(tmp_path / "run"), "--loss", loss]
    args += ["--epochs", "2", "--batch-size", "4", "--hidden-size", "8", "--seed", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    trained = json.loads((tmp_path / "run" / ck.TEST_METRICS).read_text())
    evaluated = evaluate_run(tmp_path / "run")
    assert evaluated["split"] == "test" and evaluated["n"] == trained["n_test"]
    with np.load(tmp_path / "run" / f"{ck.TEST_PREDICTIONS}.npz") as npz:
        whole = evaluate_all(npz["ranking"], npz["labels"])
    assert whole["n"] == trained["n_test"]
    for key in ("hit_at_1", "top5", "gap_at_20", "mean_ap", "perr"):
        assert evaluated[key] == pytest.approx(trained[key], rel=1e-9, abs=1e-12), key
        assert trained[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12), key
