import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from heads import checkpoint as ck
from heads.batching import make_loader
from heads.config import DataConfig, TrainConfig
from heads.data import FeatureDataset
from heads.errors import (
    IncompatibleStoreError,
    RunDataMismatchError,
    RunExistsError,
    TrainingDataError,
)
from heads.identity import check_store_compatible, store_identity
from heads.inference import evaluate_run, load_run
from heads.labels import MultiHot, build_label_map
from heads.models import HeadConfig, create_head
from heads.objective import inverse_frequency_weights
from heads.run import check_training_set, load_data, train_run
from heads.synthetic import write_store, write_sum_store
from heads.trainer import Loaders, train
from tests.heads.stores import cluster_videos, make_cluster_store
from vidfeat.errors import ConfigError
from vidfeat.store import open_store

REPO = Path(__file__).resolve().parents[2]
SMALL_HEAD = HeadConfig(hidden_size=16, fc_size=16, attention_size=8)


def _loaders(path, cfg: TrainConfig):
    with open_store(path) as reader:
        label_map, videos = build_label_map(reader.videos)
        dim = reader.dim
    n_val = len(videos) // 3
    sets = {
        "train": FeatureDataset(path, videos[n_val:], label_map, cfg.data, train=True),
        "val": FeatureDataset(path, videos[:n_val], label_map, cfg.data),
    }
    loaders = Loaders(
        train=make_loader(sets["train"], cfg.data, shuffle=True, seed=cfg.seed),
        val=make_loader(sets["val"], cfg.data, shuffle=False),
    )
    meta = {
        "label_map": label_map.to_dict(),
        "store": {"dim": dim},
        "input_dim": dim,
        "num_classes": len(label_map),
    }
    return loaders, meta


def _noise_store(tmp_path):
    # Labels carry no signal: training loss falls while validation loss rises (overfitting).
    return make_cluster_store(tmp_path / "noise.zarr", n_videos=90, signal=0.0, dim=32)


def test_early_stopping_stops_and_restores_best(tmp_path):
    path = _noise_store(tmp_path)
    cfg = TrainConfig(
        model="bof",
        head=HeadConfig(fc_size=256, dropout=0.0),
        lr=0.01,
        epochs=40,
        patience=3,
        data=DataConfig(batch_size=8),
    )
    loaders, meta = _loaders(path, cfg)
    torch.manual_seed(0)
    model = create_head("bof", input_dim=32, num_classes=3, cfg=cfg.head)
    result = train(model, loaders, cfg, tmp_path / "run", meta=meta)
    val_loss = [r["val_loss"] for r in result.history]
    assert result.epochs_run == result.best_epoch + 3 < 40  # stopped by patience
    assert result.best_epoch == int(np.argmin(val_loss)) + 1
    assert val_loss[-1] > val_loss[result.best_epoch - 1]
    best = ck.load_checkpoint(tmp_path / "run" / ck.BEST)
    last = ck.load_checkpoint(tmp_path / "run" / ck.LAST)
    assert best["epoch"] == result.best_epoch and last["epoch"] == result.epochs_run
    for name, tensor in model.state_dict().items():  # the returned model holds the best weights
        assert torch.equal(tensor.cpu(), best["model_state"][name])
    assert any(not torch.equal(best["model_state"][k], v) for k, v in last["model_state"].items())
    lines = (tmp_path / "run" / ck.METRICS).read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, result.epochs_run + 1))


def test_trainable_params_subset_freezes_the_rest(tmp_path):
    path = make_cluster_store(tmp_path / "s.zarr", n_videos=30)
    cfg = TrainConfig(model="gru", head=SMALL_HEAD, epochs=2, patience=0)
    loaders, meta = _loaders(path, cfg)
    model = create_head("gru", input_dim=16, num_classes=3, cfg=cfg.head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_params = list(model.classifier.parameters())
    result = train(model, loaders, cfg, tmp_path / "run", meta=meta, trainable_params=head_params)
    assert result.trainable_params == sum(p.numel() for p in head_params)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("fc.") for k in changed)
    record = json.loads((tmp_path / "run" / ck.METRICS).read_text().splitlines()[0])
    assert record["trainable_params"] == result.trainable_params


def _only_primitives(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _only_primitives(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_only_primitives(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool, torch.Tensor))


def test_checkpoint_is_self_describing_and_weights_only(tmp_path):
    path = make_cluster_store(tmp_path / "s.zarr", n_videos=40)
    cfg = TrainConfig(model="bilstm", head=SMALL_HEAD, epochs=2, lr_step=1, lr_gamma=0.5)
    metrics = train_run(path, cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert _only_primitives(state)
    assert state["model_name"] == "bilstm"
    # The default streams (every one) are recorded resolved: this store has one, rgb.
    resolved = cfg.replace(data=dataclasses.replace(cfg.data, streams=("rgb",)))
    assert TrainConfig.from_dict(state["train_config"]) == resolved
    assert HeadConfig.from_dict(state["head_config"]) == SMALL_HEAD
    assert state["label_map"] == {"labels": ["class0", "class1", "class2"], "multilabel": False}
    assert state["store"]["dim"] == 16 and state["store"]["attrs"]["weights"] == "w1"
    assert [r["lr"] for r in state["history"]][:2] == [1e-3, 5e-4]  # step decay
    run = load_run(tmp_path / "run")
    assert run.model.classifier.out_features == 3
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["n_test"] == 8 and saved["trainable_params"] > 0 and saved["train_wall_s"] > 0
    preds = np.load(tmp_path / "run" / "test_predictions.npz", allow_pickle=False)
    assert preds["scores"].shape == preds["labels"].shape == (8, 3)
    np.testing.assert_allclose(preds["scores"].sum(axis=1), 1.0, rtol=1e-5)  # softmax


def test_multilabel_store_uses_sigmoid_bce(tmp_path):
    videos = [
        (v, x, lbl + (("extra",) if i % 3 == 0 else ()))
        for i, (v, x, lbl) in enumerate(cluster_videos(45))
    ]
    path = write_store(tmp_path / "m.zarr", videos, dim=16)
    train_run(path, TrainConfig(model="logistic", epochs=2), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "label_map.json").read_text())["multilabel"] is True
    scores = np.load(tmp_path / "run" / "test_predictions.npz")["scores"]
    assert not np.allclose(scores.sum(axis=1), 1.0)  # independent sigmoids


def test_inverse_frequency_weights():
    targets = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    w = inverse_frequency_weights(MultiHot.from_dense(targets)).numpy()
    assert w[0] * 3 == pytest.approx(w[1]) and w[2] == pytest.approx(w[1])  # absent: as if 1
    assert w.mean() == pytest.approx(1.0)


def test_incompatible_store_is_refused(tmp_path):
    train_store = make_cluster_store(tmp_path / "a.zarr", n_videos=30)
    train_run(train_store, TrainConfig(model="bof", epochs=1), tmp_path / "run")
    other_weights = make_cluster_store(
        tmp_path / "b.zarr",
        n_videos=12,
        seed=1,
        attrs={"backbone": "synthetic", "weights": "w2", "pca": None},
    )
    other_dim = make_cluster_store(tmp_path / "c.zarr", n_videos=12, dim=8, seed=1)
    with pytest.raises(IncompatibleStoreError, match="weights"):
        evaluate_run(tmp_path / "run", other_weights)
    with pytest.raises(IncompatibleStoreError, match="dim"):
        evaluate_run(tmp_path / "run", other_dim)
    # A uint8 copy of the same kind of features is fine: the store dequantizes.
    quantized = make_cluster_store(tmp_path / "d.h5", n_videos=12, seed=2, dtype="uint8")
    result = evaluate_run(tmp_path / "run", quantized)
    assert result["split"] == "all" and result["n"] == 12


def _unfinished_run(store: Path, cfg: TrainConfig, run: Path) -> None:
    """A run killed after its last epoch, before its test results (the last files written)."""
    train_run(store, cfg, run)
    (run / ck.TEST_METRICS).unlink()


def test_resume_needs_the_same_options(tmp_path):
    path = make_cluster_store(tmp_path / "s.zarr", n_videos=30)
    cfg = TrainConfig(model="bof", epochs=1)
    _unfinished_run(path, cfg, tmp_path / "run")
    with pytest.raises(RunExistsError, match="unfinished run; add --resume to continue"):
        train_run(path, cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="lr"):
        train_run(path, cfg.replace(lr=0.5), tmp_path / "run", resume=True)
    # A nested option is named with both values, not only by its group ("data").
    other_batch = cfg.replace(data=dataclasses.replace(cfg.data, batch_size=7))
    with pytest.raises(ConfigError, match=r"data\.batch_size: 32 in the run, 7 now"):
        train_run(path, other_batch, tmp_path / "run", resume=True)
    # The run's splits are in its split.csv: another --split-file is refused, not ignored.
    split_file = tmp_path / "splits.csv"
    shutil.copyfile(tmp_path / "run" / ck.SPLIT, split_file)
    with pytest.raises(ConfigError, match="keeps the run's splits"):
        train_run(path, cfg, tmp_path / "run", resume=True, split_file=split_file)


def test_temporary_files_of_killed_writes_are_swept_by_the_next_run(tmp_path):
    # A kill mid-write leaves the new file under its hidden temporary name; a checkpoint's
    # is checkpoint-sized, and reruns after preemptions would pile them up.
    path = make_cluster_store(tmp_path / "s.zarr", n_videos=30)
    cfg = TrainConfig(model="bof", epochs=1)
    run = tmp_path / "run"
    _unfinished_run(path, cfg, run)
    left = [run / f".{name}.{'ab' * 16}.tmp" for name in (ck.LAST, ck.BEST, ck.METRICS)]
    others = [run / f".notes.txt.{'cd' * 16}.tmp", run / "mine.tmp", run / f".{ck.LAST}.x.tmp"]
    for file in left + others:
        file.write_bytes(b"partial")
    train_run(path, cfg, run, resume=True)
    assert (run / ck.TEST_METRICS).exists()
    assert [f for f in left if f.exists()] == [] and all(f.exists() for f in others)
    left[0].write_bytes(b"partial")
    train_run(path, cfg, run, force=True)  # starting over sweeps them too
    assert not left[0].exists()


def test_resume_on_another_store_is_refused(tmp_path):
    path = make_cluster_store(tmp_path / "s.zarr", n_videos=30)
    cfg = TrainConfig(model="bof", epochs=2)
    run = tmp_path / "run"
    _unfinished_run(path, cfg, run)
    # Same ids, dim and labels; features from another backbone.
    attrs = {"backbone": "another", "weights": "w1", "pca": None}
    other = make_cluster_store(tmp_path / "o.zarr", n_videos=30, attrs=attrs)
    with pytest.raises(RunDataMismatchError, match=r"backbone.*another"):
        train_run(other, cfg, run, resume=True)
    # Same attrs, other videos (another seed: other ids, lengths and features).
    moved = make_cluster_store(tmp_path / "m.zarr", n_videos=30, seed=7)
    with pytest.raises(RunDataMismatchError, match=r"videos .* differ"):
        train_run(moved, cfg, run, resume=True)
    # Same ids, lengths, labels and attrs, other numbers (re-extracted videos).
    redone = tmp_path / "redone.zarr"
    videos = [(vid, x + 0.25, labels) for vid, x, labels in cluster_videos(30)]
    attrs = {"backbone": "synthetic", "weights": "w1", "pca": None}
    write_store(redone, videos, dim=16, attrs=attrs)
    with pytest.raises(RunDataMismatchError, match="same videos hold other features"):
        train_run(redone, cfg, run, resume=True)
    assert not (run / ck.TEST_METRICS).exists()  # nothing was trained or written
    # A copy of the very same store elsewhere is the same data.
    copy = make_cluster_store(tmp_path / "copy.h5", n_videos=30)
    assert train_run(copy, cfg, run, resume=True)["n_test"] > 0


def test_finished_run_is_never_overwritten_without_force(tmp_path, caplog):
    path = make_cluster_store(tmp_path / "s.zarr", n_videos=30)
    cfg = TrainConfig(model="bof", epochs=1)
    run = tmp_path / "run"
    first = train_run(path, cfg, run)
    written = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(RunExistsError, match="finished run; add --force"):
        train_run(path, cfg, run)
    tiny = make_cluster_store(tmp_path / "tiny.zarr", n_videos=6, seed=3)
    with caplog.at_level("WARNING"):
        assert train_run(tiny, cfg, run, resume=True) == json.loads(json.dumps(first))
    assert "finished run: nothing to resume" in caplog.text
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == written
    again = train_run(path, cfg.replace(epochs=2), run, force=True)
    assert again["epochs_run"] == 2
    assert ck.read_json(run / ck.CONFIG)["epochs"] == 2


def test_one_class_or_one_video_is_refused_before_anything_is_written(tmp_path):
    one_class = make_cluster_store(tmp_path / "c.zarr", n_videos=12, n_classes=1)
    with pytest.raises(TrainingDataError, match="single class"):
        train_run(one_class, TrainConfig(model="bof", epochs=1), tmp_path / "run1")
    assert not (tmp_path / "run1").exists()
    store = make_cluster_store(tmp_path / "v.zarr", n_videos=4, n_classes=2)
    splits = tmp_path / "splits.csv"
    splits.write_text("video_id,split\nc0-0000,train\nc0-0001,val\nc0-0002,test\nc0-0003,test\n")
    with pytest.raises(TrainingDataError, match="1 training video"):
        train_run(store, TrainConfig(model="bof"), tmp_path / "run2", split_file=splits)
    assert not (tmp_path / "run2").exists()


# --------------------------------------------------------------------------- real kill, resume


def _heads(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vidfeat_cli.heads", "-q", "train", *map(str, args)]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


def _epochs_done(run: Path) -> int:
    try:
        return len((run / ck.METRICS).read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    path = make_cluster_store(tmp_path / "s.zarr", n_videos=48, signal=0.4)
    args = [
        path,
        "--model",
        "gru",
        "--hidden-size",
        16,
        "--fc-size",
        16,
        "--epochs",
        12,
        "--patience",
        0,
        "--seed",
        7,
        "--batch-size",
        8,
        "--sampling",
        "random-crop",
        "--max-frames",
        8,
    ]
    full = _heads([*args, "--out", tmp_path / "full"])
    killed_run = tmp_path / "killed"
    victim = _heads([*args, "--out", killed_run])
    deadline = time.monotonic() + 300
    while _epochs_done(killed_run) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    # The metrics line of an epoch is written just before its last.pt: a kill in between
    # leaves one line more than the checkpoint, which the resume must drop and redo.
    interrupted_at = ck.load_checkpoint(killed_run / ck.LAST)["epoch"]
    assert 1 <= interrupted_at < 12
    assert not (killed_run / ck.TEST_METRICS).exists()
    resumed = _heads([*args, "--out", killed_run, "--resume"])
    for proc in (resumed, full):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()

    def strip(records):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]

    lines = {
        name: [json.loads(x) for x in (tmp_path / name / ck.METRICS).read_text().splitlines()]
        for name in ("full", "killed")
    }
    assert len(lines["full"]) == 12
    assert strip(lines["killed"]) == strip(lines["full"])
    test = {
        name: json.loads((tmp_path / name / ck.TEST_METRICS).read_text())
        for name in ("full", "killed")
    }
    test["full"].pop("train_wall_s"), test["killed"].pop("train_wall_s")
    assert test["killed"] == test["full"]
    best = {name: ck.load_checkpoint(tmp_path / name / ck.BEST) for name in ("full", "killed")}
    for key, tensor in best["full"]["model_state"].items():
        assert torch.equal(tensor, best["killed"]["model_state"][key])


def test_pca_is_identified_by_its_matrix_not_its_source(tmp_path):
    def store(name, pca):
        attrs = {"backbone": {"name": "inception_v3", "weights_id": "tf"}, "pca": pca}
        return open_store(make_cluster_store(tmp_path / name, n_videos=3, attrs=attrs))

    fitted = {"sha256": "ab" * 32, "source": "fit on a.zarr", "output_dim": 16}
    with store("a.zarr", fitted) as a:
        provenance = store_identity(a)
    moved = {**fitted, "source": "fit on a copy"}
    with store("b.zarr", moved) as b:
        check_store_compatible(provenance, b)  # same matrix: fine
    other = pytest.raises(IncompatibleStoreError, match="pca: model trained on")
    with store("c.zarr", {**fitted, "sha256": "cd" * 32}) as c, other:
        check_store_compatible(provenance, c)
    with store("d.zarr", None) as d, pytest.raises(IncompatibleStoreError, match="pca"):
        check_store_compatible(provenance, d)


class _InterruptWhilePickled:
    """Sends this process SIGINT while torch.save pickles it: an interrupt mid-checkpoint."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (int, (7,))


def test_an_interrupt_during_a_checkpoint_write_waits_for_the_write(tmp_path):
    # Raised inside torch.save's zip writer, Ctrl-C or SIGTERM came out as its RuntimeError
    # ("unexpected pos ...") and the command ended as an internal error, without the checkpoint.
    path = tmp_path / "last.pt"
    state = {"before": torch.arange(5000.0), "bomb": _InterruptWhilePickled()}
    state["after"] = torch.ones(5000)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, state)
    saved = torch.load(path, weights_only=False)  # written whole before the interrupt
    assert saved["bomb"] == 7 and torch.equal(saved["after"], torch.ones(5000))


def test_skip_first_past_the_end_of_videos_is_said(tmp_path, caplog):
    store = make_cluster_store(tmp_path / "s.zarr", n_videos=40)  # videos of 4-19 frames
    cfg = TrainConfig(model="bof", data=DataConfig(skip_first=10))
    with open_store(store) as reader:
        data = load_data(store, cfg, reader=reader)
        short = int((data.sets["train"].n_frames <= 10).sum())
        assert 0 < short < len(data.sets["train"])
        with caplog.at_level("WARNING", logger="heads.run"):
            check_training_set(data)
        message = f"--skip-first 10: {short} of {len(data.sets['train'])} training videos"
        assert message in caplog.text and "last frame only" in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING", logger="heads.run"):
            check_training_set(load_data(store, TrainConfig(model="bof"), reader=reader))
        assert "--skip-first" not in caplog.text
    # A video-level store has no frames to skip: its videos are read whole whatever the option.
    videos = write_sum_store(tmp_path / "v.zarr", 40, level="video")
    cfg = TrainConfig(model="logistic", data=DataConfig(skip_first=5))
    with open_store(videos) as reader, caplog.at_level("WARNING", logger="heads.run"):
        check_training_set(load_data(videos, cfg, reader=reader))
    assert "--skip-first" not in caplog.text


def test_a_runs_splits_read_through_the_one_reader_the_run_opened(tmp_path):
    # HDF5: a reader closed by one of the splits could no longer read for the others.
    store = make_cluster_store(tmp_path / "s.h5", n_videos=30)
    with open_store(store) as reader:
        data = load_data(store, TrainConfig(model="bof"), reader=reader)
        assert data.reader is reader
        assert all(ds._store() is reader for ds in data.sets.values())
        train, val = data.sets["train"], data.sets["val"]
        first = train[0].x
        train.close()  # the run's reader is not the dataset's to close
        np.testing.assert_array_equal(val[0].x.numpy(), reader.read(val.video_ids[0]))
        assert torch.equal(train[0].x, first)  # reopened on its own after its close()
        assert train._store() is not reader
        train.close()
        elsewhere = pickle.loads(pickle.dumps(val))  # as a DataLoader worker gets it
        assert elsewhere._store() is not reader
        assert torch.equal(elsewhere[0].x, val[0].x)
        elsewhere.close()
