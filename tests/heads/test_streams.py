"""Heads on named store streams: --streams, fusion, video-level stores, missing streams.

The two-stream store holds the sum task (heads.synthetic): each stream carries a digit, the
label is their sum mod 3, so either stream alone is at chance (1/3) and only both decide it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from heads import checkpoint as ck
from heads.config import DataConfig
from heads.data import FeatureDataset
from heads.errors import MissingStreamError
from heads.inference import evaluate_run
from heads.labels import build_label_map
from heads.synthetic import write_sum_store
from heads.transfer import finetune_run
from vidfeat.store import open_store
from vidfeat_cli.heads import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIMS = {"rgb": 8, "audio": 4}
N_VIDEOS = 180  # 9 digit pairs x 20; the test split is 36 videos
# Small and quick: the task is learnt in a few epochs at this step size.
FAST = ["--epochs", "10", "--lr", "0.01", "--batch-size", "16", "--fc-size", "32"]
FAST += ["--dropout", "0", "--fusion-dim", "16", "--patience", "0"]


def _train(store, out, *options):
    result = CliRunner().invoke(
        main, ["-q", "train", str(store), "-m", "bof", "-o", str(out), *FAST, *options]
    )
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-stream store, and bof runs on rgb, audio and both (default: every stream)."""
    root = tmp_path_factory.mktemp("streams")
    store = write_sum_store(root / "sum.h5", N_VIDEOS, dims=DIMS)
    for name, options in {"rgb": ["--streams", "rgb"], "audio": ["--streams", "audio"]}.items():
        result = _train(store, root / name, *options)
        assert result.exit_code == 0, result.output
    result = _train(store, root / "both")
    assert result.exit_code == 0, result.output
    return root, store


def _hit(run) -> float:
    return json.loads((run / ck.TEST_METRICS).read_text())["hit_at_1"]


def test_concat_fusion_solves_what_neither_stream_can(runs):
    root, _ = runs
    assert _hit(root / "both") >= 0.90
    for alone in ("rgb", "audio"):  # chance is 1/3
        assert _hit(root / alone) <= 0.55, alone


def test_runs_record_their_streams_and_evaluate_reads_the_same(runs):
    root, _ = runs
    for name, streams in {"rgb": ["rgb"], "audio": ["audio"], "both": ["rgb", "audio"]}.items():
        config = json.loads((root / name / ck.CONFIG).read_text())
        assert config["data"]["streams"] == streams  # the default resolved: every stream
        state = ck.load_checkpoint(root / name / ck.BEST)
        assert list(state["store"]["streams"]) == streams
        assert state["input_dim"] == sum(DIMS[s] for s in streams)
        metrics = evaluate_run(root / name)
        assert metrics["hit_at_1"] == pytest.approx(_hit(root / name))


def test_dataset_concatenates_the_streams_in_the_order_asked(runs):
    _, store = runs
    with open_store(store) as reader:
        label_map, videos = build_label_map(reader.videos)
        vid = videos["video_id"].iloc[0]
        rgb, audio = reader.read(vid, "rgb"), reader.read(vid, "audio")
    cfg = DataConfig(streams=("audio", "rgb"))
    x = FeatureDataset(store, videos.iloc[:1], label_map, cfg)[0].x.numpy()
    np.testing.assert_array_equal(x, np.concatenate([audio, rgb], axis=1))


@pytest.mark.parametrize("fusion", ["shared", "projection"])
def test_learned_fusions_solve_the_task_too(runs, fusion):
    root, store = runs
    out = root / fusion
    result = _train(store, out, "--fusion", fusion)
    assert result.exit_code == 0, result.output
    assert _hit(out) >= 0.90
    records = [json.loads(line) for line in (out / ck.METRICS).read_text().splitlines()]
    if fusion == "projection":  # the L2 term is an auxiliary loss, logged apart
        assert all(r["train_fusion_l2"] >= 0 for r in records)
    else:
        assert "train_fusion_l2" not in records[0]


def test_a_store_missing_a_stream_is_refused(runs, tmp_path):
    root, _ = runs
    rgb_only = write_sum_store(tmp_path / "rgb.h5", 18, dims=DIMS, keep=("rgb",), seed=5)
    runner = CliRunner()
    refused = runner.invoke(main, ["evaluate", str(root / "both"), "--store", str(rgb_only)])
    assert refused.exit_code == 2
    assert "has no stream 'audio'" in refused.output and "reads rgb, audio" in refused.output
    out = tmp_path / "p.csv"
    refused = runner.invoke(
        main, ["predict", str(root / "both"), "--store", str(rgb_only), "--out", str(out)]
    )
    assert refused.exit_code == 2 and "has no stream 'audio'" in refused.output
    assert not out.exists()
    with pytest.raises(MissingStreamError, match="has no stream 'audio'"):
        finetune_run(root / "both", rgb_only, tmp_path / "ft")
    assert not (tmp_path / "ft").exists()
    # The rgb run reads only what this store has.
    assert (
        runner.invoke(main, ["evaluate", str(root / "rgb"), "--store", str(rgb_only)]).exit_code
        == 0
    )


def test_finetune_reads_the_parent_streams(runs, tmp_path):
    root, store = runs
    metrics = finetune_run(root / "both", store, tmp_path / "ft")
    config = json.loads((tmp_path / "ft" / ck.CONFIG).read_text())
    assert config["data"]["streams"] == ["rgb", "audio"]
    assert metrics["n_test"] > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--streams", "rgb,depth"], "has no stream 'depth'"),
        (["--streams", "rgb", "--fusion", "shared"], "combines two or more streams"),
    ],
)
def test_train_refuses_before_creating_out(runs, tmp_path, options, message):
    _, store = runs
    out = tmp_path / "run"
    result = _train(store, out, *options)
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "unused"),
    [
        (["--streams", "rgb", "--fusion-weight", "0.5"], "--fusion-dim, --fusion-weight"),
        (["--fusion-weight", "0.5"], "--fusion-dim, --fusion-weight"),  # concat of two
        (["--fusion", "shared", "--fusion-weight", "0.5"], "--fusion-weight"),
        (["--fusion", "projection", "--fusion-weight", "0.5"], None),
    ],
    ids=["one-stream", "concat", "shared", "projection"],
)
def test_fusion_settings_a_run_does_not_use_are_named(runs, tmp_path, options, unused):
    # They were taken without a word: --fusion-dim 64 on one stream trained the same head.
    _, store = runs
    result = _train(store, tmp_path / "run", *options, "--epochs", "1")
    assert result.exit_code == 0, result.output
    if unused is None:
        assert "not used by --fusion" not in result.output
    else:
        assert f"{unused}: not used by --fusion" in result.output


def test_video_level_store_trains_video_level_heads_and_refuses_recurrent(tmp_path):
    store = write_sum_store(tmp_path / "video.h5", 36, dims=DIMS, level="video")
    with open_store(store) as reader:
        assert reader.level == "video"
        label_map, videos = build_label_map(reader.videos)
        vid = videos["video_id"].iloc[0]
        means = np.concatenate([reader.mean(vid, "rgb"), reader.mean(vid, "audio")])
    sample = FeatureDataset(store, videos.iloc[:1], label_map, DataConfig())[0]
    np.testing.assert_array_equal(sample.x.numpy(), means[None])  # one "frame": the means
    runner = CliRunner()
    for head in ("logistic", "moe"):
        out = tmp_path / head
        result = runner.invoke(
            main, ["-q", "train", str(store), "-m", head, "-o", str(out), "--epochs", "2"]
        )
        assert result.exit_code == 0, result.output
        assert runner.invoke(main, ["evaluate", str(out)]).exit_code == 0
    out = tmp_path / "lstm"
    result = runner.invoke(main, ["train", str(store), "-m", "lstm", "-o", str(out)])
    assert result.exit_code == 2
    assert "store is video-level" in result.output and "logistic or moe" in result.output
    assert not out.exists()


def test_fusion_matrices_start_from_n_0_001():
    from heads.models import HeadConfig, create_head

    torch.manual_seed(0)
    cfg = HeadConfig(fusion="shared", fusion_dim=64)
    model = create_head(
        "logistic", input_dim=1152, num_classes=3, cfg=cfg, streams={"rgb": 1024, "audio": 128}
    )
    weights = torch.cat([m.weight.detach().flatten() for m in model.fusion.maps])
    assert abs(float(weights.mean())) < 1e-3
    assert float(weights.std()) == pytest.approx(0.01, rel=0.02)


def test_streams_train_and_evaluate_on_an_imported_youtube8m_store(tmp_path):
    """YouTube-8M's frame-level records (exported, then imported as released files are): rgb
    1024 and audio 128, uint8. Both streams together solve the task."""
    from vidfeat_cli.vidfeat import main as vidfeat

    store = write_sum_store(
        tmp_path / "sum.h5", 180, dims={"rgb": 1024, "audio": 128}, dtype="uint8"
    )
    runner = CliRunner()
    records = tmp_path / "records"
    exported = ["-q", "export-yt8m", str(store), "--out", str(records)]
    assert runner.invoke(vidfeat, [*exported, "--records-per-file", "60"]).exit_code == 0
    # Google's file names give the splits: train on train*, validate and test on validate*.
    (records / "train0002.tfrecord").rename(records / "validate0000.tfrecord")
    imported = tmp_path / "yt8m.h5"
    result = runner.invoke(vidfeat, ["-q", "import-yt8m", str(records), "--out", str(imported)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    result = _train(imported, out, "--streams", "rgb,audio")
    assert result.exit_code == 0, result.output
    assert _hit(out) >= 0.90
    assert runner.invoke(main, ["evaluate", str(out)]).exit_code == 0
