"""The training loop: one visible loop, early stopping, atomic checkpoints, resume.

``train(model, loaders, cfg, run_dir, meta=...)`` trains any head (or any subset of its
parameters, for fine-tuning). At every evaluation (each epoch, or every ``eval_every`` steps;
see :mod:`heads.schedule`) it writes a ``metrics.jsonl`` line, ``last.pt``, and ``best.pt`` on
every improvement of the monitored value; finally it loads the best weights back into
``model``. A run killed at any moment continues with ``resume=True`` from ``last.pt`` and ends
exactly where an uninterrupted run would: every random draw is either a pure function of
(seed, epoch, index) (data) or comes from the global torch RNG, which the checkpoint restores.
The loss is the sum of the head's ``training_losses`` terms; each is logged apart.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from heads import checkpoint as ck
from heads import distributed as dd
from heads.config import TrainConfig
from heads.errors import TrainingDiverged
from heads.evaluation import validate
from heads.labels import LabelMap, multilabel_loss
from heads.metrics import NonFiniteScores
from heads.models.base import Head
from heads.objective import Loss, make_optimizer
from heads.schedule import Position, finished, lr_factor, window_batches
from vidfeat.device import resolve_device
from vidfeat.errors import ConfigError

log = logging.getLogger(__name__)
# Layers that cannot train on a batch of one example (one value per channel).
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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
    best_step: int = 0
    steps_run: int = 0


class EarlyStopping:
    """Tracks the best value of ``monitor`` (``*_loss``: lower is better, metrics: higher)."""

    def __init__(self, monitor: str, patience: int) -> None:
        self.monitor = monitor
        self.patience = patience
        self.sign = 1.0 if monitor.endswith("loss") else -1.0  # minimise sign * value
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, value: float | None, evaluation: int) -> bool:
        """Record the value of evaluation number ``evaluation`` (1-based; the epoch when
        evaluating per epoch, and so named in the state); True if it is a new best."""
        score = self.sign * value if value is not None and math.isfinite(value) else math.inf
        if score < self.best or self.best_epoch == 0:  # the first one is always a checkpoint
            self.best, self.best_epoch, self.bad_epochs = score, evaluation, 0
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


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor


def _term_scales(
    terms: dict[str, Tensor], sampler: Any, pos: Position, size: int, frames: int | None
) -> dict[str, float]:
    """Each loss term's factor (:func:`heads.distributed.loss_scale`; 1 in one process). The
    classification loss of a head that averages it over frames weighs the ranks by frames; other
    terms (auxiliary losses) are means over videos."""
    by_video = dd.loss_scale(sampler, pos.epoch, pos.batch, size)
    by_frame = (
        by_video if frames is None else dd.loss_scale(sampler, pos.epoch, pos.batch, size, frames)
    )
    return {key: by_frame if key == "loss" else by_video for key in terms}


def _train_window(run: _Session, pos: Position, bar: tqdm) -> dict[str, float]:
    """Train on the batches of one evaluation window; -> mean loss terms and hit@1 (over every
    rank's batches)."""
    model, optimizer, cfg, device = run.model, run.optimizer, run.cfg, run.device
    model.train()
    base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    sums: dict[str, Tensor] = {}
    hits = torch.zeros((), device=device)
    n = 0
    for batch in window_batches(run.loaders.train, pos, cfg):
        set_lr(optimizer, base_lrs, lr_factor(pos, cfg))
        sampler, size = run.loaders.train.batch_sampler, batch.x.shape[0]
        frames = int(batch.lengths.sum()) if model.loss_per_frame else None  # before the copy
        batch = batch.to(device)
        logits, terms = run.step(batch.x, batch.lengths, batch.labels, run.loss_fn)
        scales = _term_scales(terms, sampler, pos, size, frames)
        loss = torch.stack([value * scales[key] for key, value in terms.items()]).sum()
        counted = dd.videos_counted(sampler, pos.epoch, pos.batch, size)  # 0 for a filler
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
        optimizer.step()
        # Each batch's terms weigh its videos, as in one process. Under DDP a rank's share of a
        # frame-mean term is its scale, of the batch's videos over the ranks.
        videos = dd.videos_in_step(sampler, pos.epoch, pos.batch, size) / dd.world().size
        for key, value in terms.items():
            weight = scales[key] * videos if key == "loss" and frames is not None else counted
            sums[key] = sums.get(key, 0.0) + value.detach() * weight
        if counted:
            hits += batch.labels.gather(1, logits.detach().argmax(1, keepdim=True)).sum()
        n += counted
        bar.update(size)
        if not bar.disable:  # .item() syncs with the GPU: only when someone is watching
            shown = torch.stack(list(terms.values())).sum()  # this slice's, not DDP-scaled
            bar.set_postfix(loss=f"{shown.item():.4f}", refresh=False)
    keys = list(sums)  # the same on every rank: the same head
    parts = [*(sums[k] for k in keys), hits, torch.tensor(n, device=device)]
    totals = dd.all_sum(torch.stack([t.double() for t in parts])).tolist()
    n_all = totals.pop()
    # "loss" is the classification loss; auxiliary terms are logged apart as train_<name>.
    means = {key: value / n_all for key, value in zip(keys, totals, strict=False)}
    return means | {"hit_at_1": totals[-1] / n_all}


def _resume_or_start(
    run_dir: Path, resume: bool, run: _Session, stopper: EarlyStopping
) -> tuple[list[dict], Position]:
    """Restore everything from last.pt (resume) or seed a fresh run; -> (history, position).

    Under torchrun rank 0 decides which, every rank reads last.pt and takes its own RNG state.
    """
    world = dd.world()
    if not (resume and dd.on_main((run_dir / ck.LAST).exists)):
        torch.manual_seed(run.cfg.seed + world.rank)  # dropout masks (independent per rank)
        if world.is_main:
            (run_dir / ck.METRICS).unlink(missing_ok=True)
        return [], Position()
    state = ck.load_checkpoint(run_dir / ck.LAST)
    ranks = int(state.get("world_size", 1))
    if ranks != world.size:
        raise ConfigError(
            f"--resume: the run was trained on {ranks} rank(s), not {world.size}; the batches "
            "of a rank depend on how many there are"
        )
    ck.load_weights(run.model, state["model_state"], run.cfg.model)
    run.optimizer.load_state_dict(state["optimizer_state"])
    stopper.load_state_dict(state["early_stopping"])
    ck.set_rng_state(state["rng_ranks"][world.rank] if world.distributed else state["rng"])
    history = list(state["history"])
    if world.is_main:
        ck.write_jsonl(run_dir / ck.METRICS, history)  # drops a line written after last.pt
    train_loader = run.loaders.train
    pos = Position.from_checkpoint(
        state, len(train_loader.batch_sampler), len(train_loader.dataset)
    )
    log.info("resumed at step %d (epoch %d)", pos.step, pos.epoch)
    return history, pos


def _monitor(cfg: TrainConfig, loaders: Loaders) -> str:
    if loaders.val is None:
        log.warning("no validation videos: early stopping watches the training loss")
        return "train_loss"
    return "val_loss" if cfg.monitor == "val_loss" else f"val_{cfg.monitor}"


def train(
    model: Head,
    loaders: Loaders,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    meta: dict[str, Any],
    trainable_params: Iterable[nn.Parameter] | None = None,
    class_weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    resume: bool = False,
    progress: bool = False,
    loggers: Sequence[Any] = (),
) -> TrainResult:
    """Train ``model`` (only ``trainable_params``, default all that require grad).

    Every evaluation (each epoch, or every ``cfg.eval_every`` steps) validates, appends a line
    to metrics.jsonl, checkpoints and hands the record to each of ``loggers``
    (:mod:`heads.loggers`). ``meta`` (label map, store identity, input_dim, num_classes, ...) is
    copied into every checkpoint so it describes itself. The best weights are loaded into
    ``model`` on return.

    Under torchrun (:mod:`heads.distributed`) each rank trains on its share of every batch with
    DDP, and only rank 0 writes files and feeds ``loggers``.
    """
    run_dir = Path(run_dir)
    world = dd.world()
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    run = _start(model, loaders, cfg, trainable_params, class_weight, pos_weight, meta)
    meta = {**meta, "world_size": world.size}
    n_params = sum(p.numel() for p in run.params)
    monitor = _monitor(cfg, run.loaders)
    stopper = EarlyStopping(monitor, cfg.patience)
    history, pos = _resume_or_start(run_dir, resume, run, stopper)
    if history and world.is_main:
        # A run killed after last.pt but before its loggers heard of that evaluation: hand it
        # to them again (metrics.csv is rewritten whole; TensorBoard purges that step first).
        for sink in loggers:
            sink.log(history[-1], history)
    log.info("training %s: %d trainable parameters on %s", cfg.model, n_params, run.device)
    with deterministic():
        while not (stopper.should_stop or finished(pos, cfg)):
            record = _shared_evaluation(run, pos, progress and world.is_main)
            record["trainable_params"] = n_params
            record["improved"] = stopper.step(record[monitor], len(history) + 1)
            history.append(record)
            rngs = dd.gather(ck.rng_state())  # a collective: every rank takes part
            if world.is_main:
                state = {
                    **_describe(cfg, meta),
                    "epoch": record["epoch"],
                    "position": pos.to_dict(),
                    "model_state": model.state_dict(),
                    "optimizer_state": run.optimizer.state_dict(),
                    "early_stopping": stopper.state_dict(),
                    "history": history,
                    "rng": ck.rng_state(),
                    **({"rng_ranks": rngs} if world.distributed else {}),
                }
                _save(run_dir, state, record, loggers)
                log.info(_summary(record, monitor))
    return _finish(model, run_dir, stopper, history, n_params, cfg)


@dataclass
class _Session:
    """What every step of one training run uses, on the device it runs on."""

    model: Head
    step: Callable[..., tuple[Tensor, dict[str, Tensor]]]  # training_losses, or its DDP wrapper
    loaders: Loaders  # this rank's share under torchrun
    params: list[nn.Parameter]  # the trained ones
    optimizer: torch.optim.Optimizer
    loss_fn: Loss
    cfg: TrainConfig
    device: torch.device


def _start(
    model: Head,
    loaders: Loaders,
    cfg: TrainConfig,
    trainable_params: Iterable[nn.Parameter] | None,
    class_weight: Tensor | None,
    pos_weight: Tensor | None,
    meta: dict[str, Any],
) -> _Session:
    """Move ``model`` to its device and build its step, loaders, optimizer and loss."""
    params = [p for p in (trainable_params or model.parameters()) if p.requires_grad]
    trained = {id(p) for p in params}  # a frozen BatchNorm (finetune) stays in eval mode
    if cfg.data.batch_size < 2 and any(
        isinstance(m, _BATCH_NORMS) and any(id(p) in trained for p in m.parameters())
        for m in model.modules()
    ):
        raise ConfigError(
            f"--model {cfg.model} trains BatchNorm layers, which cannot train on batches of one "
            "video: use --batch-size 2 or more"
        )
    device = resolve_device(cfg.device)
    model.to(device)
    step = dd.training_step(model, device)
    val = dd.shard_loader(loaders.val) if loaders.val is not None else None
    loaders = Loaders(train=dd.shard_loader(loaders.train), val=val)
    optimizer = make_optimizer(cfg, params)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # the schedule scales this
    multilabel = multilabel_loss(cfg.loss, LabelMap.from_dict(meta["label_map"]))
    loss_fn = Loss(multilabel, class_weight, pos_weight)
    return _Session(model, step, loaders, params, optimizer, loss_fn, cfg, device)


def _save(run_dir: Path, state: dict[str, Any], record: dict, loggers: Sequence[Any]) -> None:
    """Write one evaluation's files, then hand its record to ``loggers`` (rank 0 only)."""
    # Order matters for resume: best before last, the metrics line before last.pt.
    if record["improved"]:
        ck.save_checkpoint(run_dir / ck.BEST, state)
    ck.append_jsonl(run_dir / ck.METRICS, record)
    ck.save_checkpoint(run_dir / ck.LAST, state)
    for sink in loggers:
        sink.log(record, state["history"])


def _finish(
    model: Head,
    run_dir: Path,
    stopper: EarlyStopping,
    history: list[dict],
    n_params: int,
    cfg: TrainConfig,
) -> TrainResult:
    """Load the best weights into ``model`` (on every rank) and sum the run up."""
    last = history[-1]
    if stopper.should_stop:
        log.info(
            "early stop: no %s improvement in %d evaluations", stopper.monitor, stopper.patience
        )
    elif cfg.max_steps and last["step"] < cfg.max_steps:  # a step budget cut short by epochs
        log.info(
            "stopped at --epochs %d, step %d of --max-steps %d",
            cfg.epochs,
            last["step"],
            cfg.max_steps,
        )
    dd.barrier()  # rank 0 has written best.pt
    ck.load_weights(model, ck.load_checkpoint(run_dir / ck.BEST)["model_state"], cfg.model)
    best = history[stopper.best_epoch - 1]
    log.info(
        "best: epoch %d, step %d (%s %.4f)",
        best["epoch"],
        best["step"],
        stopper.monitor,
        stopper.best_value,
    )
    return TrainResult(
        best_epoch=best["epoch"],
        best_value=stopper.best_value,
        epochs_run=history[-1]["epoch"],
        history=history,
        trainable_params=n_params,
        wall_s=sum(r["wall_s"] for r in history),
        best_step=best.get("step", 0),
        steps_run=history[-1].get("step", 0),
    )


def _describe(cfg: TrainConfig, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": ck.CHECKPOINT_FORMAT,
        "model_name": cfg.model,
        "head_config": cfg.head.to_dict(),
        "train_config": cfg.to_dict(),
        **meta,
    }


def _diverged(cfg: TrainConfig, where: str, what: str) -> TrainingDiverged:
    # Resuming replays the same steps from the last checkpoint, so it diverges again: the
    # way on is another step size (a new run, or --force over this one).
    clip = f"--grad-clip {cfg.grad_clip:g}" if cfg.grad_clip else "no --grad-clip"
    return TrainingDiverged(
        f"training diverged at {where}: {what}. Lower --lr (now {cfg.lr:g}, {cfg.optimizer}; "
        f"{clip}) and start again with --force or another --out"
    )


def _shared_evaluation(run: _Session, pos: Position, progress: bool) -> dict[str, Any]:
    """Rank 0's record on every rank, so every rank decides alike. Each rank scores its share
    of the validation set, but rank 0 alone judges the joined shares, so it alone raises when
    scores diverge: that verdict is shared too, and every rank stops with it rather than the
    others failing as if rank 0 had died."""
    record, diverged = None, None
    try:
        record = _evaluation(run, pos, progress)
    except TrainingDiverged as exc:
        if not dd.world().distributed:
            raise
        diverged = exc  # a diverged training loss is all-reduced: every rank is here
    record, diverged = dd.broadcast((record, diverged))
    if diverged is not None:
        raise diverged
    return record


def _evaluation(run: _Session, pos: Position, progress: bool) -> dict[str, Any]:
    """Train one window from ``pos`` (advancing it), then validate -> one metrics record."""
    t0 = time.perf_counter()
    cfg, loaders = run.cfg, run.loaders
    per_window = cfg.eval_every * cfg.data.batch_size if cfg.eval_every else None
    desc = f"step {pos.step}" if cfg.eval_every else f"epoch {pos.epoch}/{cfg.epochs}"
    total = per_window or len(loaders.train.dataset)
    with tqdm(total=total, desc=desc, unit="video", disable=not progress, leave=False) as bar:
        tr = _train_window(run, pos, bar)
    # The rate of the window's last step: a decay inside the window (--lr-decay-examples,
    # --lr-step with --eval-every) has taken effect by then.
    lr = run.optimizer.param_groups[0]["lr"]
    record: dict[str, Any] = {
        "epoch": pos.last_epoch,
        "step": pos.step,
        "examples": pos.examples,
        "train_loss": tr.pop("loss"),
        "train_hit_at_1": tr.pop("hit_at_1"),
        **{f"train_{key}": value for key, value in tr.items()},  # auxiliary losses
        **run.model.pop_stats(),
    }
    if not math.isfinite(record["train_loss"]):
        raise _diverged(cfg, desc, f"the training loss is {record['train_loss']}")
    val = {}
    if loaders.val is not None:
        try:
            val = validate(run.model, loaders.val, run.loss_fn, run.device)
        except NonFiniteScores as exc:  # the weights blew up (other input errors are bugs)
            raise _diverged(cfg, desc, str(exc)) from exc
    record["val_loss"] = val.get("loss")
    for key in ("hit_at_1", "gap_at_20", "top5", "mean_ap", "perr"):
        record[f"val_{key}"] = val.get(key)
    record["lr"] = lr
    record["wall_s"] = time.perf_counter() - t0
    return record


def _summary(record: dict[str, Any], monitor: str) -> str:
    parts = [
        f"epoch {record['epoch']}",
        f"step {record['step']}",
        f"train_loss {record['train_loss']:.4f}",
    ]
    for key in ("val_loss", "val_hit_at_1", "val_gap_at_20"):
        if record.get(key) is not None:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['wall_s']:.1f}s" + (" *" if record["improved"] else ""))
    return ", ".join(parts)
