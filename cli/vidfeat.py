"""`vidfeat`: extract frame features into a store, and inspect stores.

Exit codes are shared with `heads` (see ``vidfeat_cli.core.EXIT_CODES`` and ``--help``).
Options whose choices come from registries (backbones, decoders, store backends) are built on
first use, so ``vidfeat --help`` and ``vidfeat --version`` import neither torch nor a decoder.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import click

from vidfeat.allocator import keep_freed_memory
from vidfeat_cli.core import (
    EXIT_CANNOT_RUN,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    CliGroup,
    echo_failures,
    interrupt_on_sigterm,
    progress_option,
    run_command,
    setup_logging,
    show_progress,
    verbosity_options,
    version_option,
)
from vidfeat_cli.options import (
    DEVICE,
    STORE,
    SectionedCommand,
    SectionOption,
    check_device,
    deferred,
)

__all__ = ["EXIT_CANNOT_RUN", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SOME_FAILED", "main", "run"]


@click.group(cls=CliGroup)
@verbosity_options
@version_option
def main(verbose: int, quiet: bool) -> None:
    """Video frame features (InceptionV3, 1 fps) into a resumable Zarr/HDF5 store.

    \b
    Examples:
      vidfeat extract data_manifests/demo.csv --out feats.zarr
      vidfeat extract videos.csv --out feats.h5 --decoder decord --workers 4
      vidfeat extract videos.csv --out feats.zarr --shard 3/16   # job 3 of 0..15
      vidfeat info feats.zarr
      vidfeat verify feats.zarr
    """
    setup_logging(verbose, quiet)
    keep_freed_memory()  # every command allocates large blocks over and over: vidfeat.allocator
    interrupt_on_sigterm()
    if click.get_current_context().invoked_subcommand == "extract":
        from vidfeat.decode.pool import start_fork_server

        start_fork_server()  # its imports overlap the ones parsing extract's options needs


# One line per command; the module is imported only when the command is used.
main.lazy_command("pca", "vidfeat_cli.pca:pca", "Whitened PCA and uint8 codes, as YouTube-8M.")
main.lazy_command("import-yt8m", "vidfeat_cli.yt8m:import_yt8m", "YouTube-8M TFRecords in.")
main.lazy_command("export-yt8m", "vidfeat_cli.yt8m:export_yt8m", "A store as YouTube-8M TFRecords.")


def _backbones() -> list[str]:
    from vidfeat.backbones.base import backbone_names

    return backbone_names()


def _decoders() -> list[str]:
    from vidfeat.decode import DECODERS

    return DECODERS.names()


def _backends() -> list[str]:
    from vidfeat.store.base import BACKENDS

    return BACKENDS.names()


def _engines() -> list[str]:
    from vidfeat.engines import ENGINES

    return ENGINES.names()


def _runtimes() -> list[str]:
    from vidfeat.backbones.runtimes import runtime_names

    return runtime_names()


def _audio_backbones() -> list[str]:
    from vidfeat.backbones.audio import audio_backbone_names

    return audio_backbone_names()


def _precisions() -> list[str]:
    from vidfeat.backbones.runtimes import AUTO_PRECISION, precision_names

    return [AUTO_PRECISION, *precision_names()]


# (ExtractConfig field, section, type or a function giving the choices, help)
_EXTRACT_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("fps", "Data", str, "Frames per second to sample (1, 0.5, 1/3, 29.97, ...)."),
    ("max_frames", "Data", click.IntRange(min=1), "Frames per video at most."),
    (
        "decoder",
        "Data",
        _decoders,
        "pyav and decord pick the same frames; pyav skips unreferenced frames no pick needs, "
        "so it uses less CPU on long-GOP H.264.",
    ),
    (
        "timeout_s",
        "Data",
        click.FloatRange(min=0.1),
        "Seconds each video may spend decoding in total (time waiting for the backbone "
        "not counted); past it the worker is killed and the video recorded as timeout.",
    ),
    ("backbone", "Model", _backbones, "Frame feature extractor."),
    (
        "weights",
        "Model",
        str,
        "yt8m (YouTube-8M's TF InceptionV3, offline), imagenet (torchvision), "
        "or a state-dict path.",
    ),
    (
        "runtime",
        "Model",
        _runtimes,
        "How the backbone runs; onnxruntime and openvino need their extras "
        "(pip install 'vidfeat[onnx]' / 'vidfeat[openvino]'). Recorded in the store attrs.",
    ),
    (
        "precision",
        "Model",
        _precisions,
        "auto: the fastest within 0.01 of fp32 for --runtime on --device (eager: mixed on "
        "CPUs with bf16 instructions, else fp32; fp16 on CUDA). mixed: bf16 after the "
        "backbone's stem, fp32 before it. fp16 needs CUDA; bf16 runs on CUDA and on CPUs "
        "with bf16 instructions; int8 needs --runtime onnxruntime. Recorded in the store "
        "attrs as the precision that ran.",
    ),
    (
        "pca",
        "Model",
        str,
        "PCA to apply: a `vidfeat pca fit` .npz or YouTube-8M's PCA directory.",
    ),
    ("quantize", "Model", bool, "Store YouTube-8M uint8 codes (needs --pca)."),
    ("dtype", "Model", click.Choice(["float32", "float16"]), "Stored dtype (without --quantize)."),
    (
        "audio",
        "Model",
        _audio_backbones,
        "Also write a stream 'audio' from the audio track (vggish: 128-d per frame).",
    ),
    (
        "audio_weights",
        "Model",
        str,
        "VGGish weights: vggish-10086976.pth (PyTorch port) or the TF checkpoint as .npz.",
    ),
    (
        "audio_pca",
        "Model",
        str,
        "VGGish's vggish_pca_params.npz: PCA-whitened audio (uint8 with --quantize).",
    ),
    ("format", "Run", _backends, "Store format (default: by --out suffix, else zarr)."),
    ("device", "Run", DEVICE, "auto: cuda when available."),
    (
        "workers",
        "Run",
        click.IntRange(min=1),
        "Decode processes (they overlap with inference); with --engine ray, decode tasks in "
        "flight over the whole cluster, one CPU each.",
    ),
    (
        "batch_size",
        "Run",
        click.IntRange(min=1),
        "Frames per backbone batch (default: 32 on the CPU, 256 on CUDA, which fills a GPU).",
    ),
    ("shard", "Run", str, "I/N: this job takes shard I of N (0-based); jobs share one store."),
    (
        "commit_every",
        "Run",
        click.IntRange(min=1),
        "Commit finished videos in groups of N (or every 10 s); a kill loses at most one group.",
    ),
    (
        "engine",
        "Run",
        _engines,
        "local: this machine. ray: decode tasks over a Ray cluster feed embedding workers "
        "(docs/ray.md).",
    ),
    (
        "ray_address",
        "Run",
        str,
        "Ray cluster to join (host:port or auto; default $RAY_ADDRESS, else a new local one).",
    ),
    (
        "embed_workers",
        "Run",
        click.IntRange(min=1),
        "Ray embedding workers, one GPU each (default: every GPU of the cluster; 1 on CPU).",
    ),
    ("fail_fast", "Run", bool, "Stop at the first failed video (debugging)."),
    (
        "retry_failed",
        "Run",
        bool,
        "Retry every video recorded as failed (a plain rerun retries a crashed or timed-out "
        "video once).",
    ),
]
# Option names that differ from the ExtractConfig field.
_FLAGS = {"timeout_s": "timeout"}


def extract_options() -> list[click.Parameter]:
    """The options of `vidfeat extract`, with defaults from ``ExtractConfig``."""
    from vidfeat.config import ExtractConfig

    defaults = {f.name: f.default for f in dataclasses.fields(ExtractConfig)}
    params: list[click.Parameter] = []
    for name, section, kind, text in _EXTRACT_OPTIONS:
        flag = "--" + _FLAGS.get(name, name).replace("_", "-")
        default = defaults[name]
        if name == "shard":
            default = "/".join(map(str, default))
        if kind is bool:
            params.append(SectionOption([flag, name], is_flag=True, section=section, help=text))
            continue
        if inspect.isfunction(kind):  # a registry: its names are the choices
            kind = click.Choice(kind())
        params.append(
            SectionOption(
                [flag, name],
                type=kind,
                default=default,
                show_default=default is not None,
                section=section,
                help=text,
            )
        )
    return params


@main.command(cls=SectionedCommand)
@click.argument("manifest", type=click.Path())  # text: a URL must reach the config unfolded
@click.option(
    "--out",
    "-o",
    type=STORE,
    required=True,
    cls=SectionOption,
    section="Run",
    help="Store path: a directory (Zarr) or a .h5/.hdf5 file (HDF5), or a URL such as "
    "s3://bucket/feats.zarr.",
)
@deferred(extract_options)
@progress_option
def extract(manifest: str, out: Path, shard: str, progress: bool | None, **options: Any) -> None:
    """Extract per-frame features for every video in MANIFEST into --out.

    Reruns resume: videos already in the store are skipped by id (a warning names those whose
    labels, split or path the manifest now gives otherwise; the store keeps what it recorded),
    and a store written with other settings is refused. Failed videos are recorded with a
    reason (`vidfeat info`).

    \b
    Examples:
      vidfeat extract videos.csv --out feats.zarr
      vidfeat extract videos.csv --out feats.zarr --pca yt8m_pca/ --quantize
      vidfeat extract videos.csv --out feats.zarr --shard $SLURM_ARRAY_TASK_ID/64  # --array=0-63
      vidfeat extract videos.csv --out /shared/feats.zarr --engine ray --ray-address auto \\
        --workers 128
      vidfeat extract videos.csv --out feats.zarr --pca yt8m_pca/ --quantize \\
          --audio vggish --audio-weights vggish-10086976.pth --audio-pca vggish_pca_params.npz
    """
    from vidfeat.config import ExtractConfig, parse_shard
    from vidfeat.pipeline import extract as run_extract

    cfg = ExtractConfig(
        manifest=manifest,
        out=out,
        shard=parse_shard(shard),
        progress=show_progress(progress),
        **options,
    )
    check_device(cfg.device)
    summary = run_extract(cfg)
    earlier = f" ({summary.skipped_failed} of them failed)" if summary.skipped_failed else ""
    click.echo(
        f"{summary.ok} extracted, {summary.skipped} already done{earlier}, "
        f"{summary.failed} failed ({summary.frames} frames in {summary.seconds:.1f} s, "
        f"{summary.frames_per_s:.1f} frames/s) -> {out}"
    )
    if summary.no_audio:
        click.echo(f"  {summary.no_audio} extracted without an audio track (flagged no_audio)")
    echo_failures([f"{vid} ({status})" for vid, status in summary.failures.items()], out)
    if summary.failed or summary.skipped_failed:
        # A job resumed after an interruption still has the failures its first run recorded:
        # exit 1 means "some videos of this job failed", whichever run recorded them.
        if summary.skipped_failed:
            click.echo(
                f"  {summary.skipped_failed} recorded as failed by an earlier run "
                "(`vidfeat info` lists them; --retry-failed retries them)",
                err=True,
            )
        click.get_current_context().exit(EXIT_SOME_FAILED)


@main.command()
@click.argument("store", type=STORE)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--failures/--no-failures",
    default=True,
    show_default=True,
    help="List failed videos with their reasons.",
)
def info(store: Path | str, as_json: bool, failures: bool) -> None:
    """Summarise a feature store: settings, counts, sizes and failures.

    \b
    Examples:
      vidfeat info feats.zarr
      vidfeat info feats.h5 --json | jq .failed
    """
    from vidfeat.store.info import format_summary, store_summary

    summary = store_summary(store)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    click.echo(format_summary(summary, show_failures=failures))


@main.command()
@click.argument("store", type=STORE)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(store: Path | str, as_json: bool) -> None:
    """Read every chunk of STORE and check its tables; exit 2 naming each problem.

    Checks every checksum (schema 2), that no chunk is missing, the per-video table against
    the arrays (offsets, frame counts), unique ids per part, and finite feature values.

    \b
    Examples:
      vidfeat verify feats.zarr
      vidfeat verify feats.h5 --json | jq .problems
    """
    from vidfeat.store.verify import format_report, verify_store

    report = verify_store(store)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_report(report), err=not report.ok)
    if not report.ok:
        click.get_current_context().exit(EXIT_CANNOT_RUN)


def run() -> None:
    """The installed ``vidfeat`` script: ``main`` without the interpreter's slow teardown."""
    run_command(main)


if __name__ == "__main__":
    run()
