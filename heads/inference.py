"""Use a trained run: load it, evaluate it on a store, or predict class scores for a store's
videos. Scoring the run's own splits needs the run's very data (:func:`heads.identity.
check_same_data`); any other store needs only features that mean the same thing."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from heads import checkpoint as ck
from heads.batching import make_loader
from heads.config import TrainConfig
from heads.data import FeatureDataset
from heads.errors import CheckpointError, RunDataMismatchError
from heads.evaluation import validate
from heads.identity import check_same_data, check_store_compatible, recorded_streams
from heads.labels import LabelMap
from heads.models import Head, HeadConfig, create_head
from heads.objective import Loss
from heads.predictions import (
    ScoresWriter,
    format_yt8m_pairs,
    is_index,
    recorded_vocabulary,
    top_classes,
    vocabulary_indices,
)
from heads.run import is_multilabel, scored_batches
from heads.splits import load_splits
from vidfeat.device import resolve_device
from vidfeat.errors import ConfigError
from vidfeat.store import open_store

log = logging.getLogger(__name__)

EVAL_SPLITS = ("train", "val", "test", "all")
FORMATS = ("csv", "yt8m")  # table styles; file formats are heads.predictions.FORMATS


@dataclasses.dataclass
class LoadedRun:
    """A trained run, ready to predict: its best model (eval mode, CPU), config and classes."""

    run_dir: Path
    cfg: TrainConfig
    label_map: LabelMap
    provenance: dict[str, Any]  # the store identity it was trained on (heads.identity)
    model: Head
    checkpoint: dict[str, Any]

    def dataset(self, split: str | None = None, store: str | Path | None = None) -> FeatureDataset:
        """The run's own ``split`` videos (train, val or test, as its split.csv holds them; or
        ``all`` labelled videos) of ``store`` (default: the store it trained on), with its
        label map and frame selection: what ``heads evaluate --split`` scores. By default, as
        there: test when the store holds the run's videos, else all (a held-out store)."""
        path, labelled, _ = _run_videos(self, store, split)
        return FeatureDataset(path, labelled, self.label_map, self.cfg.data)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C) class probabilities for zero-padded features ``x`` (B, T, D) and their
        ``lengths`` (B,), e.g. a :class:`heads.data.Batch`'s ``x`` and ``lengths``."""
        device = next(self.model.parameters()).device
        logits = self.model.eval()(x.to(device), lengths.to(device)).float().cpu()
        return Loss(is_multilabel(self.cfg, self.label_map)).probabilities(logits)


def model_from_checkpoint(state: dict[str, Any]) -> Head:
    """Rebuild the head a checkpoint describes and load its weights (eval mode, CPU)."""
    model = create_head(
        state["model_name"],
        input_dim=int(state["input_dim"]),
        num_classes=int(state["num_classes"]),
        cfg=HeadConfig.from_dict(state["head_config"]),
        streams=recorded_streams(state["store"]),
    )
    ck.load_weights(model, state["model_state"], state["model_name"])
    return model.eval()


def load_run(run_dir: str | Path, checkpoint: str = ck.BEST) -> LoadedRun:
    """A trained run from its directory (best weights by default)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found")
    has_config = (run_dir / ck.CONFIG).is_file()
    if not has_config and (run_dir / ck.TEST_METRICS).is_file():
        # What `heads ensemble` writes: test scores and metrics, but no model to run.
        metrics = ck.read_json(run_dir / ck.TEST_METRICS)
        members = metrics.get("members") if isinstance(metrics, dict) else None
        if members:
            raise CheckpointError(
                f"{run_dir} is an ensemble: it holds its members' averaged test scores, not "
                f"a model; evaluate or predict with its member runs ({', '.join(members)}) "
                "and average, or read its test_metrics.json"
            )
    if not has_config and not (run_dir / checkpoint).is_file():
        # A parent folder of runs, or a store: say so, rather than "best.pt not found".
        runs = sorted(d.name for d in run_dir.iterdir() if (d / ck.CONFIG).is_file())
        inside = f"; the runs in it: {', '.join(runs[:5])}" if runs else ""
        more = ", ..." if len(runs) > 5 else ""
        raise CheckpointError(
            f"{run_dir} is not a heads run (it has no {ck.CONFIG} or {checkpoint}){inside}{more}"
        )
    state = ck.load_checkpoint(run_dir / checkpoint)
    return LoadedRun(
        run_dir=run_dir,
        cfg=TrainConfig.from_dict(state["train_config"]),
        label_map=LabelMap.from_dict(state["label_map"]),
        provenance=state["store"],
        model=model_from_checkpoint(state),
        checkpoint=state,
    )


def _with_overrides(run: LoadedRun, num_workers: int | None, device: str | None) -> LoadedRun:
    data = run.cfg.data
    if num_workers is not None:
        data = dataclasses.replace(data, num_workers=num_workers)
    cfg = run.cfg.replace(data=data, device=device or run.cfg.device)
    return dataclasses.replace(run, cfg=cfg)


def _open_checked(run: LoadedRun, store: str | Path | None) -> tuple[str, pd.DataFrame]:
    """The store path and its ok videos, after checking it matches the model's features."""
    path = str(store if store is not None else run.provenance["path"])
    with open_store(path) as reader:
        check_store_compatible(run.provenance, reader)
        if reader.level == "video" and not run.model.video_level:
            raise ConfigError(
                f"{run.cfg.model} reads sequences of frames; store {path} is video-level"
            )
        ok = reader.videos["status"] == "ok"
        videos = reader.videos[ok].reset_index(drop=True)
    if failed := int((~ok).sum()):  # fewer rows than the store's videos, said
        log.warning(
            "%d of the %d videos in %s failed extraction and have no features: they are not "
            "scored (vidfeat info lists them)",
            failed,
            len(ok),
            path,
        )
    return path, videos


def _check_run_videos(run: LoadedRun, path: str, labelled: pd.DataFrame) -> None:
    """The run's own splits are scored only on the run's own data, unchanged."""
    splits = load_splits(run.run_dir / ck.SPLIT)
    own = labelled.drop(columns=["split"], errors="ignore").merge(splits, on="video_id")
    with open_store(path) as reader:
        check_same_data(run.provenance, reader, own, "score the run's splits")


def evaluate_run(
    run_dir: str | Path,
    store: str | Path | None = None,
    *,
    split: str | None = None,
    num_workers: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Metrics of the run's best model on ``store`` (default: the store it was trained on).

    ``split`` picks the run's train/val/test videos, or ``all`` labelled videos of the store.
    By default: test when the store holds the run's videos, else all (a held-out store).
    """
    run = _with_overrides(load_run(run_dir), num_workers, device)
    path, labelled, split = _run_videos(run, store, split)
    dataset = FeatureDataset(path, labelled, run.label_map, run.cfg.data)
    dev = resolve_device(run.cfg.device)
    # Scored a batch at a time (heads.metrics.MetricStream), as validation is: the whole
    # set's (N, C) scores are never held, and the metrics are evaluate_all's on them.
    loader = make_loader(dataset, run.cfg.data, shuffle=False)
    loss_fn = Loss(is_multilabel(run.cfg, run.label_map))
    scored = validate(run.model.to(dev), loader, loss_fn, dev)
    metrics = {k: v for k, v in scored.items() if k != "loss"}
    return {**metrics, "n": len(dataset), "split": split, "store": path}


def _run_videos(
    run: LoadedRun, store: str | Path | None, split: str | None
) -> tuple[str, pd.DataFrame, str]:
    """(store path, the labelled videos of ``split``, the split): see :func:`evaluate_run`."""
    if split is not None and split not in EVAL_SPLITS:
        raise ConfigError(f"split must be one of {', '.join(EVAL_SPLITS)}; got {split!r}")
    path, videos = _open_checked(run, store)
    names = set(run.label_map.labels)
    videos["labels"] = [tuple(x for x in labels if x in names) for labels in videos["labels"]]
    labelled = videos[[bool(x) for x in videos["labels"]]]
    if len(labelled) < len(videos):
        log.warning(
            "%d videos carry none of the run's classes; left out", len(videos) - len(labelled)
        )
    splits = load_splits(run.run_dir / ck.SPLIT)
    if split is None:
        split = "test" if labelled["video_id"].isin(splits["video_id"]).any() else "all"
    if split != "all":
        try:
            _check_run_videos(run, path, labelled)
        except RunDataMismatchError as exc:
            # The run's splits belong to the data it trained on (the store shares video ids
            # with the run, or the split was named): say how to score it as a held-out store.
            raise RunDataMismatchError(
                f"{exc}; to score every labelled video of this store, pass --split all "
                '(split="all" from Python)'
            ) from exc
        wanted = splits.loc[splits["split"] == split, "video_id"]
        labelled = labelled[labelled["video_id"].isin(wanted)]
    if labelled.empty and videos.empty:
        raise ConfigError(f"no ok videos in store {path}")
    if labelled.empty and split == "all":
        raise ConfigError(
            f"no video of store {path} carries one of the run's {len(names)} classes "
            f"({', '.join(sorted(names)[:5])}{', ...' if len(names) > 5 else ''})"
        )
    if labelled.empty:
        raise ConfigError(f"no labelled videos of split {split!r} in store {path}")
    return path, labelled, split


def _prediction_set(run: LoadedRun, store: str | Path) -> tuple[FeatureDataset, torch.device]:
    path, videos = _open_checked(run, store)
    if videos.empty:
        raise ConfigError(f"store {path} has no successfully extracted videos")
    dataset = FeatureDataset(path, videos, run.label_map, run.cfg.data)
    return dataset, resolve_device(run.cfg.device)


def write_scores_run(
    run_dir: str | Path,
    store: str | Path,
    out: str | Path,
    *,
    num_workers: int | None = None,
    device: str | None = None,
) -> tuple[int, int]:
    """Write ``out`` (``.npz``: the probabilities and ranking scores of every class for every
    ok video of ``store``; ``heads.predictions.ScoresWriter``) a batch at a time, never holding
    the (N, C) arrays. Returns (videos, classes)."""
    run = _with_overrides(load_run(run_dir), num_workers, device)
    dataset, dev = _prediction_set(run, store)
    with ScoresWriter(Path(out), list(dataset.video_ids), run.label_map.labels) as writer:
        for rows, part in scored_batches(run.model, dataset, run.cfg, run.label_map, dev):
            writer.add(rows, part)
    return len(dataset), len(run.label_map)


def predict_run(
    run_dir: str | Path,
    store: str | Path,
    *,
    top_k: int = 20,
    per_frame: bool = False,
    attention: bool = False,
    fmt: str = "csv",
    vocabulary: dict[str, int] | None = None,
    num_workers: int | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Top-k class scores for every ok video of ``store`` (or every time step, ``per_frame``).

    csv: ``video_id,predictions``, the top classes as a list of ``{"label", "score"}`` (per
    frame: also ``frame`` and ``timestamp_s``); yt8m: YouTube-8M's
    ``VideoId,LabelConfidencePairs`` with "index score" pairs, the index taken from
    ``vocabulary`` (label -> index) or from labels that are indices already. ``attention``:
    instead, the attention weight of every step (``video_id, frame, timestamp_s,
    attention``), for heads that pool with attention.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top-k must be a positive integer, got {top_k!r}")
    run = _with_overrides(load_run(run_dir), num_workers, device)
    names = run.label_map.labels
    if per_frame and attention:
        raise ConfigError("choose --per-frame or --attention, not both")
    if fmt == "yt8m":
        if per_frame or attention:
            raise ConfigError("the yt8m format has no per-step variant; use --format csv")
        # Labels that are indices already need none (a name made of digits would win).
        if vocabulary is None and not all(is_index(label) for label in names):
            vocabulary = _recorded_vocabulary(store)
        names = tuple(str(i) for i in vocabulary_indices(names, vocabulary))
    if per_frame and not run.model.supports_per_frame:
        raise ConfigError(f"{run.cfg.model} has no per-frame outputs; use a recurrent head")
    if attention and not run.model.supports_attention:
        raise ConfigError(
            f"{run.cfg.model} has no attention weights; use attention or --reduction attention"
        )
    dataset, dev = _prediction_set(run, store)
    k = min(top_k, len(names))
    if per_frame:
        return _per_frame(run, dataset, dev, k)
    if attention:
        return _attention(run, dataset, dev)
    # A batch at a time, keeping each video's top k: never the whole store's (N, C) scores.
    best: list[Any] = [None] * len(dataset)
    for rows, part in scored_batches(run.model, dataset, run.cfg, run.label_map, dev):
        for row, s, r in zip(rows.tolist(), part.probs, part.ranking, strict=True):
            if fmt == "yt8m":
                best[row] = format_yt8m_pairs(s, names, k, r)
            else:
                best[row] = top_classes(s, names, k, r)
    if any(cell is None for cell in best):
        raise RuntimeError("the loader left videos unscored")  # a bug, not bad input
    if fmt == "yt8m":
        return pd.DataFrame({"VideoId": dataset.video_ids, "LabelConfidencePairs": best})
    return pd.DataFrame({"video_id": dataset.video_ids, "predictions": best})


def _recorded_vocabulary(store: str | Path) -> dict[str, int] | None:
    with open_store(store) as reader:
        return recorded_vocabulary(reader.attrs)


StepValues = Callable[[Head, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def _per_step(
    run: LoadedRun,
    dataset: FeatureDataset,
    device: torch.device,
    compute: StepValues,
    column: str,
    cell: Callable[[np.ndarray], Any],
) -> pd.DataFrame:
    """One row per valid step of every video: video_id, frame, timestamp_s and ``column``, the
    ``cell`` of ``compute(model, x, lengths)[b, step]``."""
    model = run.model.to(device).eval()
    per_video: dict[int, list[tuple[str, int, float, Any]]] = {}
    with open_store(dataset.store_path) as reader:
        for batch in make_loader(dataset, run.cfg.data, shuffle=False):
            values = compute(model, batch.x.to(device), batch.lengths.to(device)).cpu().numpy()
            for b, i in enumerate(batch.index.tolist()):
                vid = dataset.video_ids[i]
                frames = dataset.frame_indices(i)  # stored frame numbers of the steps
                times = reader.timestamps(vid)[frames]
                per_video[i] = [
                    (vid, int(f), float(t), cell(values[b, step]))
                    for step, (f, t) in enumerate(zip(frames, times, strict=True))
                ]
    # Loader batches are length-bucketed; rows go out in store order.
    rows = [row for i in range(len(dataset)) for row in per_video[i]]
    return pd.DataFrame(rows, columns=["video_id", "frame", "timestamp_s", column])


def _per_frame(
    run: LoadedRun, dataset: FeatureDataset, device: torch.device, k: int
) -> pd.DataFrame:
    loss = Loss(is_multilabel(run.cfg, run.label_map))

    def scores(model: Head, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, 2, C): each step's probabilities, and the ranking scores that order them."""
        logits = model.forward_per_frame(x, lengths)  # (B, T, C)
        flat = logits.flatten(0, 1)
        both = torch.stack([loss.probabilities(flat), loss.ranking_scores(flat)], dim=1)
        return both.view(*logits.shape[:2], 2, -1)

    def best(step: np.ndarray) -> list[dict[str, Any]]:
        return top_classes(step[0], run.label_map.labels, k, step[1])

    return _per_step(run, dataset, device, scores, "predictions", best)


def _attention(run: LoadedRun, dataset: FeatureDataset, device: torch.device) -> pd.DataFrame:
    def weights(model: Head, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return model.attention_weights(x, lengths)  # (B, T)

    return _per_step(run, dataset, device, weights, "attention", float)
