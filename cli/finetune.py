"""`heads finetune`: transfer a trained run to a new class set (see :mod:`heads.transfer`).

Registered lazily into the ``heads`` group (``main.lazy_command("finetune", ...)``), whose
error handling turns library errors into one line on stderr and exit code 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from vidfeat_cli.core import progress_option, show_progress
from vidfeat_cli.heads_options import (
    build_config,
    check_training_target,
    metrics_text,
    run_options,
    run_out_option,
    train_options,
    training_session,
)
from vidfeat_cli.options import STORE, SectionedCommand, SectionOption, deferred

# train_options documents `heads train` defaults; fine-tuning starts from the parent's values.
_FINETUNE_HELP = {
    "epochs": "Maximum epochs.  [default: the parent run's]",
    "patience": "Early-stopping patience (0: off).  [default: the parent run's]",
    "classes": "Comma-separated classes to fine-tune on; a JSON list for labels that hold "
    """commas ('["black, cat", "dog"]').  [default: every class in the store]""",
    "seed": "Seed for new rows, splits and batches.  [default: the parent run's]",
    "streams": "Store streams the model reads: only the parent run's, which its input layer "
    "is made for.  [default: the parent run's]",
}
TRAIN_HELP = (
    "head: the output layer only; top: also the last block before it; all: everything. "
    "Frozen parts run in eval mode: BatchNorm keeps its statistics, dropout is off."
)


def mode_option() -> list[click.Parameter]:
    """``--train``: which parts of the parent model learn (``heads.transfer.TRAIN_MODES``)."""
    from heads.transfer import TRAIN_MODES

    return [
        SectionOption(
            ["--train", "mode"],
            type=click.Choice(TRAIN_MODES),
            default=TRAIN_MODES[0],
            show_default=True,
            section="Model",
            help=TRAIN_HELP,
        )
    ]


def finetune_options() -> list[click.Parameter]:
    """The training options, saying what they default to when fine-tuning."""
    from heads.transfer import FINETUNE_LR, FINETUNE_OPTIMIZER

    lrs = ", ".join(f"{lr:g} {mode}" for mode, lr in FINETUNE_LR.items())
    helps = {
        **_FINETUNE_HELP,
        "optimizer": f"[default: {FINETUNE_OPTIMIZER}]",
        "lr": f"Learning rate.  [default with {FINETUNE_OPTIMIZER}: {lrs}]",
    }
    params = train_options()
    for param in params:
        if not isinstance(param, click.Option):
            continue
        if param.name in helps:
            param.help = helps[param.name]
        elif param.help:
            param.help = re.sub(r"\s*\[default: [^\]]*\]", "", param.help)
            param.help += "  [default: the parent run's]"
    return params


@click.command("finetune", cls=SectionedCommand)
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--store",
    type=STORE,
    required=True,
    cls=SectionOption,
    section="Data",
    help="Store to fine-tune on; its features must match RUN's (dim, backbone, weights, PCA).",
)
@run_out_option()
@click.option(
    "--split-file",
    type=click.Path(path_type=Path, dir_okay=False),
    cls=SectionOption,
    section="Data",
    help="CSV with video_id and split and/or group columns (default: RUN's split for the "
    "videos it knew, a fresh stratified split for the others).",
)
@deferred(mode_option)
@deferred(run_options)
@progress_option
@deferred(finetune_options)
def finetune(
    run: Path,
    store: Path,
    out: Path,
    mode: str,
    split_file: Path | None,
    force: bool,
    logger: tuple[str, ...],
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
    cfg = build_config({**options, "model": parent.cfg.model}, base)
    check_training_target(cfg.device, out)
    restart = "fine-tuning does not resume: add --force to the same command to start it again"
    with training_session(cfg.device, out, restart) as is_main:
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
    if is_main:
        click.echo(_summary_line(metrics, mode) + f"  -> {out}")


def _summary_line(metrics: dict[str, Any], mode: str) -> str:
    scores = metrics_text(metrics)
    return (
        f"test ({metrics.get('n_test')} videos): {scores}; --train {mode}: "
        f"{metrics['trainable_params']:,} trainable parameters, "
        f"{metrics['train_wall_s']:.1f} s, best epoch {metrics['best_epoch']}"
    )
