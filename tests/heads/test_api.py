"""The public Python API (``heads.load_run``, ``heads.FeatureDataset``, ``heads.collate``), the
README's own examples, the loggers, and a torch-free ``heads.config``."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import heads
from heads import checkpoint as ck
from heads.config import DataConfig, HeadConfig, TrainConfig
from heads.errors import MissingStreamError
from heads.run import train_run
from heads.synthetic import write_store
from tests.heads.stores import cluster_videos
from vidfeat.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
SMALL = HeadConfig(hidden_size=16, fc_size=16)


def _split_store(path: Path, n_videos: int = 36) -> Path:
    """A learnable 3-class store whose ``split`` column says train/val/test."""
    videos = cluster_videos(n_videos, signal=2.0)
    names = ("train", "train", "train", "val", "test", "test")
    splits = {vid: names[(i // 3) % len(names)] for i, (vid, _, _) in enumerate(videos)}
    attrs = {"backbone": "synthetic", "weights": "w1", "pca": None}
    return write_store(path, videos, dim=16, attrs=attrs, splits=splits)


def _readme_python_blocks(section: str) -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)


def test_readme_training_loop_and_prediction_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _split_store(Path("feats.zarr"))
    cfg = TrainConfig(model="gru", head=SMALL, epochs=2)
    train_run("feats.zarr", cfg, "runs/gru")
    blocks = _readme_python_blocks("Python API for training")
    assert len(blocks) == 2
    loop = blocks[0].strip().splitlines()
    assert len([ln for ln in loop if ln.strip()]) <= 12  # "ten lines" of loop, plus imports
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    # The loop trained: the model now separates the classes of its training videos.
    model, train = namespace["model"], namespace["train"]
    batch = heads.collate([train[i] for i in range(len(train))])
    hits = (model.eval()(batch.x, batch.lengths).argmax(1) == batch.labels.argmax(1)).float()
    assert hits.mean() > 0.8
    # Prediction printed one line per test video, with a class of the run.
    lines = capsys.readouterr().out.strip().splitlines()
    test = namespace["test"]
    assert [ln.split()[0] for ln in lines] == test.video_ids and len(lines) == 12
    assert {ln.split()[1] for ln in lines} <= set(namespace["run"].label_map.labels)


def test_feature_dataset_over_a_store(tmp_path):
    path = _split_store(tmp_path / "s.zarr")
    everything = heads.FeatureDataset(path)
    parts = {s: heads.FeatureDataset(path, split=s) for s in ("train", "val", "test")}
    assert sorted(v for p in parts.values() for v in p.video_ids) == sorted(everything.video_ids)
    assert {len(p) for p in parts.values()} == {18, 6, 12}
    assert parts["val"].label_map == everything.label_map  # one map over all the videos
    sample = everything[0]
    assert sample.x.shape == (everything.n_frames[0], 16) and everything.dim == 16
    assert parts["train"][3].labels.sum() == 1
    assert heads.FeatureDataset(path, streams=("rgb",)).video_ids == everything.video_ids
    with pytest.raises(MissingStreamError, match="has no stream 'audio'"):
        heads.FeatureDataset(path, streams=("rgb", "audio"))
    with pytest.raises(ConfigError, match="unknown split names"):
        heads.FeatureDataset(path, split="holdout")
    plain = write_store(tmp_path / "p.zarr", cluster_videos(6), dim=16)
    with pytest.raises(ConfigError, match="no split column"):
        heads.FeatureDataset(plain, split="train")


def test_load_run_is_ready_to_predict(tmp_path):
    path = _split_store(tmp_path / "s.zarr")
    train_run(path, TrainConfig(model="bof", head=SMALL, epochs=3), tmp_path / "run")
    run = heads.load_run(tmp_path / "run")
    assert not run.model.training and run.cfg.model == "bof"
    test = heads.FeatureDataset(path, split="test", label_map=run.label_map, cfg=run.cfg.data)
    batch = heads.collate([test[i] for i in range(len(test))])
    probs = run.predict(batch.x, batch.lengths)
    assert probs.shape == (12, 3)
    assert torch.allclose(probs.sum(1), torch.ones(12))  # single-label: softmax
    saved = np.load(tmp_path / "run" / f"{ck.TEST_PREDICTIONS}.npz")
    order = [list(saved["video_id"]).index(v) for v in test.video_ids]
    assert np.allclose(probs.numpy(), saved["scores"][order], atol=1e-5)


def test_a_runs_own_splits_come_from_the_run_when_the_store_has_none(tmp_path):
    # A store extracted without a split column: heads train drew the splits (split.csv).
    plain = write_store(tmp_path / "p.zarr", cluster_videos(30, dim=16), dim=16)
    train_run(plain, TrainConfig(model="bof", head=SMALL, epochs=2), tmp_path / "run")
    run = heads.load_run(tmp_path / "run")
    splits = pd.read_csv(tmp_path / "run" / ck.SPLIT)
    for split in ("train", "val", "test"):
        wanted = set(splits.loc[splits["split"] == split, "video_id"])
        assert set(run.dataset(split).video_ids) == wanted and wanted
    assert len(run.dataset("all")) == 30
    test = run.dataset()
    batch = heads.collate([test[i] for i in range(len(test))])
    saved = np.load(tmp_path / "run" / f"{ck.TEST_PREDICTIONS}.npz")
    order = [list(saved["video_id"]).index(v) for v in test.video_ids]
    assert np.allclose(
        run.predict(batch.x, batch.lengths).numpy(), saved["scores"][order], atol=1e-5
    )
    with pytest.raises(ConfigError, match="split must be one of"):
        run.dataset("holdout")


def test_loggers_mirror_every_evaluation(tmp_path):
    path = _split_store(tmp_path / "s.zarr")
    cfg = TrainConfig(model="bof", head=SMALL, epochs=3, patience=0)
    run = tmp_path / "run"
    train_run(path, cfg, run, logger="tensorboard")
    records = [json.loads(ln) for ln in (run / ck.METRICS).read_text().splitlines()]
    events = EventAccumulator(str(run / ck.TENSORBOARD))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "val/loss", "val/hit_at_1", "val/gap_at_20", "lr"} <= set(tags)
    for tag, key in (("train/loss", "train_loss"), ("val/hit_at_1", "val_hit_at_1")):
        points = events.Scalars(tag)
        assert [p.step for p in points] == [1, 2, 3]
        assert [p.value for p in points] == pytest.approx([r[key] for r in records])
    train_run(path, cfg, tmp_path / "csv")  # the default logger
    with open(tmp_path / "csv" / ck.METRICS_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["val_loss"]) for r in rows] == pytest.approx([r["val_loss"] for r in records])
    assert not (tmp_path / "csv" / ck.TENSORBOARD).exists()


def test_unknown_logger_is_refused_before_training(tmp_path):
    path = _split_store(tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match="unknown logger 'wandb'"):
        train_run(path, TrainConfig(model="bof", epochs=1), tmp_path / "run", logger="wandb")
    assert not (tmp_path / "run").exists()


def test_config_and_api_names_import_without_torch():
    code = (
        "import sys, heads, heads.config, heads.errors, heads.identity, heads.loggers;"
        "heads.config.TrainConfig(model='gru', data=heads.config.DataConfig(max_frames=5));"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    assert isinstance(DataConfig().max_frames, int)


def test_training_on_a_store_being_written_says_so(tmp_path, caplog):
    # It trained on the videos committed so far and ended "finished", without a word.
    from vidfeat import create_store

    path = tmp_path / "live.zarr"
    writer = create_store(
        path, dim=16, attrs={"backbone": "synthetic", "weights": "w1", "pca": None}
    )
    try:
        for vid, x, labels in cluster_videos(12):
            writer.write(vid, x, labels=labels)
        writer.flush()
        with caplog.at_level("WARNING", logger="heads.run"):
            train_run(path, TrainConfig(model="logistic", epochs=1), tmp_path / "run")
    finally:
        writer.close()
    assert "is being written (part main): this run reads the 12 videos committed" in caplog.text
