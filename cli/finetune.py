"""`heads finetune`: transfer a trained run to a new class set (see :mod:`heads.transfer`).

Registered into the ``heads`` group (``main.add_command(finetune)``), whose error handling
turns library errors into one line on stderr and exit code 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from vidfeat_cli.heads import (
    FORCE_OPTION,
    METRIC_KEYS,
    PROGRESS_OPTION,
    RUN_OUT_OPTION,
    _logger_option,
    _train_options,
    build_config,
    show_progress,
)

# _train_options documents `heads train` defaults; fine-tuning starts from the parent's values.
_FINETUNE_HELP = {
    "epochs": "Maximum epochs.  [default: the parent run's]",
    "optimizer": "[default: adam]",
    "patience": "Early-stopping patience (0: off).  [default: the parent run's]",
    "classes": "Comma-separated classes to fine-tune on.  [default: every class in the store]",
    "seed": "Seed for new rows, splits and batches.  [default: the parent run's]",
}
TRAIN_HELP = (
    "head: the output layer only; top: also the last block before it; all: everything. "
    "Frozen parts run in eval mode: BatchNorm keeps its statistics, dropout is off."
)


def _finetune_help(command: click.Command) -> click.Command:
    """Say what the shared training options default to when fine-tuning."""
    from heads.transfer import FINETUNE_LR

    lrs = ", ".join(f"{lr:g} {mode}" for mode, lr in FINETUNE_LR.items())
    helps = {**_FINETUNE_HELP, "lr": f"Learning rate.  [default with adam: {lrs}]"}
    for param in command.params:
        if not isinstance(param, click.Option) or not param.help:
            continue
        if param.name in helps:
            param.help = helps[param.name]
        else:
            param.help = re.sub(r"\[default: [^\]]*\]", "[default: the parent run's]", param.help)
    return command


@_finetune_help
@click.command("finetune", context_settings={"max_content_width": 100})
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--store",
    type=click.Path(path_type=Path),
    required=True,
    help="Store to fine-tune on; its features must match RUN's (dim, backbone, weights, PCA).",
)
@RUN_OUT_OPTION
@click.option(
    "--train",
    "mode",
    type=click.Choice(["head", "top", "all"]),
    default="head",
    show_default=True,
    help=TRAIN_HELP,
)
@click.option(
    "--split-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV with video_id and split and/or group columns (default: RUN's split for the "
    "videos it knew, a fresh stratified split for the others).",
)
@FORCE_OPTION
@_logger_option
@PROGRESS_OPTION
@_train_options
def finetune(
    run: Path,
    store: Path,
    out: Path,
    mode: str,
    split_file: Path | None,
    force: bool,
    logger: str,
    progress: bool | None,
    **options: Any,
) -> None:
    """Fine-tune the best model of RUN on the classes of --store; write a new run to --out.

    A new output layer is built for the new class set: rows of classes RUN already knew start
    from its weights, the others are freshly initialised. Options not given keep RUN's values,
    except the classes (every class in the store), the optimizer (adam) and the learning rate
    (per --train mode). The result is a normal run: evaluate, predict and report work on it.

    \b
    Examples:
      heads train feats.zarr -m bilstm -o runs/five --classes a,b,c,d,e
      heads finetune runs/five --store feats.zarr --out runs/ten
      heads finetune runs/five --store feats.zarr --out runs/ten-top --train top --epochs 30
      heads finetune runs/five --store new.zarr -o runs/abf --classes a,b,f --train all --lr 3e-4
      heads report runs/ten
    """
    from heads.inference import load_run
    from heads.transfer import finetune_config, finetune_run

    parent = load_run(run)
    base = finetune_config(parent.cfg, mode).to_dict()
    cfg = build_config(parent.cfg.model, options, base)
    metrics = finetune_run(
        parent,
        store,
        out,
        mode=mode,
        cfg=cfg,
        split_file=split_file,
        force=force,
        progress=show_progress(progress),
        logger=logger,
    )
    click.echo(_summary_line(metrics, mode) + f"  -> {out}")


def _summary_line(metrics: dict[str, Any], mode: str) -> str:
    parts = [f"{k} {metrics[k]:.4f}" for k in METRIC_KEYS if isinstance(metrics.get(k), float)]
    scores = ", ".join(parts) if parts else "no metrics"
    return (
        f"test ({metrics.get('n_test')} videos): {scores}; --train {mode}: "
        f"{metrics['trainable_params']:,} trainable parameters, "
        f"{metrics['train_wall_s']:.1f} s, best epoch {metrics['best_epoch']}"
    )
