"""`vidfeat pca fit|apply`: YouTube-8M-style whitened PCA and 8-bit quantization of a store.

Errors are raised as ``VidfeatError`` subclasses and left to propagate: the main ``vidfeat``
command (``vidfeat_cli.core.CliGroup``) turns them into a one-line message and exit code 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from tqdm import tqdm

from vidfeat.pca import apply_pca_to_store, fit_pca, load_pca
from vidfeat.pca.fit import DEFAULT_BATCH_FRAMES, DEFAULT_SAMPLE_FRAMES
from vidfeat.store import open_store
from vidfeat.store.base import BACKENDS
from vidfeat_cli.core import progress_option, show_progress
from vidfeat_cli.options import STORE


class _Bar:
    """A tqdm bar over videos, created on the first progress call (when the total is known)."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc = desc
        self.enabled = enabled
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.desc, unit="video", disable=not self.enabled)
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def _stream_option(text: str) -> Callable[[Callable], Callable]:
    return click.option(
        "--stream",
        default=None,
        help=f"{text} (e.g. rgb) [default: the store's only stream; needed with several].",
    )


@click.group("pca")
def pca() -> None:
    """Reduce features to YouTube-8M's format: whitened PCA, then optional uint8 codes.

    \b
    Examples:
      vidfeat pca fit feats.zarr --dim 1024 --out pca.npz
      vidfeat pca apply feats.zarr --pca pca.npz --out feats-1024.zarr --quantize
    """


@pca.command("fit")
@click.argument("store", type=STORE)
@click.option(
    "--dim",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Number of components to keep.",
)
@click.option(
    "--sample-frames",
    type=click.IntRange(min=2),
    default=DEFAULT_SAMPLE_FRAMES,
    show_default=True,
    help="Frames drawn (uniformly, without replacement) to fit on.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the frame sample.")
@click.option(
    "--batch-frames",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_FRAMES,
    show_default=True,
    help="Frames per covariance update (bounds memory).",
)
@click.option(
    "--out",
    "-o",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the PCA (.npz).",
)
@_stream_option("The stream to fit on")
@progress_option
def fit(
    store: Path,
    dim: int,
    sample_frames: int,
    seed: int,
    batch_frames: int,
    out_path: Path,
    stream: str | None,
    progress: bool | None,
) -> None:
    """Fit a whitened PCA on a reproducible sample of STORE's frames.

    \b
    Example:
      vidfeat pca fit features.zarr --dim 1024 --sample-frames 200000 --out pca.npz
    """
    with open_store(store) as reader, _Bar("fitting PCA", show_progress(progress)) as bar:
        transform = fit_pca(
            reader,
            dim,
            sample_frames=sample_frames,
            seed=seed,
            batch_frames=batch_frames,
            progress=bar,
            stream=stream,
        )
    transform.save(out_path)
    info = transform.fit_info
    click.echo(
        f"PCA {transform.input_dim} -> {transform.output_dim} fitted on {info['n_frames']} frames "
        f"of {info['n_videos']} videos; keeps {transform.variance_kept:.2%} of the variance"
    )
    click.echo(f"wrote {out_path} (sha256 {transform.sha256[:16]})")


@pca.command("apply")
@click.argument("store", type=STORE)
@click.option(
    "--pca",
    "pca_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Our .npz, or a directory with YouTube-8M's mean.npy, eigenvals.npy, eigenvecs.npy.",
)
@click.option(
    "--out",
    "-o",
    "out_path",
    required=True,
    type=STORE,
    help="The new store (rerun the same command to resume it).",
)
@click.option(
    "--quantize",
    is_flag=True,
    help="Store uint8 codes of values clipped to [-2, 2], as YouTube-8M does.",
)
@click.option(
    "--dim",
    type=click.IntRange(min=1),
    default=None,
    help="Keep only the leading components [default: all; 1024 for YouTube-8M's].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(BACKENDS.names()),
    default=None,
    help="Output format [default: from the --out suffix, else zarr].",
)
@_stream_option("The stream to reduce; the store's other streams are copied as they are")
@progress_option
def apply(
    store: Path,
    pca_path: Path,
    out_path: Path,
    quantize: bool,
    dim: int | None,
    fmt: str | None,
    stream: str | None,
    progress: bool | None,
) -> None:
    """Write a new store holding STORE's features reduced by a PCA.

    \b
    Examples:
      vidfeat pca apply features.zarr --pca pca.npz --out features-1024.zarr --quantize
      vidfeat pca apply features.zarr --pca yt8m_pca/ --out yt8m-format.zarr --quantize
    """
    transform = load_pca(pca_path, dim=dim)
    with _Bar("applying PCA", show_progress(progress)) as bar:
        summary = apply_pca_to_store(
            store,
            transform,
            out_path,
            quantize=quantize,
            format=fmt,
            progress=bar,
            stream=stream,
        )
    click.echo(
        f"wrote {summary['written']} videos ({summary['frames']} frames, {summary['dim']}-d "
        f"{summary['dtype']}) and {summary['failures_copied']} failures to {out_path}; "
        f"{summary['skipped']} already there"
    )
