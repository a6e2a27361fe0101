"""`heads`: train classification heads on a feature store, evaluate, predict, report.

Exit codes (all commands):
  0  success
  1  internal error (a bug: one line; -v shows the traceback)
  2  could not run: bad options, store, split file or run directory (one line, no traceback)
  130 interrupted (Ctrl-C); `heads train ... --resume` continues from the last epoch
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vidfeat import atomic
from vidfeat.errors import ConfigError, VidfeatError

if TYPE_CHECKING:
    from heads.config import TrainConfig

EXIT_OK, EXIT_INTERNAL, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130
METRIC_KEYS = ("hit_at_1", "top5", "gap_at_20", "mean_ap", "perr")


class HeadsGroup(click.Group):
    """Turns library errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (VidfeatError, OSError) as exc:  # OSError: disk full, permissions, ...
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_CANNOT_RUN)
        except KeyboardInterrupt:
            click.echo("interrupted: rerun with --resume to continue", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc} (-v for details)", err=True)
            ctx.exit(EXIT_INTERNAL)

    # `finetune` lives in cli/finetune.py, which builds on this module's options; loading it
    # on demand avoids a circular import.
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "finetune"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "finetune" and name not in self.commands:
            from vidfeat_cli.finetune import finetune

            self.add_command(finetune)
        return super().get_command(ctx, name)


@click.group(cls=HeadsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(verbose: bool, quiet: bool) -> None:
    """Train and use video classification heads (LSTM, GRU, BoF, MoE, ...) on frame features.

    \b
    Examples:
      heads train feats.zarr --model bilstm --out runs/bilstm
      heads evaluate runs/bilstm --json
      heads predict runs/bilstm --store new.zarr --format yt8m --out submission.csv
      heads report runs/bilstm runs/bof --out report/
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


# ------------------------------------------------------------------------------ train options


# (option, click settings, help). Shown defaults are read from the config dataclasses.
_TRAIN_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("epochs", {"type": int}, "Maximum epochs."),
    ("batch_size", {"type": int}, "Videos per batch."),
    ("optimizer", {"choices": "OPTIMIZERS"}, "SGD uses momentum 0.9."),
    ("lr", {"type": float}, "Learning rate (default: 1e-3 for adam/rmsprop, 0.01 for sgd)."),
    ("weight_decay", {"type": float}, "L2 penalty."),
    ("lr_step", {"type": int}, "Multiply lr by --lr-gamma every N epochs (0: never)."),
    ("lr_gamma", {"type": float}, "Step-decay factor."),
    ("grad_clip", {"type": float}, "Max global gradient norm (0: off)."),
    ("patience", {"type": int}, "Epochs without improvement before stopping (0: never)."),
    ("monitor", {"choices": "MONITORS"}, "Early-stopping value (metrics on val)."),
    ("seed", {"type": int}, "Seed for initialisation, splits, batches and crops."),
    ("loss", {"choices": "LOSSES"}, "single: softmax CE; multi: sigmoid BCE; auto: by data."),
    ("class_weights", {"flag": True}, "Inverse-frequency class weights in the loss."),
    ("device", {}, "auto, cpu, cuda or cuda:N."),
    ("max_frames", {"type": int}, "Frames per video."),
    ("skip_first", {"type": int}, "Drop this many leading frames."),
    (
        "sampling",
        {"choices": "SAMPLINGS"},
        "head: first N; uniform: N evenly spaced; random-crop: a random window (centred at eval).",
    ),
    ("num_workers", {"type": int}, "DataLoader worker processes."),
    ("bucket", {"flag": True}, "Batch videos of similar length (less padding)."),
    ("bucket_batches", {"type": int}, "Batches per length bucket."),
    ("classes", {}, "Comma-separated label subset to train on."),
    ("test_fraction", {"type": float}, "Test share when the store has no split."),
    ("val_fraction", {"type": float}, "Validation share of the non-test videos."),
]


def _default_text(name: str) -> str:
    from heads.config import DataConfig, TrainConfig

    for cls in (TrainConfig, DataConfig):
        for field in dataclasses.fields(cls):
            if field.name == name and field.default is not dataclasses.MISSING:
                value = field.default
                if isinstance(value, bool):
                    return "on" if value else "off"
                return "" if value is None else str(value)
    return ""


def _train_options(f: Any) -> Any:
    """Options that build a TrainConfig; every default is None, meaning "the config default"."""
    from heads import config

    for name, settings, text in reversed(_TRAIN_OPTIONS):
        flag = name.replace("_", "-")
        shown = _default_text(name)
        text = f"{text}  [default: {shown}]" if shown else text
        if settings.get("flag"):
            f = click.option(f"--{flag}/--no-{flag}", name, default=None, help=text)(f)
            continue
        kind = settings.get("type", str)
        if "choices" in settings:
            kind = click.Choice(getattr(config, settings["choices"]))
        f = click.option(f"--{flag}", name, type=kind, default=None, help=text)(f)
    return f


def _head_options(f: Any) -> Any:
    """One option per HeadConfig field, so a new head hyper-parameter needs no CLI change."""
    from heads.models import HeadConfig

    for field in reversed(dataclasses.fields(HeadConfig)):
        flag = field.name.replace("_", "-")
        default = field.default
        if isinstance(default, bool):
            opt = click.option(
                f"--{flag}/--no-{flag}",
                field.name,
                default=None,
                help=f"Head option.  [default: {'on' if default else 'off'}]",
            )
        else:
            opt = click.option(
                f"--{flag}",
                field.name,
                type=type(default),
                default=None,
                help=f"Head option.  [default: {default}]",
            )
        f = opt(f)
    return f


def build_config(
    model: str, options: dict[str, Any], base: dict[str, Any] | None = None
) -> TrainConfig:
    """TrainConfig from CLI options (None = not given) over ``base`` (a config.json) or defaults."""
    from heads.config import DataConfig, TrainConfig
    from heads.models import HeadConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in (base or {}).items() if k in known}  # drops "store", "finetune"
    head = dict(base.pop("head", {}))
    data = dict(base.pop("data", {}))
    head_fields = {f.name for f in dataclasses.fields(HeadConfig)}
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    if options.get("classes") is not None:
        options["classes"] = tuple(c.strip() for c in options["classes"].split(",") if c.strip())
    for key, value in options.items():
        if value is None:
            continue
        target = head if key in head_fields else data if key in data_fields else base
        target[key] = value
    if "optimizer" in options and options["optimizer"] is not None and options.get("lr") is None:
        base.pop("lr", None)  # another optimiser: its own default lr, not the base's
    base["model"] = model
    return TrainConfig.from_dict({**base, "head": head, "data": data})


# Options `heads train` and `heads finetune` share.
RUN_OUT_OPTION = click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Run directory to create.",
)
PROGRESS_OPTION = click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a tty)."
)
FORCE_OPTION = click.option(
    "--force", is_flag=True, help="Replace a run already in --out (finished or not)."
)


def _logger_option(f: Any) -> Any:
    from heads.loggers import DEFAULT_LOGGER, LOGGERS

    return click.option(
        "--logger",
        type=click.Choice(LOGGERS.names()),
        default=DEFAULT_LOGGER,
        show_default=True,
        help="Where scalars go besides metrics.jsonl: metrics.csv or TensorBoard event files.",
    )(f)


def show_progress(progress: bool | None) -> bool:
    """``--progress/--no-progress``, or a bar only when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else progress


def _model_choice() -> click.Choice:
    from heads.models import HEADS

    return click.Choice(HEADS.names())


@main.command(context_settings={"max_content_width": 100})
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--model", "-m", "model", type=_model_choice(), required=True, help="Head to train.")
@RUN_OUT_OPTION
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Start from this config.json (e.g. another run's); options override it.",
)
@click.option(
    "--split-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CSV with video_id and split and/or group columns (a manifest works).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a killed run in --out from its last epoch, on the same store.",
)
@FORCE_OPTION
@_logger_option
@PROGRESS_OPTION
@_train_options
@_head_options
def train(
    store: Path,
    model: str,
    out: Path,
    config_file: Path | None,
    split_file: Path | None,
    resume: bool,
    force: bool,
    logger: str,
    progress: bool | None,
    **options: Any,
) -> None:
    """Train a head on the features in STORE; write the run to --out.

    Splits come from the store's split column or --split-file, else a seeded, stratified,
    group-aware 72/8/20 train/val/test split. Training stops early when the validation loss
    stops improving, keeps the best epoch and ends with test metrics.

    \b
    Examples:
      heads train feats.zarr --model bilstm --out runs/bilstm
      heads train feats.zarr -m gru -o runs/gru --epochs 100 --optimizer adam --seed 1
      heads train feats.h5 -m bof -o runs/bof --classes dog,cat --sampling uniform
      heads train feats.zarr -m lstm -o runs/lstm --resume     # after a crash or kill
    """
    from heads.run import train_run

    base = _read_json(config_file) if config_file else None
    cfg = build_config(model, options, base)
    metrics = train_run(
        store,
        cfg,
        out,
        split_file=split_file,
        resume=resume,
        force=force,
        progress=show_progress(progress),
        logger=logger,
    )
    click.echo(_metrics_line(metrics, "test") + f"  -> {out}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc


def _metrics_line(metrics: dict[str, Any], name: str) -> str:
    n = metrics.get("n_test", metrics.get("n"))
    parts = [f"{k} {metrics[k]:.4f}" for k in METRIC_KEYS if isinstance(metrics.get(k), float)]
    return f"{name} ({n} videos): " + (", ".join(parts) if parts else "no metrics")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--store",
    type=click.Path(path_type=Path),
    help="Store to evaluate on (default: the training store).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "all"]),
    default=None,
    help="Run split to score, or all labelled videos (default: test, or all on a "
    "store without the run's videos).",
)
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
@click.option("--num-workers", type=int, default=None, help="DataLoader workers.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
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
    from heads.inference import evaluate_run

    metrics = evaluate_run(run, store, split=split, num_workers=num_workers, device=device)
    if as_json:
        click.echo(json.dumps({k: _finite(v) for k, v in metrics.items()}, indent=2))
    else:
        click.echo(_metrics_line(metrics, f"{metrics['split']} on {metrics['store']}"))


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value  # NaN -> null


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--store",
    type=click.Path(path_type=Path),
    required=True,
    help="Store with the videos to classify.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Classes per video (or per step).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "yt8m"]),
    default="csv",
    show_default=True,
    help="csv: video_id,predictions with label:score pairs; yt8m: VideoId,LabelConfidencePairs.",
)
@click.option("--per-frame", is_flag=True, help="Scores at every time step (recurrent heads).")
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Output CSV (default: stdout).",
)
@click.option("--num-workers", type=int, default=None, help="DataLoader workers.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
def predict(
    run: Path,
    store: Path,
    top_k: int,
    fmt: str,
    per_frame: bool,
    out: Path | None,
    num_workers: int | None,
    device: str | None,
) -> None:
    """Classify every video of --store with the best checkpoint of RUN.

    \b
    Examples:
      heads predict runs/bilstm --store new.zarr --out predictions.csv
      heads predict runs/bilstm --store test.zarr --format yt8m --out submission.csv
      heads predict runs/gru --store new.zarr --per-frame --top-k 3
    """
    from heads.inference import predict_run

    table = predict_run(
        run,
        store,
        top_k=top_k,
        per_frame=per_frame,
        fmt=fmt,
        num_workers=num_workers,
        device=device,
    )
    if out is None:
        table.to_csv(sys.stdout, index=False)
        return
    try:
        with atomic.atomic_open(out, "w", newline="") as fh:
            table.to_csv(fh, index=False)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc}") from exc
    click.echo(f"{len(table)} rows -> {out}", err=True)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Report directory (default: RUN/report for one run, ./report for several).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "pdf", "svg"]),
    default="png",
    show_default=True,
    help="Figure file format (pdf and svg are vector graphics, for papers).",
)
@click.option(
    "--dpi", type=click.IntRange(min=10), default=150, show_default=True, help="Raster resolution."
)
def report(runs: tuple[Path, ...], out: Path | None, fmt: str, dpi: int) -> None:
    """Write report.md with training curves, confusion matrices and a comparison of RUNS.

    \b
    Examples:
      heads report runs/bilstm
      heads report runs/bilstm runs/gru runs/bof --out report/
    """
    from heads.report import write_report

    if out is None:
        out = runs[0] / "report" if len(runs) == 1 else Path("report")
    click.echo(str(write_report(list(runs), out, fmt=fmt, dpi=dpi)))


if __name__ == "__main__":  # pragma: no cover
    main()
