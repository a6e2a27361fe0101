"""`vidfeat import-yt8m` and `vidfeat export-yt8m`: YouTube-8M's TFRecords in and out of a store."""

from __future__ import annotations

from pathlib import Path

import click

from vidfeat.store import BACKENDS
from vidfeat_cli.core import EXIT_SOME_FAILED, echo_failures, progress_option, show_progress
from vidfeat_cli.options import STORE


@click.command("import-yt8m")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--out",
    "-o",
    type=STORE,
    required=True,
    help="Store path: a directory (Zarr) or a .h5/.hdf5 file (HDF5), or a URL (s3://...).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(BACKENDS.names()),
    default=None,
    help="Store format (default: by --out suffix, else zarr).",
)
@click.option(
    "--vocabulary",
    default=None,
    help="Google's vocabulary.csv: labels become class names (indices kept in the store).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "validate", "test"]),
    default=None,
    help="Split of every file (default: from each file name, train*/validate*/test*).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Files parsed in parallel, one worker process each.",
)
@click.option(
    "--shard",
    default="0/1",
    show_default=True,
    help="I/N: this job takes shard I of N of the files; jobs share one store.",
)
@click.option(
    "--keep-partial",
    is_flag=True,
    help="Import the readable records of a file that ends early (empty, cut short, damaged "
    "framing) and record the damage; a rerun then skips it. Default: leave such a file out "
    "(a download cut short), so that a rerun reads it again.",
)
@progress_option
def import_yt8m(
    paths: tuple[str, ...],
    out: Path | str,
    fmt: str | None,
    shard: str,
    progress: bool | None,
    **options: object,
) -> None:
    """Import YouTube-8M TFRecords (frame or video level) from PATHS into --out.

    PATHS are files, directories or glob patterns, local or remote (any fsspec URL). Feature
    bytes are stored as published (uint8, yt8m_uint8). Reruns skip files already imported;
    corrupt records are recorded with their reason (`vidfeat info`) and exit 1. A file that
    ends early is left out and read again by a rerun (--keep-partial records it instead).

    \b
    Examples:
      vidfeat import-yt8m yt8m/frame/ --out yt8m.zarr --vocabulary vocabulary.csv
      vidfeat import-yt8m 'gs://bucket/frame/train*.tfrecord' --out yt8m.zarr --workers 4
      vidfeat import-yt8m yt8m/frame/ -o yt8m.zarr --shard $SLURM_ARRAY_TASK_ID/16  # --array=0-15
    """
    from vidfeat.config import parse_shard
    from vidfeat.yt8m.importer import ImportConfig
    from vidfeat.yt8m.importer import import_yt8m as run_import

    cfg = ImportConfig(
        paths=paths,
        out=out,
        format=fmt,
        shard=parse_shard(shard),
        progress=show_progress(progress),
        **options,
    )
    s = run_import(cfg)
    mb = s.feature_bytes / 1e6
    if not s.written:
        click.echo(
            f"no video could be read from {s.files - s.skipped_files} file(s): nothing was "
            f"written to {out}; {s.failed} failed"
        )
    else:
        click.echo(
            f"{s.imported_files} files imported, {s.skipped_files} already done: "
            f"{s.videos} videos, {s.frames} frames ({mb:.1f} MB of features in "
            f"{s.seconds:.1f} s), {s.failed} failed -> {out}"
        )
    if s.failed:
        # With the reason, which says what is wrong ("rgb frame 0 holds [8] bytes, ...").
        lines = [f"{url} record {f.index} ({f.status}): {f.reason[:160]}" for url, f in s.failures]
        echo_failures(lines, out if s.written else None, s.unrecorded)
        click.get_current_context().exit(EXIT_SOME_FAILED)


@click.command("export-yt8m")
@click.argument("store", type=STORE)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Directory.")
@click.option(
    "--level",
    type=click.Choice(["frame", "video"]),
    default=None,
    help="Records to write (default: the store's level; video from a frame store writes means).",
)
@click.option(
    "--records-per-file",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Videos per TFRecord file.",
)
def export_yt8m(store: Path, out: Path, level: str | None, records_per_file: int) -> None:
    """Write a store's videos as YouTube-8M TFRecords under --out.

    \b
    Examples:
      vidfeat export-yt8m yt8m.zarr --out exported/
      vidfeat export-yt8m feats.zarr --out exported/ --level video --records-per-file 512
    """
    from vidfeat.yt8m.exporter import export_yt8m as run_export

    s = run_export(store, out, level=level, records_per_file=records_per_file)
    click.echo(f"{s.videos} videos, {s.frames} frames -> {len(s.files)} files in {out}")
