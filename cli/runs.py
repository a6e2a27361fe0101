"""`heads ensemble` and `heads report`: commands over finished run directories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from vidfeat.errors import ConfigError
from vidfeat_cli.heads_options import metrics_line, removed_on_failure

_RUNS = click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))


def _out_dir(help_text: str, required: bool = False) -> Callable[[Callable], Callable]:
    """``--out/-o``: the directory the command writes."""
    return click.option(
        "--out",
        "-o",
        "out",
        type=click.Path(path_type=Path, file_okay=False),
        required=required,
        help=help_text,
    )


@click.command()
@_RUNS
@_out_dir(required=True, help_text="Directory for test_metrics.json and the test predictions.")
@click.option(
    "--weights",
    default="equal",
    show_default=True,
    help="equal; gap (validation GAP of each run over their sum); or a JSON file of weights.",
)
@click.option(
    "--vocabulary",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Google's vocabulary.csv, for the YouTube-8M CSV when the labels are names (not "
    "needed when the runs' store records its vocabulary: import-yt8m --vocabulary).",
)
@click.option("--force", is_flag=True, help="Replace an ensemble already in --out.")
def ensemble(
    runs: tuple[Path, ...], out: Path, weights: str, vocabulary: Path | None, force: bool
) -> None:
    """Average the test scores of RUNS (same classes, same test split) and score the result.

    \b
    Examples:
      heads ensemble runs/logistic runs/lstm --out runs/ens --weights gap
    """
    from heads import predictions as pr
    from heads.ensemble import ensemble_runs

    vocab = pr.read_vocabulary(vocabulary) if vocabulary is not None else None
    metrics = ensemble_runs(list(runs), out, weights, vocabulary=vocab, force=force)
    click.echo(metrics_line(metrics, "ensemble test") + f"  -> {out}")


@click.command()
@_RUNS
@_out_dir(help_text="Report directory (default: RUN/report for one run, ./report for several).")
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
    from heads.report import RUN_FILES, write_report

    for run in runs:
        if not any((run / name).is_file() for name in RUN_FILES):
            what = "does not exist" if not run.exists() else f"has none of {', '.join(RUN_FILES)}"
            raise ConfigError(f"{run} is neither a heads run nor an ensemble ({what})")
    if out is None:
        out = runs[0] / "report" if len(runs) == 1 else Path("report")
    with removed_on_failure(out, keep=()):
        click.echo(str(write_report(list(runs), out, fmt=fmt, dpi=dpi)))
