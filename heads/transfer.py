"""Transfer learning: fine-tune a trained run on a new class set (e.g. 5 classes -> 10).

The parent run's head is rebuilt from its best checkpoint, its classifier is replaced by one
for the new classes (rows of classes the parent knew start from the parent's rows, the others
fresh), and only the parts named by the train mode are trained:

* ``head``: the classifier only (the parent becomes a fixed feature extractor);
* ``top``: the classifier and ``model.top_block``, the last block before it;
* ``all``: everything.

Frozen parameters get ``requires_grad=False`` and are left out of the optimizer, and the frozen
parts are pinned in eval mode while training: a BatchNorm layer in train mode normalises with
batch statistics and overwrites its running averages, so "frozen" weights would still change
what it computes; and dropout inside a fixed feature extractor only adds noise to the features
the trained layers learn from (on demo-like data, head-only retraining was steadier and about
as accurate without it).

The output is a normal run directory; ``config.json`` carries a ``finetune`` section naming the
parent run and the train mode.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heads import checkpoint as ck
from heads import distributed as dd
from heads.config import TrainConfig, keeps_base_lr
from heads.data import open_data_store
from heads.errors import TransferError
from heads.identity import check_store_compatible
from heads.inference import LoadedRun, load_run
from heads.loggers import check_loggers
from heads.models import Head
from heads.run import check_training_set, fit_and_test, load_data
from heads.run import write_header as write_run_header
from heads.splits import load_splits
from heads.streams import parent_streams

log = logging.getLogger(__name__)

TRAIN_MODES = ("head", "top", "all")
# Adam step sizes per mode. Retraining only the last layers on fixed features is a small,
# nearly convex problem that needs a larger step than a whole network to converge within a few
# dozen epochs on a few batches each; 1e-2 made the loss on 5-10 validation videos jumpy.
FINETUNE_LR = {"head": 3e-3, "top": 3e-3, "all": 1e-3}
FINETUNE_OPTIMIZER = "adam"


@dataclass(frozen=True)
class WarmStart:
    """How the new classifier's rows were initialised, by class name."""

    kept: tuple[str, ...]  # rows copied from the parent (weights and biases)
    new: tuple[str, ...]  # freshly initialised rows
    dropped: tuple[str, ...]  # parent classes absent from the new class set


# ------------------------------------------------------------------------------ model surgery


def _rows_per_class(name: str, tensor: torch.Tensor, n_classes: int) -> int:
    """Rows of ``tensor`` per class: classifiers lay rows out class-major (MoE: E per class)."""
    if tensor.dim() == 0 or tensor.shape[0] % n_classes:
        raise TransferError(
            f"classifier tensor {name} {tuple(tensor.shape)} is not laid out per class "
            f"({n_classes} classes): cannot warm-start it"
        )
    return tensor.shape[0] // n_classes


def warm_start_classifier(
    model: Head, old_labels: Sequence[str], new_labels: Sequence[str]
) -> WarmStart:
    """Replace ``model``'s classifier by one for ``new_labels``, copying the rows of classes in
    ``old_labels`` (matched by name, so the order may change). Seed torch first: new rows draw
    their initialisation from the global RNG."""
    old_labels, new_labels = tuple(old_labels), tuple(new_labels)
    if model.num_classes != len(old_labels):
        raise TransferError(
            f"the model has {model.num_classes} outputs but {len(old_labels)} labels were given"
        )
    old_state = {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
    model.reset_classifier(len(new_labels))
    state = {k: v.detach().clone() for k, v in model.classifier.state_dict().items()}
    old_index = {name: i for i, name in enumerate(old_labels)}
    pairs = [(old_index[n], j) for j, n in enumerate(new_labels) if n in old_index]
    for key, new in state.items():
        old = old_state[key]
        k = _rows_per_class(key, old, len(old_labels))
        if _rows_per_class(key, new, len(new_labels)) != k or old.shape[1:] != new.shape[1:]:
            raise TransferError(f"classifier tensor {key} changed layout: cannot warm-start it")
        for i, j in pairs:
            new[j * k : (j + 1) * k] = old[i * k : (i + 1) * k]
    model.classifier.load_state_dict(state)
    warm = WarmStart(
        kept=tuple(n for n in new_labels if n in old_index),
        new=tuple(n for n in new_labels if n not in old_index),
        dropped=tuple(n for n in old_labels if n not in set(new_labels)),
    )
    if not warm.kept:
        log.warning("no class in common with the parent run: the classifier starts fresh")
    return warm


def check_mode(mode: str) -> None:
    if mode not in TRAIN_MODES:
        raise TransferError(f"train mode must be one of {', '.join(TRAIN_MODES)}; got {mode!r}")


def trainable_modules(model: Head, mode: str) -> list[nn.Module]:
    """The sub-modules trained in ``mode`` (head: classifier; top: + top block; all: model)."""
    check_mode(mode)
    return {
        "head": [model.classifier],
        "top": [model.top_block, model.classifier],
        "all": [model],
    }[mode]


def freeze(model: Head, mode: str) -> list[nn.Parameter]:
    """Set ``requires_grad`` for ``mode``; return the trainable parameters (for the optimizer)."""
    train_ids = {id(p) for m in trainable_modules(model, mode) for p in m.parameters()}
    params = []
    for p in model.parameters():
        p.requires_grad_(id(p) in train_ids)
        if p.requires_grad:
            params.append(p)
    return params


def count_parameters(params: Sequence[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def _eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


@contextlib.contextmanager
def frozen_parts_in_eval(model: Head, mode: str) -> Iterator[list[nn.Module]]:
    """Keep every module without trainable parts in eval mode (BatchNorm uses and keeps its
    running statistics, dropout is off), whatever ``model.train()`` says, during the block."""
    trained = {id(m) for t in trainable_modules(model, mode) for m in t.modules()}
    pinned = [m for m in model.modules() if not any(id(c) in trained for c in m.modules())]
    for m in pinned:
        m.train = types.MethodType(_eval_only, m)  # nn.Module.train calls children's train()
        m.eval()
    try:
        yield pinned
    finally:
        for m in pinned:
            del m.train


# ------------------------------------------------------------------------------ configuration


def finetune_config(parent: TrainConfig, mode: str, **changes: Any) -> TrainConfig:
    """The default fine-tuning config: the parent's, on every class of the store, with Adam at
    ``FINETUNE_LR[mode]``; ``changes`` override it."""
    check_mode(mode)
    data = dataclasses.replace(parent.data, classes=None)
    base = parent.replace(data=data, optimizer=FINETUNE_OPTIMIZER, lr=FINETUNE_LR[mode])
    if not keeps_base_lr(FINETUNE_OPTIMIZER, changes):
        changes["lr"] = None  # that optimiser's own default (DEFAULT_LR), not Adam's step
    return base.replace(**changes)


def _check_same_architecture(parent: TrainConfig, cfg: TrainConfig) -> None:
    if cfg.model != parent.model or cfg.head != parent.head:
        raise TransferError(
            f"fine-tuning keeps the parent's architecture ({parent.model}, {parent.head}); "
            f"got {cfg.model}, {cfg.head}"
        )


# ------------------------------------------------------------------------------ the run


def _check_out(out: Path, parent_dir: Path, force: bool) -> str:
    if out.resolve() == parent_dir.resolve():
        raise TransferError("the output directory must differ from the parent run directory")
    return ck.check_run_dir(out, force=force, resumable=False)


def finetune_run(
    parent: str | Path | LoadedRun,
    store: str | Path,
    out: str | Path,
    *,
    mode: str = "head",
    cfg: TrainConfig | None = None,
    split_file: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
    logger: str | tuple[str, ...] = "csv",
) -> dict[str, Any]:
    """Fine-tune the best model of run ``parent`` on ``store`` into the run directory ``out``.

    ``cfg`` defaults to :func:`finetune_config` (every class of the store); its model and head
    must be the parent's, and the store's features the parent's. Videos the parent split keep
    their split. ``force`` replaces a run in ``out``. Returns the test metrics, with the
    trainable parameter count and the training wall time.
    """
    check_mode(mode)
    check_loggers(logger)
    run = parent if isinstance(parent, LoadedRun) else load_run(parent)
    cfg = cfg if cfg is not None else finetune_config(run.cfg, mode)
    _check_same_architecture(run.cfg, cfg)
    cfg = parent_streams(run.provenance, cfg)
    out = Path(out)
    state = dd.on_main(_check_out, out, run.run_dir, force)  # before rank 0 writes there
    with open_data_store(store, cfg.data) as reader:  # one snapshot, shared by the splits
        check_store_compatible(run.provenance, reader)
        parent_splits = load_splits(run.run_dir / ck.SPLIT)
        data = dd.on_every_rank(  # each rank's own view of the store: see train_run
            load_data, store, cfg, split_file=split_file, parent_splits=parent_splits, reader=reader
        )
        check_training_set(data)
        model = copy.deepcopy(run.model)  # the caller's LoadedRun stays as it was
        torch.manual_seed(cfg.seed)  # the new classifier rows
        warm = warm_start_classifier(model, run.label_map.labels, data.label_map.labels)
        params = freeze(model, mode)
        info = _finetune_info(run, mode, warm, count_parameters(params))
        log.info(
            "fine-tuning %s (--train %s): %d of %d parameters trainable; %d classes, "
            "%d warm-started",
            cfg.model,
            mode,
            info["trainable_params"],
            count_parameters(list(model.parameters())),
            len(data.label_map),
            len(warm.kept),
        )
        if dd.world().is_main:  # the only rank that writes
            ck.sweep_run_temps(out)
            if state != "new":
                ck.clear_run_dir(out)
            write_run_header(out, cfg, data, finetune=info)  # only once every check has passed
        with frozen_parts_in_eval(model, mode):
            metrics = fit_and_test(
                model,
                data,
                cfg,
                out,
                data.meta(finetune=info),
                trainable_params=params,
                progress=progress,
                logger=logger,
            )
    log.info("fine-tuned in %.1f s (%d epochs)", metrics["train_wall_s"], metrics["epochs_run"])
    return metrics


def _finetune_info(run: LoadedRun, mode: str, warm: WarmStart, n_params: int) -> dict[str, Any]:
    return {
        "parent": str(run.run_dir.resolve()),
        "parent_model": run.cfg.model,
        "train": mode,
        "parent_classes": list(run.label_map.labels),
        "warm_started": list(warm.kept),
        "new_classes": list(warm.new),
        "dropped_classes": list(warm.dropped),
        "trainable_params": n_params,
    }
