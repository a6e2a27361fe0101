"""The training loop: one visible loop, early stopping, atomic per-epoch checkpoints, resume.

``train(model, loaders, cfg, run_dir, meta=...)`` trains any head (or any subset of its
parameters, for fine-tuning), writes ``metrics.jsonl``, ``last.pt`` every epoch and ``best.pt``
on every improvement of the monitored value, and finally loads the best weights back into
``model``. A run killed at any moment continues with ``resume=True`` from ``last.pt`` and ends
exactly where an uninterrupted run would: every random draw is either a pure function of
(seed, epoch, index) (data) or comes from the global torch RNG, which the checkpoint restores.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from heads import checkpoint as ck
from heads.config import SGD_MOMENTUM, TrainConfig
from heads.metrics import evaluate_all

log = logging.getLogger(__name__)


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader | None = None  # None: early stopping watches the training loss


@dataclass
class TrainResult:
    best_epoch: int
    best_value: float
    epochs_run: int
    history: list[dict]
    trainable_params: int
    wall_s: float


class EarlyStopping:
    """Tracks the best value of ``monitor`` (``*_loss``: lower is better, metrics: higher)."""

    def __init__(self, monitor: str, patience: int) -> None:
        self.monitor = monitor
        self.patience = patience
        self.sign = 1.0 if monitor.endswith("loss") else -1.0  # minimise sign * value
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, value: float | None, epoch: int) -> bool:
        """Record one epoch's value; True if it is a new best."""
        score = self.sign * value if value is not None and math.isfinite(value) else math.inf
        if score < self.best or self.best_epoch == 0:  # the first epoch is always a checkpoint
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    @property
    def best_value(self) -> float:
        return self.sign * self.best

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch, self.bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])


class Loss:
    """Softmax cross-entropy (one label per video) or per-class sigmoid BCE (multi-label)."""

    def __init__(self, multilabel: bool, weight: Tensor | None = None) -> None:
        self.multilabel = multilabel
        self.weight = weight  # (C,) or None

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device)
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            return (loss * weight).mean() if weight is not None else loss.mean()
        # Probability targets: exactly one-hot for single-label data, and a forced "single"
        # loss on multi-label data spreads the mass over a video's labels instead of failing.
        target = labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)
        return F.cross_entropy(logits, target, weight=weight)

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def inverse_frequency_weights(targets: np.ndarray) -> Tensor:
    """(C,) weights ∝ 1 / positives per class (absent classes count as 1), mean 1."""
    counts = np.maximum(np.asarray(targets).sum(axis=0), 1.0)
    weights = 1.0 / counts
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    kw = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    factories = {
        "sgd": lambda: torch.optim.SGD(params, momentum=SGD_MOMENTUM, **kw),
        "adam": lambda: torch.optim.Adam(params, **kw),
        "rmsprop": lambda: torch.optim.RMSprop(params, **kw),
    }
    return factories[cfg.optimizer]()


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels while training; the caller's settings are restored afterwards."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float32 logits and (N, C) labels, in dataset order (batches may be bucketed)."""
    model.eval()
    n = len(loader.dataset)
    logits_out, labels_out = None, None
    for batch in loader:
        logits = model(batch.x.to(device), batch.lengths.to(device)).float().cpu().numpy()
        if logits_out is None:
            logits_out = np.zeros((n, logits.shape[1]), np.float32)
            labels_out = np.zeros((n, batch.labels.shape[1]), np.float32)
        logits_out[batch.index.numpy()] = logits
        labels_out[batch.index.numpy()] = batch.labels.numpy()
    if logits_out is None:
        raise ValueError("cannot predict on an empty dataset")
    return logits_out, labels_out


def validate(
    model: nn.Module, loader: DataLoader, loss_fn: Loss, device: torch.device
) -> dict[str, float]:
    """Loss and all metrics of ``model`` on ``loader``."""
    logits, labels = predict_logits(model, loader, device)
    logits_t, labels_t = torch.from_numpy(logits), torch.from_numpy(labels)
    loss = float(loss_fn(logits_t, labels_t))
    metrics = evaluate_all(loss_fn.probabilities(logits_t).numpy(), labels)
    return {"loss": loss, **{k: float(v) for k, v in metrics.items() if k != "n"}}


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Loss,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    cfg: TrainConfig,
    device: torch.device,
    bar: tqdm,
) -> dict[str, float]:
    model.train()
    total_loss = torch.zeros((), device=device)
    hits = torch.zeros((), device=device)
    n = 0
    for batch in loader:
        batch = batch.to(device)
        logits = model(batch.x, batch.lengths)
        loss = loss_fn(logits, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        size = batch.x.shape[0]
        total_loss += loss.detach() * size
        hits += batch.labels.gather(1, logits.detach().argmax(1, keepdim=True)).sum()
        n += size
        bar.update(size)
        if not bar.disable:  # .item() syncs with the GPU: only when someone is watching
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return {"loss": float(total_loss) / n, "hit_at_1": float(hits) / n}


def _resume_or_start(
    run_dir: Path,
    resume: bool,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    stopper: EarlyStopping,
) -> tuple[list[dict], int]:
    """Restore everything from last.pt (resume) or seed a fresh run; -> (history, first epoch)."""
    if not (resume and (run_dir / ck.LAST).exists()):
        torch.manual_seed(cfg.seed)  # dropout masks
        (run_dir / ck.METRICS).unlink(missing_ok=True)
        return [], 1
    state = ck.load_checkpoint(run_dir / ck.LAST)
    model.load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer_state"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler_state"])
    stopper.load_state_dict(state["early_stopping"])
    ck.set_rng_state(state["rng"])
    history = list(state["history"])
    ck.write_jsonl(run_dir / ck.METRICS, history)  # drops a line written after last.pt
    log.info("resumed after epoch %d", state["epoch"])
    return history, int(state["epoch"]) + 1


def _monitor(cfg: TrainConfig, loaders: Loaders) -> str:
    if loaders.val is None:
        log.warning("no validation videos: early stopping watches the training loss")
        return "train_loss"
    return "val_loss" if cfg.monitor == "val_loss" else f"val_{cfg.monitor}"


def train(
    model: nn.Module,
    loaders: Loaders,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    meta: dict[str, Any],
    trainable_params: Iterable[nn.Parameter] | None = None,
    class_weight: Tensor | None = None,
    resume: bool = False,
    progress: bool = False,
    loggers: Sequence[Any] = (),
) -> TrainResult:
    """Train ``model`` (only ``trainable_params``, default all that require grad).

    ``meta`` (label map, store identity, input_dim, num_classes, ...) is copied into every
    checkpoint so it describes itself. Each ``loggers`` entry (:mod:`heads.loggers`) gets every
    record. The best weights are loaded into ``model`` on return.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    model.to(device)
    params = [p for p in (trainable_params or model.parameters()) if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    optimizer = make_optimizer(cfg, params)
    scheduler = StepLR(optimizer, cfg.lr_step, cfg.lr_gamma) if cfg.lr_step else None
    multilabel = meta["label_map"]["multilabel"] if cfg.loss == "auto" else cfg.loss == "multi"
    loss_fn = Loss(bool(multilabel), class_weight)
    monitor = _monitor(cfg, loaders)
    stopper = EarlyStopping(monitor, cfg.patience)
    history, start = _resume_or_start(run_dir, resume, cfg, model, optimizer, scheduler, stopper)
    log.info("training %s: %d trainable parameters on %s", cfg.model, n_params, device)
    with deterministic():
        for epoch in range(start, cfg.epochs + 1):
            if stopper.should_stop:
                break
            record = _epoch(
                model, loaders, loss_fn, optimizer, params, cfg, device, epoch, progress
            )
            if scheduler is not None:
                scheduler.step()
            record["trainable_params"] = n_params
            record["improved"] = stopper.step(record[monitor], epoch)
            history.append(record)
            state = {
                **_describe(cfg, meta),
                "epoch": epoch,
                "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
                "early_stopping": stopper.state_dict(),
                "history": history,
                "rng": ck.rng_state(),
            }
            # Order matters for resume: best before last, the metrics line before last.pt.
            if record["improved"]:
                ck.save_checkpoint(run_dir / ck.BEST, state)
            ck.append_jsonl(run_dir / ck.METRICS, record)
            ck.save_checkpoint(run_dir / ck.LAST, state)
            for sink in loggers:
                sink.log(record, history)
            log.info(_summary(record, monitor))
    if stopper.should_stop:
        log.info("early stop: no %s improvement for %d epochs", monitor, stopper.patience)
    model.load_state_dict(ck.load_checkpoint(run_dir / ck.BEST)["model_state"])
    log.info("best epoch %d (%s %.4f)", stopper.best_epoch, monitor, stopper.best_value)
    return TrainResult(
        best_epoch=stopper.best_epoch,
        best_value=stopper.best_value,
        epochs_run=len(history),
        history=history,
        trainable_params=n_params,
        wall_s=sum(r["wall_s"] for r in history),
    )


def _describe(cfg: TrainConfig, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": ck.CHECKPOINT_FORMAT,
        "model_name": cfg.model,
        "head_config": cfg.head.to_dict(),
        "train_config": cfg.to_dict(),
        **meta,
    }


def _epoch(
    model: nn.Module,
    loaders: Loaders,
    loss_fn: Loss,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    loaders.train.batch_sampler.set_epoch(epoch)
    n = len(loaders.train.dataset)
    with tqdm(
        total=n, desc=f"epoch {epoch}/{cfg.epochs}", unit="video", disable=not progress, leave=False
    ) as bar:
        tr = _train_epoch(model, loaders.train, loss_fn, optimizer, params, cfg, device, bar)
    record: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": tr["loss"],
        "train_hit_at_1": tr["hit_at_1"],
    }
    val = validate(model, loaders.val, loss_fn, device) if loaders.val is not None else {}
    record["val_loss"] = val.get("loss")
    for key in ("hit_at_1", "gap_at_20", "top5", "mean_ap", "perr"):
        record[f"val_{key}"] = val.get(key)
    record["lr"] = lr
    record["wall_s"] = time.perf_counter() - t0
    return record


def _summary(record: dict[str, Any], monitor: str) -> str:
    parts = [f"epoch {record['epoch']}", f"train_loss {record['train_loss']:.4f}"]
    for key in ("val_loss", "val_hit_at_1", "val_gap_at_20"):
        if record.get(key) is not None:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['wall_s']:.1f}s" + (" *" if record["improved"] else ""))
    return ", ".join(parts)
