"""Run directories: the one training path behind ``heads train`` and ``heads finetune``.

Both go store -> label map and splits -> datasets -> checks -> run header -> fit -> test
results, through the functions here; fine-tuning (:mod:`heads.transfer`) only adds its warm
start and freezing. The loop itself is in :mod:`heads.trainer`; file names in
:mod:`heads.checkpoint`; what binds a run to its data in :mod:`heads.identity`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from heads import checkpoint as ck
from heads import distributed as dd
from heads.batching import make_loader
from heads.config import DataConfig, TrainConfig
from heads.data import FeatureDataset, open_data_store
from heads.errors import RunDataMismatchError, TrainingDataError
from heads.evaluation import logit_batches
from heads.identity import check_same_data, recorded_streams, store_identity
from heads.labels import LabelMap, build_label_map, multilabel_loss
from heads.loggers import check_loggers, create_loggers
from heads.metrics import MetricStream
from heads.models import Head, create_head, unused_fusion_settings
from heads.objective import Loss, loss_weights
from heads.predictions import PredictionsWriter, Scored
from heads.splits import (
    assign_splits,
    inherit_splits,
    load_splits,
    merge_split_file,
    read_split_file,
    save_splits,
)
from heads.streams import with_streams
from heads.trainer import Loaders
from heads.trainer import train as train_loop
from vidfeat.device import resolve_device
from vidfeat.errors import ConfigError
from vidfeat.location import as_location
from vidfeat.store import DEFAULT_CACHE_MB, StoreReader
from vidfeat.store.claim import parts_being_written

log = logging.getLogger(__name__)

# Options that may change between a killed run and its resume: they do not affect results.
RESUMABLE_CHANGES = ("device",)
RESUMABLE_DATA_CHANGES = ("num_workers", "cache_mb")
_SHOWN = ("hit_at_1", "gap_at_20", "mean_ap")


@dataclasses.dataclass
class RunData:
    """What a run trains on: the store, its identity, the classes and the split datasets."""

    store_path: str
    identity: dict[str, Any]  # heads.identity.store_identity, fingerprint included
    label_map: LabelMap
    videos: pd.DataFrame  # the kept videos, with their ``split``
    sets: dict[str, FeatureDataset]  # train / val / test, reading through ``reader``
    reader: StoreReader  # the run's one snapshot of the store; the caller that opened it closes it

    def meta(self, **extra: Any) -> dict[str, Any]:
        """What every checkpoint of the run carries about its data."""
        return {
            "label_map": self.label_map.to_dict(),
            "store": self.identity,
            "input_dim": self.identity["dim"],
            "num_classes": len(self.label_map),
            **extra,
        }


def is_multilabel(cfg: TrainConfig, label_map: LabelMap) -> bool:
    return multilabel_loss(cfg.loss, label_map)


# ------------------------------------------------------------------------------ run directory


def write_header(run_dir: Path, cfg: TrainConfig, data: RunData, **extra: Any) -> None:
    """label_map.json, split.csv, then config.json (with the store identity): config.json
    marks a run there (``ck.check_run_dir``), so it comes last, and a process killed before it
    leaves a directory the next run may start in afresh, rather than a run that --resume
    cannot read."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ck.write_json(run_dir / ck.LABEL_MAP, data.label_map.to_dict())
    save_splits(data.videos, run_dir / ck.SPLIT)
    ck.write_json(run_dir / ck.CONFIG, {**cfg.to_dict(), "store": data.identity, **extra})


def _check_resume(saved: TrainConfig, wanted: TrainConfig) -> None:
    a, b = saved.to_dict(), wanted.to_dict()
    for key in RESUMABLE_CHANGES:
        a.pop(key), b.pop(key)
    for key in RESUMABLE_DATA_CHANGES:
        a["data"].pop(key), b["data"].pop(key)
    if a["data"]["streams"] is None:  # saved before runs recorded streams: the store's only one
        b["data"]["streams"] = None
    diffs = "; ".join(f"{k}: {x!r} in the run, {y!r} now" for k, x, y in _differences(a, b))
    if diffs:
        raise ConfigError(f"--resume needs the options of the original run; these differ: {diffs}")


def _differences(a: dict, b: dict, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) of every setting that differs, nested ones by name
    (``data.batch_size``), so that a refusal names the option to change back."""
    for key in [*a, *(k for k in b if k not in a)]:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            yield from _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            yield f"{prefix}{key}", x, y


# ------------------------------------------------------------------------------ data


def load_data(
    store_path: str | Path,
    cfg: TrainConfig,
    *,
    split_file: str | Path | None = None,
    parent_splits: pd.DataFrame | None = None,
    saved_splits: pd.DataFrame | None = None,
    saved_label_map: LabelMap | None = None,
    recorded: dict[str, Any] | None = None,
    reader: StoreReader,
) -> RunData:
    """Label map, splits and datasets of a run on ``store_path``, open as ``reader``.

    Splits are the store's or the split file's, else made (stratified, seeded); with
    ``parent_splits`` (fine-tuning) the parent's videos keep theirs; with ``saved_splits`` and
    ``saved_label_map`` (a resumed run) the run's own are used as written, and the store must
    then match the ``recorded`` identity. The datasets read through ``reader`` in this process:
    the store's index is built and held once per run, not once per split.
    """
    videos = reader.videos
    if writing := parts_being_written(as_location(store_path)):
        # Said, not refused: training on a prefix can be deliberate, but a run that ends
        # "finished" on part of the data should not look like one on all of it.
        log.warning(
            "store %s is being written (part %s): this run reads the %d videos committed "
            "so far, not those still to come",
            store_path,
            ", ".join(writing),
            len(videos),
        )
    if split_file is not None:
        videos = merge_split_file(videos, read_split_file(split_file))
    label_map, kept = build_label_map(videos, cfg.data.classes)
    if saved_label_map is not None:
        label_map = saved_label_map
    fractions = {
        "test_fraction": cfg.data.test_fraction,
        "val_fraction": cfg.data.val_fraction,
        "seed": cfg.seed,
    }
    if saved_splits is not None:
        splits = saved_splits
    elif parent_splits is not None:
        splits = inherit_splits(kept, parent_splits, given=split_file is not None, **fractions)
    else:
        splits = assign_splits(kept, **fractions)
    kept = kept.drop(columns=["split"], errors="ignore").merge(splits, on="video_id")
    identity = store_identity(reader, kept, cfg.data.streams)
    if recorded is not None:
        check_same_data(recorded, reader, kept, "resume")
    sets = split_datasets(store_path, kept, label_map, cfg, reader=reader)
    return RunData(str(store_path), identity, label_map, kept, sets, reader)


def split_datasets(
    store_path: str | Path,
    videos: pd.DataFrame,
    label_map: LabelMap,
    cfg: TrainConfig,
    *,
    reader: StoreReader | None = None,
) -> dict[str, FeatureDataset]:
    """One dataset per split of ``videos`` (its ``split`` column); only train is augmented.
    With ``reader``, all of them read through it in this process."""
    return {
        name: FeatureDataset(
            store_path,
            videos[videos["split"] == name],
            label_map,
            cfg.data,
            train=name == "train",
            seed=cfg.seed,
            reader=reader,
        )
        for name in ("train", "val", "test")
    }


def check_training_set(data: RunData) -> None:
    """Refuse a training set a classifier cannot learn from, before anything is written: one
    class is "learnt" perfectly without looking at a single feature. Under torchrun, first
    that every rank read the same (then every check below decides the same on every rank)."""
    check_ranks_agree(data)
    train = data.sets["train"]
    if len(data.label_map) < 2:
        raise TrainingDataError(
            f"the training data has a single class ({data.label_map.labels[0]}): a classifier "
            "needs at least two (see --classes, or label more videos)"
        )
    if len(train) < 2:
        raise TrainingDataError(
            f"{len(train)} training video(s) after splitting: nothing to learn from "
            f"({len(data.videos)} labelled videos in all)"
        )
    skip = train.cfg.skip_first
    # A video-level store has no frames to skip (its n_frames are 0): nothing to say there.
    frames = data.reader.level != "video"
    short = int((train.n_frames <= skip).sum()) if skip and frames else 0
    if short:
        # effective_length keeps every video's last frame rather than dropping the video.
        log.warning(
            "--skip-first %d: %d of %d training videos have no more than %d frames; each "
            "trains on its last frame only",
            skip,
            short,
            len(train),
            skip,
        )
    present = train.targets.class_counts() > 0  # (C,)
    if not present.all():
        missing = [n for n, p in zip(data.label_map.labels, present, strict=True) if not p]
        log.warning(
            "%d of %d classes have no training video and cannot be learnt: %s",
            len(missing),
            len(present),
            ", ".join(missing[:5]),
        )


def make_loaders(sets: dict[str, FeatureDataset], cfg: TrainConfig) -> Loaders:
    pin = resolve_device(cfg.device).type == "cuda"  # page-locked batches copy asynchronously
    hint_cache_size(sets, cfg.data)
    train = make_loader(sets["train"], cfg.data, shuffle=True, seed=cfg.seed, pin_memory=pin)
    val = make_loader(sets["val"], cfg.data, shuffle=False, pin_memory=pin)
    return Loaders(train=train, val=val if len(sets["val"]) else None)


def hint_cache_size(sets: dict[str, FeatureDataset], cfg: DataConfig) -> int | None:
    """Say when the videos an epoch reads do not fit the chunk cache but would fit in memory:
    every epoch then reads, checks and decompresses them from the store again, which bounds the
    cheap heads (benchmarks/README.md). Returns the ``--cache-mb`` suggested, or None."""
    cache_mb = DEFAULT_CACHE_MB if cfg.cache_mb is None else cfg.cache_mb
    needed = sum(sets[name].stored_mib for name in ("train", "val") if len(sets[name]))
    suggested = math.ceil(needed * 1.1)  # whole chunks: neighbouring videos' rows come along
    # Every reading process keeps its own cache; leave most of the memory to everything else.
    readers = max(cfg.num_workers, 1)
    if needed <= cache_mb or suggested * readers > available_mib() / 2:
        return None
    log.info(
        "the training and validation videos take %.0f MiB in the store, more than the chunk "
        "cache (%d MiB): each epoch reads them from the store again. --cache-mb %d keeps them "
        "in memory after the first epoch",
        needed,
        cache_mb,
        suggested,
    )
    return suggested


def available_mib() -> float:
    """Memory available to new allocations without swapping (Linux's MemAvailable), in MiB;
    elsewhere the free physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


# ------------------------------------------------------------------------------ fit and test


def fit_and_test(
    model: Head,
    data: RunData,
    cfg: TrainConfig,
    run_dir: Path,
    meta: dict[str, Any],
    *,
    trainable_params: Iterable[nn.Parameter] | None = None,
    resume: bool = False,
    progress: bool = False,
    logger: str | tuple[str, ...] = "csv",
) -> dict[str, Any]:
    """Train ``model`` into ``run_dir``, then write and return its test results."""
    sets = data.sets
    weights = loss_weights(cfg, sets["train"].targets)  # class_weight, pos_weight
    loggers = create_loggers(logger, run_dir) if dd.world().is_main else []  # rank 0 writes
    try:
        result = train_loop(
            model,
            make_loaders(sets, cfg),
            cfg,
            run_dir,
            meta=meta,
            trainable_params=trainable_params,
            **weights,
            resume=resume,
            progress=progress,
            loggers=loggers,
        )
    finally:
        for sink in loggers:
            sink.close()
    summary = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "trainable_params": result.trainable_params,
        "train_wall_s": result.wall_s,
    }
    if not dd.world().is_main:
        return summary  # rank 0 alone tests and writes the results
    return write_test_results(model, sets["test"], cfg, data.label_map, run_dir, summary)


def train_run(
    store_path: str | Path,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    split_file: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    logger: str | tuple[str, ...] = "csv",
    reader: StoreReader | None = None,
) -> dict[str, Any]:
    """Train ``cfg.model`` on the store into ``run_dir``; returns the test metrics (under
    torchrun on rank 0; the other ranks get the training summary only).

    ``resume`` continues a killed run on the same data (anything else is refused) and leaves a
    finished one as it is; ``force`` replaces whatever run ``run_dir`` holds. ``reader``: the
    store already open (``open_data_store``), which the caller closes; else it is opened here.
    """
    run_dir = Path(run_dir)
    check_loggers(logger)
    # One snapshot of the store for the whole run: its index, the largest thing a run holds
    # besides the chunk cache, is built once and shared by the splits.
    if reader is None:
        opened: Any = open_data_store(store_path, cfg.data)
    else:
        opened = contextlib.nullcontext(reader)  # the caller's, which it closes
    with opened as reader:
        cfg = with_streams(cfg, reader)  # streams and head checked before run_dir exists
        # Rank 0 decides: another rank could otherwise see the header rank 0 is writing.
        state = dd.on_main(ck.check_run_dir, run_dir, resume=resume, force=force)
        if state == "finished" and resume:
            log.warning(
                "%s holds a finished run: nothing to resume (--force trains it anew)", run_dir
            )
            return ck.read_json(run_dir / ck.TEST_METRICS)
        continuing = state == "unfinished" and resume
        # Each rank reads the store itself: its errors are its own, and every rank must hear
        # of them (dd.on_every_rank).
        if continuing:
            data = dd.on_every_rank(_resumed_data, store_path, cfg, run_dir, reader, split_file)
        else:
            data = dd.on_every_rank(
                load_data, store_path, cfg, split_file=split_file, reader=reader
            )
        check_training_set(data)
        sizes = {k: len(v) for k, v in data.sets.items()}
        log.info("%d classes; videos: %s", len(data.label_map), sizes)
        if dd.world().is_main:
            ck.sweep_run_temps(run_dir)
        if not continuing and dd.world().is_main:
            if state != "new":
                ck.clear_run_dir(run_dir)
            # Recorded so that this config.json, given as --config, splits videos the same way.
            given = {"split_file": str(Path(split_file).absolute())} if split_file else {}
            write_header(run_dir, cfg, data, **given)
        torch.manual_seed(cfg.seed)  # model initialisation
        model = create_head(
            cfg.model,
            input_dim=data.identity["dim"],
            num_classes=len(data.label_map),
            cfg=cfg.head,
            streams=recorded_streams(data.identity),
        )
        if unused := unused_fusion_settings(cfg.head, model.fusion):
            log.warning(
                "%s: not used by --fusion %s on %s (they shape shared or projection fusion "
                "of two or more streams)",
                ", ".join(f"--{name.replace('_', '-')}" for name in unused),
                cfg.head.fusion,
                " + ".join(model.fusion.dims),
            )
        return fit_and_test(
            model,
            data,
            cfg,
            run_dir,
            data.meta(),
            resume=continuing,
            progress=progress,
            logger=logger,
        )


def check_ranks_agree(data: RunData) -> None:
    """Under torchrun every rank opens the store itself: a store still being written (training
    while extraction goes on is allowed) can give ranks different videos, and they would each
    draw batches from their own list, training some videos twice and others never. Every rank
    raises the same error unless all read the same videos, splits, classes and features."""
    if not dd.world().distributed:
        return
    seen = {k: v for k, v in data.identity.items() if k != "path"}  # mounts may differ
    seen["classes"] = list(data.label_map.labels)
    digest = hashlib.sha256(json.dumps(seen, sort_keys=True, default=str).encode()).hexdigest()
    sizes = {k: len(v) for k, v in data.sets.items()}
    views = dd.gather((digest, sizes))
    problem = None
    if views is not None and len({d for d, _ in views}) > 1:
        each = "; ".join(f"rank {r}: {s}" for r, (_, s) in enumerate(views))
        problem = (
            f"the ranks of this torchrun job read different data from {data.store_path} "
            f"({each}): the store changed while they opened it (an extraction still writing "
            "to it?). Train once it is finished, or from a copy"
        )
    problem = dd.broadcast(problem)
    if problem is not None:
        raise RunDataMismatchError(problem)


def _resumed_data(
    store_path: str | Path,
    cfg: TrainConfig,
    run_dir: Path,
    reader: StoreReader,
    split_file: str | Path | None = None,
) -> RunData:
    """The data of the unfinished run in ``run_dir``: its splits and label map, on a store
    that must still be the one it recorded, with ``cfg`` equal to its config (and
    ``split_file``, if given, the one it recorded)."""
    saved = ck.read_json(run_dir / ck.CONFIG)
    recorded = saved.pop("store")
    # The splits themselves are in split.csv; another file would be silently ignored.
    recorded_split = saved.pop("split_file", None)
    if split_file is not None and str(Path(split_file).absolute()) != recorded_split:
        raise ConfigError(
            f"--resume keeps the run's splits (its split.csv, from "
            f"{recorded_split or 'no --split-file'}), not those of --split-file {split_file}: "
            "resume without --split-file, or add --force to train anew with it"
        )
    _check_resume(TrainConfig.from_dict(saved), cfg)
    return load_data(
        store_path,
        cfg,
        saved_splits=load_splits(run_dir / ck.SPLIT),
        saved_label_map=LabelMap.from_dict(ck.read_json(run_dir / ck.LABEL_MAP)),
        recorded=recorded,
        reader=reader,
    )


def write_test_results(
    model: Head,
    test: FeatureDataset,
    cfg: TrainConfig,
    label_map: LabelMap,
    run_dir: Path,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate ``model`` on ``test``; write test_predictions.{npz,csv}, then test_metrics.json
    (with ``summary`` merged in; written last, it marks the run finished). Returns the metrics."""
    if not len(test):
        log.warning("no test videos: test metrics are empty")
        metrics = {"n_test": 0, **summary}
        ck.write_json(run_dir / ck.TEST_METRICS, metrics)
        return metrics
    device = resolve_device(cfg.device)
    # A batch at a time: neither the metrics nor the prediction files hold the test split's
    # (N, C) scores, which at YouTube-8M's scale are gigabytes per array.
    stream = MetricStream(len(label_map))
    with PredictionsWriter(run_dir / ck.TEST_PREDICTIONS, test.video_ids, label_map) as writer:
        for rows, part in scored_batches(model, test, cfg, label_map, device):
            stream.add(rows, part.ranking, part.labels)
            writer.add(rows, part)
    metrics = {k: v for k, v in stream.result().items() if k != "n"}
    metrics |= {"n_test": len(test), **summary}
    ck.write_json(run_dir / ck.TEST_METRICS, metrics)
    log.info("test: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in _SHOWN))
    return metrics


def scored_batches(
    model: Head,
    dataset: FeatureDataset,
    cfg: TrainConfig,
    label_map: LabelMap,
    device: torch.device,
) -> Iterator[tuple[np.ndarray, Scored]]:
    """(dataset rows, their probabilities, ranking scores and labels) a batch at a time."""
    loader = make_loader(dataset, cfg.data, shuffle=False)
    model.to(device)
    loss = Loss(is_multilabel(cfg, label_map))
    for rows, logits, labels in logit_batches(model, loader, device):
        yield (
            rows,
            Scored(
                probs=loss.probabilities(logits).numpy().astype(np.float32),
                ranking=loss.ranking_scores(logits).numpy().astype(np.float32),
                labels=labels,
            ),
        )
