"""``extract(cfg)``: manifest -> decode -> sample -> preprocess -> backbone -> (PCA) -> store.

This module prepares a job (this shard's videos, the models, the store's identity) and hands it
to an engine (``vidfeat.engines``). Decoding, sampling and resizing run in isolated worker
processes (a hung or crashing decoder costs one video); the loop in ``vidfeat.extraction``
batches their frames through the backbone and writes whole videos only.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from vidfeat import __version__
from vidfeat.audio.features import AudioFeatures
from vidfeat.audio.postprocess import load_vggish_pca
from vidfeat.backbones.base import BackboneSpec, backbone_provenance
from vidfeat.backbones.runtimes import DEFAULT_RUNTIME
from vidfeat.config import ExtractConfig, shard_of
from vidfeat.errors import StoreError, VidfeatError
from vidfeat.manifest import ManifestEntry, read_manifest
from vidfeat.pca.apply import FeatureReduction
from vidfeat.store import StoreWriter, create_store, open_store
from vidfeat.store.schema import mismatch_error

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Failures of the decode worker rather than of the file, which may not happen again: a worker
# killed from outside (the OOM killer under memory pressure), a stall on a loaded machine. A
# plain rerun tries such a video once more; a second failure stays recorded (--retry-failed
# retries any failure). A damaged file fails the same way every time and is not retried.
RETRIED_ONCE = frozenset({"crashed", "timeout"})


@dataclasses.dataclass
class ExtractSummary:
    total: int = 0  # videos in this shard of the manifest
    skipped: int = 0  # already in the store
    skipped_failed: int = 0  # of those, recorded as failed by an earlier run (not retried)
    retried: int = 0  # recorded as failed by an earlier run, tried again (RETRIED_ONCE)
    ok: int = 0
    failed: int = 0
    frames: int = 0
    no_audio: int = 0  # extracted with --audio, but without an audio track
    seconds: float = 0.0  # whole job
    setup_s: float = 0.0  # manifest, weights, store; the rest is the decode+embed loop
    failures: dict[str, str] = dataclasses.field(default_factory=dict)  # video_id -> status

    @property
    def frames_per_s(self) -> float:
        """Throughput of the decode + embed loop (excluding setup)."""
        loop_s = self.seconds - self.setup_s
        return self.frames / loop_s if loop_s > 0 else 0.0


def store_attrs(cfg: ExtractConfig, spec: BackboneSpec, reduction: FeatureReduction) -> dict:
    """Everything that determines the stored features (the store refuses to mix others).

    The decoder is part of it: the two agree on which frames and on 8-bit pixels, but not
    exactly on 10-bit 4:2:0 colour edges, so one store never mixes both. So are the runtime
    and precision the backbone ran with.
    """
    return {
        **backbone_provenance(spec, cfg.runtime, cfg.precision),
        "fps": cfg.fps,
        "decoder": cfg.decoder,
        "max_frames": cfg.max_frames,
        "sampling": (
            "last frame with pts <= k/fps + half a time-base tick from the first frame, "
            "k < fps * duration"
        ),
        **reduction.attrs(),
        "vidfeat_version": __version__,
        "command": " ".join(sys.argv),
    }


def resume_attrs(cfg: ExtractConfig, attrs: dict) -> dict:
    """``attrs`` for resuming ``cfg.out``. A store made before a key joined the identity
    resumes as it was when this run matches what the store implied: ``decoder`` when every
    video in it came from this run's decoder, ``runtime`` when this run is eager (the only
    runtime before runtimes were recorded)."""
    try:
        reader = open_store(cfg.out, cfg.format)
    except StoreError:
        return attrs  # no store yet; or a broken one, which create_store reports
    with reader:
        stored = set(reader.attrs)
        used = set() if "decoder" in stored else set(reader.videos["decoder"]) - {""}
    implied = set()
    if "decoder" not in stored and used <= {cfg.decoder}:
        implied.add("decoder")
    if "runtime" not in stored and cfg.runtime == DEFAULT_RUNTIME:
        implied.add("runtime")
    return {k: v for k, v in attrs.items() if k not in implied}


@dataclasses.dataclass
class ExtractJob:
    """What every engine starts from: this shard's videos, the models and the store settings.

    ``backbone`` (and ``audio``'s) are loaded on ``device`` at ``precision`` as given to
    :func:`prepare`; an engine whose workers load their own needs them only for their specs.
    """

    cfg: ExtractConfig
    entries: list[ManifestEntry]
    backbone: Any
    reduction: FeatureReduction
    audio: AudioFeatures | None
    store_settings: dict[str, Any]  # create_store keywords, except part and commit_every
    summary: ExtractSummary
    started: float

    def open_writer(self, part: str) -> StoreWriter:
        return create_store(
            self.cfg.out, **self.store_settings, part=part, commit_every=self.cfg.commit_every
        )

    def resume(self, ok: set[str], failures: Mapping[str, tuple[str, int]]) -> list[ManifestEntry]:
        """The entries still to extract, given the ids the store holds as extracted (``ok``)
        and as failed (``failures``: id -> (its latest status, how many failed attempts are
        recorded)); counts the rest in the summary and logs it."""
        if self.cfg.retry_failed:
            failed: set[str] = set()
        else:
            failed = {
                vid
                for vid, (status, attempts) in failures.items()
                if status not in RETRIED_ONCE or attempts > 1
            }
        done = ok | failed
        todo = [e for e in self.entries if e.video_id not in done]
        self.summary.skipped = len(self.entries) - len(todo)
        self.summary.skipped_failed = sum(e.video_id in failed for e in self.entries)
        self.summary.retried = sum(e.video_id in failures for e in todo)
        if self.summary.retried and not self.cfg.retry_failed:
            log.info(
                "trying again %d videos whose earlier failure may not recur (%s); "
                "a second such failure stays recorded",
                self.summary.retried,
                ", ".join(sorted(RETRIED_ONCE)),
            )
        if self.summary.skipped:
            log.info(
                "resuming: %d of %d videos already in %s",
                self.summary.skipped,
                self.summary.total,
                self.cfg.out,
            )
            self._warn_changed(done)
        # Once the manifest, the models and the store's settings have passed their checks.
        log.info(
            "extracting %d videos with %s (runtime %s, precision %s)",
            len(todo),
            self.cfg.backbone,
            self.cfg.runtime,
            self.cfg.precision,
        )
        return todo

    def _warn_changed(self, done: set[str]) -> None:
        """Warn when the manifest now says otherwise of videos the store has: they are skipped
        by id, so the store keeps what it recorded (a label fixed in the manifest is not)."""
        try:
            with open_store(self.cfg.out, self.cfg.format) as reader:
                videos = reader.videos
        except VidfeatError:
            return  # nothing committed yet to compare with
        changes = manifest_changes([e for e in self.entries if e.video_id in done], videos)
        if changes:
            log.warning(
                "%d video(s) already in %s differ from the manifest (e.g. %s); they are not "
                "extracted again, so the store keeps what it recorded: extract into a new store "
                "to take the manifest's (heads train --split-file overrides splits)",
                len(changes),
                self.cfg.out,
                "; ".join(changes[:3]),
            )


def manifest_changes(entries: list[ManifestEntry], videos: pd.DataFrame) -> list[str]:
    """For each entry whose store row (``videos``, a reader's table) records other labels,
    split, group or path than the entry, one line saying what differs."""
    rows = videos.set_index("video_id")  # a reader's table: one row per video
    changes = []
    for e in entries:
        if e.video_id not in rows.index:
            continue
        row = rows.loc[e.video_id]
        now = {"labels": e.labels, "split": e.split, "group": e.group, "path": str(e.path)}
        was = {
            "labels": tuple(row["labels"]),
            "split": str(row.get("split", "") or ""),
            "group": str(row.get("group", "") or ""),
            "path": str(row.get("source_path", "") or ""),
        }
        diff = [f"{k} {was[k]!r} -> {now[k]!r}" for k in now if was[k] != now[k]]
        if diff:
            changes.append(f"{e.video_id!r}: {', '.join(diff)}")
    return changes


def prepare(
    cfg: ExtractConfig,
    device: str | None = None,
    precision: str | None = None,
    runtime: str | None = None,
) -> ExtractJob:
    """Read the manifest (this shard of it), load the models and PCA, settle the store.

    ``device``, ``precision`` and ``runtime`` override the config's for the models loaded here
    (the store attrs always record the config's)."""
    from vidfeat.backbones import create_backbone

    t0 = time.monotonic()
    entries = read_manifest(cfg.manifest)
    i, n = cfg.shard
    entries = [e for e in entries if shard_of(e.video_id, n) == i]
    reduction = FeatureReduction.from_options(cfg.pca, cfg.quantize)
    # First: missing audio weights stop before the slow load.
    audio = audio_features(cfg, device or cfg.device, precision or cfg.precision)
    backbone = create_backbone(
        cfg.backbone,
        weights=cfg.weights,
        device=device or cfg.device,
        precision=precision or cfg.precision,
        runtime=runtime or cfg.runtime,
    )
    dim = reduction.output_dim(backbone.spec.feature_dim)
    settings = {
        "format": cfg.format,
        "attrs": resume_attrs(cfg, store_attrs(cfg, backbone.spec, reduction)),
        **_stream_options(dim, reduction.dtype or cfg.dtype, reduction.quantization, audio),
    }
    summary = ExtractSummary(total=len(entries))
    return ExtractJob(cfg, entries, backbone, reduction, audio, settings, summary, t0)


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Run (or resume) one extraction job with ``cfg.engine`` (vidfeat.engines). Raises
    VidfeatError subclasses on bad input."""
    from vidfeat.engines import ENGINES
    from vidfeat.store import check_store_path

    check_store_path(cfg.out, cfg.format)  # before any backbone loads
    t0 = time.monotonic()
    summary = ENGINES.get(cfg.engine)(settle_config_precision(cfg))
    summary.seconds = time.monotonic() - t0
    return summary


def settle_config_precision(cfg: ExtractConfig) -> ExtractConfig:
    """``cfg`` with ``precision="auto"`` replaced by what runs: the store's own precision when
    resuming one (a store begun under an older default, or on another device, carries on as
    it began), else the runtime's default on the device the backbone runs on. The store
    records, and a resume compares, that precision."""
    from vidfeat.backbones.runtimes import AUTO_PRECISION, settle_precision
    from vidfeat.store import read_store_attrs

    if cfg.precision != AUTO_PRECISION:
        return cfg
    attrs = read_store_attrs(cfg.out, cfg.format) or {}
    stored = attrs.get("precision")
    if stored is not None:
        runtime = attrs.get("runtime")
        if runtime is not None and runtime != cfg.runtime:
            # Said now, by name: checked later, the store's precision would be refused as
            # one this runtime cannot run, which the user never asked for.
            raise mismatch_error(cfg.out, {"runtime": (runtime, cfg.runtime)})
        precision, why = str(stored), "as the store was begun"
    elif (device_type := _backbone_device_type(cfg)) is None:
        # The engine's workers pick their devices later (a Ray cluster's GPUs, else CPUs);
        # fp32 is the one precision every device runs.
        precision, why = "fp32", f"the {cfg.engine} workers' devices are not known yet"
    else:
        precision = settle_precision(cfg.runtime, device_type, cfg.precision)
        why = f"the default on {device_type}"
    # Said at DEBUG (-v): settled before the manifest is read, an INFO line here would come
    # before any error in the manifest or the options. ExtractJob.resume names the precision
    # once they have passed.
    log.debug("precision auto: %s (%s)", precision, why)
    return dataclasses.replace(cfg, precision=precision)


def _backbone_device_type(cfg: ExtractConfig) -> str | None:
    """ "cpu" or "cuda" for the backbone of ``cfg``'s job, or None when it is not known here:
    an engine whose workers pick their devices, with ``device="auto"``."""
    from vidfeat.device import resolve_device
    from vidfeat.engines import runs_backbone_here

    if runs_backbone_here(cfg.engine):
        return resolve_device(cfg.device).type
    if cfg.device == "auto":
        return None
    return "cuda" if cfg.device.startswith("cuda") else "cpu"


def audio_features(cfg: ExtractConfig, device: str, precision: str) -> AudioFeatures | None:
    """The audio stream's network and postprocessing, or None without --audio."""
    if cfg.audio is None:
        return None
    from vidfeat.backbones.audio import create_audio_backbone

    backbone = create_audio_backbone(
        cfg.audio, weights=cfg.audio_weights, device=device, precision=precision
    )
    pca = load_vggish_pca(cfg.audio_pca) if cfg.audio_pca else None
    return AudioFeatures(backbone, pca, quantize=cfg.quantize)


def _stream_options(
    dim: int, dtype: str, quantization: dict | None, audio: AudioFeatures | None
) -> dict[str, Any]:
    """``create_store`` keywords: the rgb stream alone as before, or rgb and audio."""
    if audio is None:
        return {"dim": dim, "dtype": dtype, "quantization": quantization}
    rgb = {"dim": dim, "dtype": dtype, "quantization": quantization}
    return {"streams": {"rgb": rgb, "audio": audio.stream_spec()}}


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        unit="video",
        disable=not enabled,
        dynamic_ncols=True,
        desc="extract",
        smoothing=0.1,
    )
    try:
        yield bar
    finally:
        bar.close()
