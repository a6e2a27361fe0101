"""`heads`: train classification heads on a feature store, evaluate, predict, report.

Exit codes are shared with `vidfeat` (see ``vidfeat_cli.core.EXIT_CODES`` and ``--help``).
Options whose choices come from the head registry are built on first use, so ``heads --help``
and ``heads --version`` do not import torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vidfeat.allocator import keep_freed_memory
from vidfeat.errors import ConfigError
from vidfeat_cli.config_file import read_config_file, recorded_split_file
from vidfeat_cli.core import (
    EXIT_CANNOT_RUN,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliGroup,
    interrupt_on_sigterm,
    progress_option,
    run_command,
    setup_logging,
    show_progress,
    verbosity_options,
    version_option,
)
from vidfeat_cli.heads_options import (
    build_config,
    check_training_target,
    head_options,
    metrics_line,
    model_option,
    run_options,
    run_out_option,
    train_options,
    training_session,
)
from vidfeat_cli.options import (
    DEVICE,
    STORE,
    SectionedCommand,
    SectionOption,
    check_device,
    deferred,
)

if TYPE_CHECKING:
    from heads.config import TrainConfig
    from vidfeat.store import StoreReader

__all__ = ["EXIT_CANNOT_RUN", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "main", "run"]


@click.group(cls=CliGroup)
@verbosity_options
@version_option
def main(verbose: int, quiet: bool) -> None:
    """Train and use video classification heads (LSTM, GRU, BoF, MoE, ...) on frame features.

    \b
    Examples:
      heads train feats.zarr --model bilstm --out runs/bilstm
      heads train feats.zarr --config run.yaml --out runs/a
      heads evaluate runs/bilstm --json
      heads predict runs/bilstm --store new.zarr --out predictions.parquet
      heads predict runs/bilstm --store test.zarr --format yt8m --vocabulary vocabulary.csv \\
          --out submission.csv
      heads report runs/bilstm runs/bof --out report/
    """
    setup_logging(verbose, quiet)
    keep_freed_memory()  # every command allocates large blocks over and over: vidfeat.allocator
    interrupt_on_sigterm()


# One line per command; the module is imported only when the command is used.
main.lazy_command("finetune", "vidfeat_cli.finetune:finetune", "Fine-tune a run on new classes.")
main.lazy_command(
    "ensemble", "vidfeat_cli.runs:ensemble", "Average the test scores of several runs."
)
main.lazy_command(
    "report", "vidfeat_cli.runs:report", "Training curves, confusion matrices, comparisons."
)


# ------------------------------------------------------------------------------ train


@main.command(cls=SectionedCommand)
@click.argument("store", type=STORE, required=False)
@deferred(model_option)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    cls=SectionOption,
    section="Run",
    help="Start from this JSON or YAML config (e.g. another run's config.json); "
    "options override it. Unknown keys are refused.",
)
@click.option(
    "--print-config",
    is_flag=True,
    cls=SectionOption,
    section="Run",
    help="Print the merged config as JSON and exit (STORE and --out not needed).",
)
@click.option(
    "--split-file",
    type=click.Path(path_type=Path, dir_okay=False),
    cls=SectionOption,
    section="Data",
    help="CSV with video_id and split and/or group columns (a manifest works).",
)
@run_out_option(required=False)
@click.option(
    "--resume",
    is_flag=True,
    cls=SectionOption,
    section="Run",
    help="Continue a killed run in --out from its last epoch, on the same store.",
)
@deferred(run_options)
@progress_option
@deferred(train_options)
@deferred(head_options)
def train(
    store: Path | None,
    out: Path | None,
    config_file: Path | None,
    print_config: bool,
    split_file: Path | None,
    resume: bool,
    force: bool,
    logger: tuple[str, ...],
    progress: bool | None,
    **options: Any,
) -> None:
    """Train a head on the features in STORE; write the run to --out.

    Splits come from the store's split column or --split-file, else a seeded, stratified,
    group-aware 72/8/20 train/val/test split. Training stops early when the value --monitor
    names (the validation loss by default) stops improving, keeps the best epoch and ends
    with test metrics. The device, store and
    options are checked before --out is created, and a run that fails before its first
    checkpoint leaves no directory behind.

    \b
    Examples:
      heads train feats.zarr --model bilstm --out runs/bilstm
      heads train feats.zarr -m gru -o runs/gru --epochs 100 --optimizer adam --seed 1
      heads train feats.h5 -m bof -o runs/bof --classes dog,cat --sampling uniform
      heads train feats.zarr --config run.yaml -o runs/a --print-config
      heads train feats.zarr -m lstm -o runs/lstm --resume     # after a crash or kill
      torchrun --nproc-per-node 4 -m vidfeat_cli.heads train feats.zarr -m lstm -o runs/ddp
    """
    base = read_config_file(config_file) if config_file else None
    cfg = build_config(options, base)
    if split_file is None and config_file is not None:
        split_file = recorded_split_file(config_file)  # a run's config.json: its split file
        if split_file is not None:
            logging.getLogger("heads.run").info(
                "splits from %s, the --split-file %s records", split_file, config_file
            )
    if print_config:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        return
    if store is None or out is None:
        raise click.UsageError("STORE and --out are required (unless --print-config)")
    from heads.data import open_data_store
    from heads.run import train_run

    check_training_target(cfg.device, out)
    if resume and not out.is_dir():
        raise ConfigError(f"--resume: {out} holds no run to continue")
    resume_step = "the last checkpoint is kept; add --resume to the same command to continue"
    # One open of the store for the checks and the run: on a store of millions of videos each
    # open builds an index of hundreds of MB.
    with open_data_store(store, cfg.data) as reader:
        _check_train_classes(reader, store, cfg)
        with training_session(cfg.device, out, resume_step) as is_main:
            metrics = train_run(
                store,
                cfg,
                out,
                split_file=split_file,
                resume=resume,
                force=force,
                progress=show_progress(progress),
                logger=logger,
                reader=reader,
            )
    if is_main:
        click.echo(metrics_line(metrics, "test") + f"  -> {out}")


def _check_train_classes(reader: StoreReader, store: Path | str, cfg: TrainConfig) -> None:
    """The store's classes, checked before --out exists: a single class or video would train
    to meaningless "perfect" metrics."""
    from heads.labels import build_label_map

    # train_run builds the same map again and logs its warnings then; say them once.
    data_log = logging.getLogger("heads.labels")
    level, data_log.level = data_log.level, logging.ERROR
    try:
        label_map, videos = build_label_map(reader.videos, cfg.data.classes)
    finally:
        data_log.setLevel(level)
    if len(label_map) < 2:
        raise ConfigError(
            f"only one class ({label_map.labels[0]}) in the training videos of {store}: "
            "a classifier needs at least two"
        )
    if len(videos) < 2:
        raise ConfigError(f"only {len(videos)} labelled video in {store}: nothing to split")


# ------------------------------------------------------------------------------ evaluate


def _split_option() -> list[click.Parameter]:
    from heads.inference import EVAL_SPLITS

    return [
        click.Option(
            ["--split"],
            type=click.Choice(EVAL_SPLITS),
            default=None,
            help="Run split to score, or all labelled videos (default: test, or all on a "
            "store without the run's videos).",
        )
    ]


@main.command(cls=SectionedCommand)
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--store",
    type=STORE,
    help="Store to evaluate on (default: the training store).",
)
@deferred(_split_option)
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
@click.option(
    "--num-workers", type=int, default=None, help="DataLoader workers. Default: the run's."
)
@click.option("--device", type=DEVICE, default=None, help="Default: the run's device.")
def evaluate(
    run: Path,
    store: Path | None,
    split: str | None,
    as_json: bool,
    num_workers: int | None,
    device: str | None,
) -> None:
    """Score the best checkpoint of RUN: hit@1, top-5, GAP@20, mAP, PERR.

    \b
    Examples:
      heads evaluate runs/bilstm
      heads evaluate runs/bilstm --store heldout.zarr --json
      heads evaluate runs/bilstm --split val
    """
    check_device(device)
    from heads.inference import evaluate_run

    metrics = evaluate_run(run, store, split=split, num_workers=num_workers, device=device)
    if as_json:
        click.echo(json.dumps({k: _finite(v) for k, v in metrics.items()}, indent=2))
    else:
        click.echo(metrics_line(metrics, f"{metrics['split']} on {metrics['store']}"))


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value  # NaN -> null


# ------------------------------------------------------------------------------ predict


def _format_choice() -> list[click.Parameter]:
    from heads.predictions import FORMATS

    return [
        click.Option(
            ["--format", "fmt"],
            type=click.Choice(FORMATS),
            default=None,
            help="Default: from the --out suffix (.csv, .parquet, .jsonl, .npz: raw scores of "
            "every class), csv on stdout. yt8m: Kaggle's VideoId,LabelConfidencePairs CSV "
            "with vocabulary indices. A --format that does not match --out is refused.",
        )
    ]


@main.command(cls=SectionedCommand)
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--store",
    type=STORE,
    required=True,
    help="Store with the videos to classify.",
)
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Output file; its suffix picks the format (default: CSV on stdout).",
)
@deferred(_format_choice)
@click.option(
    "--vocabulary",
    type=click.Path(path_type=Path, dir_okay=False),
    help="yt8m: Google's vocabulary.csv (Index,TrainVideoCount,KnowledgeGraphId,Name,...) "
    "mapping label names to indices (not needed when the labels are indices, or when the "
    "store records its vocabulary: import-yt8m --vocabulary).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Classes per video (or per step).",
)
@click.option("--per-frame", is_flag=True, help="Scores at every time step (recurrent heads).")
@click.option(
    "--attention", is_flag=True, help="Attention weight of every time step (attention heads)."
)
@click.option(
    "--num-workers", type=int, default=None, help="DataLoader workers. Default: the run's."
)
@click.option("--device", type=DEVICE, default=None, help="Default: the run's device.")
def predict(
    run: Path,
    store: Path,
    out: Path | None,
    fmt: str | None,
    vocabulary: Path | None,
    top_k: int,
    per_frame: bool,
    attention: bool,
    num_workers: int | None,
    device: str | None,
) -> None:
    """Classify every video of --store with the best checkpoint of RUN.

    \b
    Examples:
      heads predict runs/bilstm --store new.zarr --out predictions.csv
      heads predict runs/bilstm --store new.zarr --out scores.npz
      heads predict runs/bilstm --store test.zarr --format yt8m --vocabulary vocabulary.csv \\
          --out submission.csv
      heads predict runs/gru --store new.zarr --per-frame --top-k 3
      heads predict runs/attention --store new.zarr --attention
    """
    from heads import predictions as pr
    from heads.inference import predict_run, write_scores_run

    fmt = pr.resolve_format(out, fmt)
    check_device(device)
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    if fmt == "npz":
        if per_frame or attention:
            raise ConfigError("per-step output is a table: use .csv, .parquet or .jsonl")
        videos, classes = write_scores_run(run, store, out, num_workers=num_workers, device=device)
        click.echo(f"{videos} videos x {classes} classes -> {out}", err=True)
        return
    vocab = pr.read_vocabulary(vocabulary) if vocabulary is not None else None
    table = predict_run(
        run,
        store,
        top_k=top_k,
        per_frame=per_frame,
        attention=attention,
        fmt="yt8m" if fmt == "yt8m" else "csv",
        vocabulary=vocab,
        num_workers=num_workers,
        device=device,
    )
    pr.write_table(table, out, fmt)
    if out is not None:
        click.echo(f"{len(table)} rows -> {out}", err=True)


def run() -> None:
    """The installed ``heads`` script: ``main`` without the interpreter's slow teardown."""
    run_command(main)


if __name__ == "__main__":  # pragma: no cover
    run()
