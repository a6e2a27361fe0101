"""`vidfeat`: extract frame features into a store, and inspect stores.

Exit codes (all commands):
  0  everything succeeded
  1  the job ran, but some videos failed (see `vidfeat info STORE`)
  2  could not run: bad options, manifest, weights or store (one-line message, no traceback)
  130 interrupted (Ctrl-C or SIGTERM); finished videos are committed, rerun to resume
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from vidfeat.backbones.runtimes import DEFAULT_RUNTIME, precision_names, runtime_names
from vidfeat.errors import ConfigError, VidfeatError
from vidfeat_cli.pca import pca

EXIT_OK, EXIT_SOME_FAILED, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130


class VidfeatGroup(click.Group):
    """Turns library errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except VidfeatError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_CANNOT_RUN)
        except KeyboardInterrupt:
            click.echo("interrupted: finished videos are committed; rerun to resume", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=VidfeatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="vidfeat")
def main(verbose: int) -> None:
    """Video frame features (InceptionV3, 1 fps) into a resumable Zarr/HDF5 store.

    \b
    Examples:
      vidfeat extract data_manifests/demo.csv --out feats.zarr
      vidfeat extract videos.csv --out feats.h5 --decoder pyav --workers 4
      vidfeat extract videos.csv --out feats.zarr --shard 3/16   # one job of an array
      vidfeat info feats.zarr
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _parse_shard(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    from vidfeat.config import parse_shard

    try:
        return parse_shard(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="Store path: a directory (Zarr) or a .h5/.hdf5 file (HDF5).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["zarr", "hdf5"]),
    default=None,
    help="Store format (default: by --out suffix, else zarr).",
)
@click.option("--backbone", default="inception_v3", show_default=True)
@click.option(
    "--weights",
    default="yt8m",
    show_default=True,
    help="yt8m (YouTube-8M's TF InceptionV3, offline), imagenet (torchvision), "
    "or a state-dict path.",
)
@click.option("--fps", default="1", show_default=True, help="Frames per second to sample.")
@click.option("--max-frames", type=click.IntRange(min=1), default=360, show_default=True)
@click.option(
    "--decoder",
    type=click.Choice(["decord", "pyav"]),
    default="decord",
    show_default=True,
    help="Both pick the same frames; pyav skips unreferenced frames no pick needs, so it uses "
    "less CPU on long-GOP H.264.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Decode processes (they overlap with backbone inference).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--runtime",
    type=click.Choice(runtime_names()),
    default=DEFAULT_RUNTIME,
    show_default=True,
    help="How the backbone runs; onnxruntime and openvino need their extras "
    "(pip install 'vidfeat[onnx]' / 'vidfeat[openvino]'). Recorded in the store attrs.",
)
@click.option(
    "--precision",
    type=click.Choice(precision_names()),
    default="fp32",
    show_default=True,
    help="fp16 needs CUDA; bf16 runs on CUDA and on CPUs with bf16 instructions; int8 needs "
    "--runtime onnxruntime. Recorded in the store attrs.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Stored dtype (without --quantize).",
)
@click.option(
    "--pca",
    "pca_path",
    default=None,
    help="PCA to apply: a `vidfeat pca fit` .npz or YouTube-8M's PCA directory.",
)
@click.option("--quantize", is_flag=True, help="Store YouTube-8M uint8 codes (needs --pca).")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Seconds a video may decode without progress.",
)
@click.option(
    "--shard",
    default="0/1",
    show_default=True,
    callback=_parse_shard,
    help="I/N: this job takes shard I of N (0-based); jobs share one store.",
)
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Commit finished videos in groups of N (or every 10 s); a kill loses at most one group.",
)
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed video (debugging).")
@click.option("--retry-failed", is_flag=True, help="Retry videos recorded as failed.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def extract(
    manifest: Path,
    out: Path,
    fmt: str | None,
    pca_path: str | None,
    no_progress: bool,
    **options: object,
) -> None:
    """Extract per-frame features for every video in MANIFEST into --out.

    Reruns resume: videos already in the store are skipped, and a store written with other
    settings is refused. Failed videos are recorded with a reason (`vidfeat info`).

    \b
    Examples:
      vidfeat extract videos.csv --out feats.zarr
      vidfeat extract videos.csv --out feats.zarr --pca yt8m_pca/ --quantize
      vidfeat extract videos.csv --out feats.zarr --shard $SLURM_ARRAY_TASK_ID/64
    """
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import extract as run_extract

    cfg = ExtractConfig(
        manifest=manifest, out=out, format=fmt, pca=pca_path, progress=not no_progress, **options
    )
    summary = run_extract(cfg)
    click.echo(
        f"{summary.ok} extracted, {summary.skipped} already done, {summary.failed} failed "
        f"({summary.frames} frames in {summary.seconds:.1f} s, "
        f"{summary.frames_per_s:.1f} frames/s) -> {out}"
    )
    if summary.failed:
        for vid, status in list(summary.failures.items())[:10]:
            click.echo(f"  failed: {vid} ({status})", err=True)
        sys.exit(EXIT_SOME_FAILED)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--failures/--no-failures",
    default=True,
    show_default=True,
    help="List failed videos with their reasons.",
)
def info(store: Path, as_json: bool, failures: bool) -> None:
    """Summarise a feature store: settings, counts, sizes and failures.

    \b
    Examples:
      vidfeat info feats.zarr
      vidfeat info feats.h5 --json | jq .failed
    """
    from vidfeat.store.info import store_summary

    summary = store_summary(store)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    from vidfeat.store.info import format_summary

    click.echo(format_summary(summary, show_failures=failures))


main.add_command(pca)


if __name__ == "__main__":
    main()
