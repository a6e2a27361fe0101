"""Run-level operations behind the ``heads`` CLI: train a run directory, evaluate, predict.

These glue the pieces together (store -> label map -> splits -> datasets -> head -> trainer)
and own the run-directory layout; the training loop itself is in :mod:`heads.trainer`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from heads import checkpoint as ck
from heads.config import TrainConfig
from heads.data import FeatureDataset, LabelMap, build_label_map, make_loader
from heads.metrics import evaluate_all
from heads.models import Head, HeadConfig, create_head
from heads.splits import assign_splits, load_splits, merge_split_file, read_split_file, save_splits
from heads.streams import with_streams
from heads.trainer import (
    Loaders,
    Loss,
    loss_weights,
    predict_logits,
    resolve_device,
    train,
)
from vidfeat.errors import ConfigError
from vidfeat.store import StoreReader, open_store

log = logging.getLogger(__name__)

# Options that may change between a killed run and its resume: they do not affect results.
RESUMABLE_CHANGES = ("device",)
RESUMABLE_DATA_CHANGES = ("num_workers",)


def is_multilabel(cfg: TrainConfig, label_map: LabelMap) -> bool:
    return label_map.multilabel if cfg.loss == "auto" else cfg.loss == "multi"


def _check_resume(saved: TrainConfig, wanted: TrainConfig) -> None:
    a, b = saved.to_dict(), wanted.to_dict()
    for key in RESUMABLE_CHANGES:
        a.pop(key), b.pop(key)
    for key in RESUMABLE_DATA_CHANGES:
        a["data"].pop(key), b["data"].pop(key)
    diffs = [k for k in a if a[k] != b[k]]
    if diffs:
        raise ConfigError(
            "--resume needs the options of the original run; these differ: " + ", ".join(diffs)
        )


def _prepare_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool) -> bool:
    """Create ``run_dir``; True if it holds a run to continue."""
    config = run_dir / ck.CONFIG
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} exists and is not a directory")
    if config.exists() and not resume:
        raise ConfigError(f"{run_dir} already holds a run; add --resume or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not config.exists():
        return False
    saved = ck.read_json(config)
    saved.pop("store", None)
    _check_resume(TrainConfig.from_dict(saved), cfg)
    return True


def _split_videos(
    reader: StoreReader, cfg: TrainConfig, split_file: str | Path | None
) -> tuple[LabelMap, pd.DataFrame]:
    videos = reader.videos
    if split_file is not None:
        videos = merge_split_file(videos, read_split_file(split_file))
    label_map, kept = build_label_map(videos, cfg.data.classes)
    splits = assign_splits(
        kept,
        test_fraction=cfg.data.test_fraction,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
    )
    kept = kept.drop(columns=["split"], errors="ignore").merge(splits, on="video_id")
    return label_map, kept


def split_datasets(
    store_path: str | Path, videos: pd.DataFrame, label_map: LabelMap, cfg: TrainConfig
) -> dict[str, FeatureDataset]:
    """One dataset per split of ``videos`` (its ``split`` column); only train is augmented."""
    return {
        name: FeatureDataset(
            store_path,
            videos[videos["split"] == name],
            label_map,
            cfg.data,
            train=name == "train",
            seed=cfg.seed,
        )
        for name in ("train", "val", "test")
    }


def _loaders(sets: dict[str, FeatureDataset], cfg: TrainConfig) -> Loaders:
    if not len(sets["train"]):
        raise ConfigError("no training videos after splitting")
    pin = resolve_device(cfg.device).type == "cuda"  # page-locked batches copy asynchronously
    train_loader = make_loader(sets["train"], cfg.data, shuffle=True, seed=cfg.seed, pin_memory=pin)
    val_loader = make_loader(sets["val"], cfg.data, shuffle=False, pin_memory=pin)
    return Loaders(train=train_loader, val=val_loader if len(sets["val"]) else None)


def train_run(
    store_path: str | Path,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    split_file: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``cfg.model`` on the store into ``run_dir``; returns the test metrics."""
    run_dir = Path(run_dir)
    with open_store(store_path) as reader:  # streams and head checked before run_dir exists
        cfg = with_streams(cfg, reader)
    continuing = _prepare_run_dir(run_dir, cfg, resume)
    with open_store(store_path) as reader:
        provenance = ck.store_provenance(reader, cfg.data.streams)
        label_map, videos = _split_videos(reader, cfg, split_file)
    if continuing:
        # The saved split is authoritative (a split file may have moved since).
        saved = load_splits(run_dir / ck.SPLIT)
        videos = videos.drop(columns=["split"]).merge(saved, on="video_id")
        label_map = LabelMap.load(run_dir / ck.LABEL_MAP)
    else:
        ck.write_json(run_dir / ck.CONFIG, {**cfg.to_dict(), "store": provenance})
        ck.write_json(run_dir / ck.LABEL_MAP, label_map.to_dict())
        save_splits(videos, run_dir / ck.SPLIT)
    sets = split_datasets(store_path, videos, label_map, cfg)
    log.info("%d classes; videos: %s", len(label_map), {k: len(v) for k, v in sets.items()})
    loaders = _loaders(sets, cfg)
    torch.manual_seed(cfg.seed)  # model initialisation
    model = create_head(
        cfg.model,
        input_dim=provenance["dim"],
        num_classes=len(label_map),
        cfg=cfg.head,
        streams=ck.recorded_streams(provenance),
    )
    weights = loss_weights(cfg, sets["train"].targets)
    meta = {
        "label_map": label_map.to_dict(),
        "store": provenance,
        "input_dim": provenance["dim"],
        "num_classes": len(label_map),
    }
    result = train(
        model,
        loaders,
        cfg,
        run_dir,
        meta=meta,
        **weights,
        resume=continuing,
        progress=progress,
    )
    summary = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "trainable_params": result.trainable_params,
        "train_wall_s": result.wall_s,
    }
    return write_test_results(model, sets["test"], cfg, label_map, run_dir, summary)


def write_test_results(
    model: Head,
    test: FeatureDataset,
    cfg: TrainConfig,
    label_map: LabelMap,
    run_dir: Path,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate ``model`` on ``test``; write test_metrics.json (with ``summary`` merged in) and
    test_predictions.{npz,csv} into ``run_dir``. Returns the metrics."""
    if not len(test):
        log.warning("no test videos: test metrics are empty")
        metrics = {"n_test": 0, **summary}
        ck.write_json(run_dir / ck.TEST_METRICS, metrics)
        return metrics
    device = resolve_device(cfg.device)
    scores, labels = predict_scores(model, test, cfg, label_map, device)
    metrics = evaluate_all(scores, labels)
    metrics = {k: v for k, v in metrics.items() if k != "n"} | {"n_test": len(test), **summary}
    ck.write_json(run_dir / ck.TEST_METRICS, metrics)
    write_predictions(run_dir / ck.TEST_PREDICTIONS, test.video_ids, scores, labels, label_map)
    log.info("test: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in _SHOWN))
    return metrics


_SHOWN = ("hit_at_1", "gap_at_20", "mean_ap")


def predict_scores(
    model: Head,
    dataset: FeatureDataset,
    cfg: TrainConfig,
    label_map: LabelMap,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) probabilities and (N, C) labels, in dataset order."""
    loader = make_loader(dataset, cfg.data, shuffle=False)
    model.to(device)
    logits, labels = predict_logits(model, loader, device)
    probs = Loss(is_multilabel(cfg, label_map)).probabilities(torch.from_numpy(logits))
    return probs.numpy().astype(np.float32), labels


def format_top_k(scores: np.ndarray, names: tuple[str, ...], k: int, sep: str = ":") -> str:
    """'label:score label:score ...' of the k best classes (ties by class index)."""
    order = np.argsort(-scores, kind="stable")[:k]
    return " ".join(f"{names[i]}{sep}{scores[i]:.6f}" for i in order)


def write_predictions(
    stem: Path, video_ids: list[str], scores: np.ndarray, labels: np.ndarray, label_map: LabelMap
) -> None:
    """``stem``.npz (all scores) and ``stem``.csv (top-20 label:score pairs and true labels)."""
    np.savez(
        stem.with_suffix(".npz"),
        video_id=np.array(video_ids, dtype=str),
        scores=scores.astype(np.float32),
        labels=labels.astype(np.uint8),
        class_names=np.array(label_map.labels, dtype=str),
    )
    k = min(20, len(label_map))
    rows = {
        "video_id": video_ids,
        "labels": [";".join(np.array(label_map.labels)[y > 0]) for y in labels],
        "predictions": [format_top_k(s, label_map.labels, k) for s in scores],
    }
    pd.DataFrame(rows).to_csv(stem.with_suffix(".csv"), index=False)


# ------------------------------------------------------------------------------ saved runs


@dataclasses.dataclass
class LoadedRun:
    run_dir: Path
    cfg: TrainConfig
    label_map: LabelMap
    provenance: dict[str, Any]
    model: Head
    checkpoint: dict[str, Any]


def model_from_checkpoint(state: dict[str, Any]) -> Head:
    """Rebuild the head a checkpoint describes and load its weights (eval mode, CPU)."""
    model = create_head(
        state["model_name"],
        input_dim=int(state["input_dim"]),
        num_classes=int(state["num_classes"]),
        cfg=HeadConfig.from_dict(state["head_config"]),
        streams=ck.recorded_streams(state["store"]),
    )
    model.load_state_dict(state["model_state"])
    return model.eval()


def load_run(run_dir: str | Path, checkpoint: str = ck.BEST) -> LoadedRun:
    """A trained run from its directory (best weights by default)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ck.CheckpointError(f"run directory {run_dir} not found")
    state = ck.load_checkpoint(run_dir / checkpoint)
    return LoadedRun(
        run_dir=run_dir,
        cfg=TrainConfig.from_dict(state["train_config"]),
        label_map=LabelMap.from_dict(state["label_map"]),
        provenance=state["store"],
        model=model_from_checkpoint(state),
        checkpoint=state,
    )
