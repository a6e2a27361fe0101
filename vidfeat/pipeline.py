"""``extract(cfg)``: manifest -> decode -> sample -> preprocess -> backbone -> (PCA) -> store.

Decoding, sampling and resizing run in isolated worker processes (a hung or crashing decoder
costs one video); the parent batches preprocessed frames from all videos in flight through the
backbone, so decode overlaps inference and batches stay full. A video is written only when all
its frames are embedded, and the store commits whole videos only.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from vidfeat import __version__
from vidfeat.audio.features import AudioFeatures
from vidfeat.audio.postprocess import load_vggish_pca
from vidfeat.backbones.base import BackboneSpec, backbone_provenance
from vidfeat.backbones.runtimes import DEFAULT_RUNTIME
from vidfeat.config import ExtractConfig, shard_of
from vidfeat.decode.pool import DecodePool, FramesChunk, VideoDone, VideoFailed
from vidfeat.errors import DecodeError, StoreError
from vidfeat.manifest import ManifestEntry, read_manifest
from vidfeat.pca.apply import FeatureReduction
from vidfeat.preprocess import preprocess_frame
from vidfeat.store import StoreWriter, create_store, open_store
from vidfeat.store.base import NO_AUDIO_NOTE

if TYPE_CHECKING:  # torch is imported when the first batch is embedded, not before
    from vidfeat.staging import BatchStaging, FeaturesInFlight, Owners

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExtractSummary:
    total: int = 0  # videos in this shard of the manifest
    skipped: int = 0  # already in the store
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
        "sampling": "last frame with pts <= k/fps from the first frame, k < fps * duration",
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
class _Video:
    entry: ManifestEntry
    chunks: list[np.ndarray] = dataclasses.field(default_factory=list)  # (n, D) float32
    timestamps: list[np.ndarray] = dataclasses.field(default_factory=list)
    embedded: int = 0
    done: VideoDone | None = None


class _Extraction:
    """The parent's event loop: feed the pool, batch frames, embed, write whole videos."""

    def __init__(
        self,
        cfg: ExtractConfig,
        backbone: object,
        reduction: FeatureReduction,
        writer: StoreWriter,
        summary: ExtractSummary,
        audio: AudioFeatures | None = None,
    ) -> None:
        self.cfg, self.backbone, self.reduction = cfg, backbone, reduction
        self.writer, self.summary, self.audio = writer, summary, audio
        self.videos: dict[str, _Video] = {}
        # Frames waiting for the backbone: (video_id, (n, S, S, 3) float32 chunk).
        self.pending: list[tuple[str, np.ndarray]] = []
        self.pending_frames = 0
        self.staging: BatchStaging | None = None  # made on the first batch (spec, device)
        self.in_flight: FeaturesInFlight | None = None  # the last batch's features
        self.failed_since_update = 0  # failures not yet counted by the progress bar
        self.started = time.monotonic()

    def run(self, todo: list[ManifestEntry], progress: Any) -> None:
        transform = functools.partial(preprocess_frame, spec=self.backbone.spec)
        with DecodePool(
            num_workers=self.cfg.workers,
            decoder=self.cfg.decoder,
            fps=self.cfg.fps_fraction,
            max_frames=self.cfg.max_frames,
            frame_transform=transform,
            timeout_s=self.cfg.timeout_s,
            audio=None if self.audio is None else self.audio.backbone.spec.front_end,
        ) as pool:
            for entry in todo:
                self.add(entry)
            # Only full batches are embedded inside the loop: workers keep decoding meanwhile,
            # and the last partial batch is embedded once the pool has drained.
            for event in pool.map((e.video_id, str(e.path)) for e in todo):
                self.handle(event)
                while self.pending_frames >= self.cfg.batch_size:
                    self.embed_batch()
                self.tick(progress)
            self.drain()
            self.tick(progress)

    def add(self, entry: ManifestEntry) -> None:
        """Expect events for ``entry``."""
        self.videos[entry.video_id] = _Video(entry)

    def drain(self) -> None:
        """Embed the last partial batch: every video whose frames all arrived is then ready."""
        while self.pending:
            self.embed_batch()
        self._collect(None)

    def tick(self, progress: Any) -> None:
        """Write finished videos and show videos/s (tqdm), frames/s and failures."""
        finished = self.finish_ready()
        if finished:
            elapsed = max(1e-9, time.monotonic() - self.started)
            progress.set_postfix(
                frames_s=f"{self.summary.frames / elapsed:.1f}",
                failed=self.summary.failed,
                refresh=False,
            )
            progress.update(finished)

    def handle(self, event: object) -> None:
        if isinstance(event, FramesChunk):
            video = self.videos[event.job_id]
            video.timestamps.append(np.asarray(event.timestamps_s, dtype=np.float64))
            self.pending.append((event.job_id, event.frames))
            self.pending_frames += len(event.frames)
        elif isinstance(event, VideoDone):
            self.videos[event.job_id].done = event
        elif isinstance(event, VideoFailed):
            self.fail(event.job_id, event.status, event.reason)

    def embed_batch(self) -> None:
        """Launch the next batch, then hand out the previous batch's features: on CUDA their
        copy to the host overlaps this batch's work (``vidfeat.staging``)."""
        import torch

        from vidfeat.staging import BatchStaging, FeaturesInFlight

        parts, owners = self._take_batch()
        if self.staging is None:
            device = getattr(self.backbone, "device", None) or torch.device("cpu")
            self.staging = BatchStaging(self.cfg.batch_size, self.backbone.spec.input_size, device)
        # (N, S, S, 3) HWC float32 from the workers is channels_last NCHW after a permute.
        features = self.backbone.embed_preprocessed(self.staging.fill(parts))
        self.staging.launched()
        self._collect(FeaturesInFlight.start(features, owners))

    def _collect(self, launched: FeaturesInFlight | None) -> None:
        """Hand the batch in flight's features to their videos, and keep ``launched`` as the
        next one in flight."""
        previous, self.in_flight = self.in_flight, launched
        if previous is None:
            return
        feats = previous.ready()
        start = 0
        for video_id, n in previous.owners:
            video = self.videos.get(video_id)
            if video is not None:  # None: it failed since its frames were batched
                video.chunks.append(feats[start : start + n])
                video.embedded += n
            start += n

    def _take_batch(self) -> tuple[list[np.ndarray], Owners]:
        parts, owners, n = [], [], 0
        while self.pending and n < self.cfg.batch_size:
            video_id, frames = self.pending[0]
            take = min(len(frames), self.cfg.batch_size - n)
            parts.append(frames[:take])
            owners.append((video_id, take))
            n += take
            if take == len(frames):
                self.pending.pop(0)
            else:
                self.pending[0] = (video_id, frames[take:])
        self.pending_frames -= n
        return parts, owners

    def finish_ready(self) -> int:
        """Write every video whose frames are all embedded; returns videos finished."""
        ready = [
            v
            for v in self.videos.values()
            if v.done is not None and v.embedded >= int(v.done.info["n_frames"])
        ]
        for video in ready:
            del self.videos[video.entry.video_id]
            self.write(video)
        finished, self.failed_since_update = len(ready) + self.failed_since_update, 0
        return finished

    def write(self, video: _Video) -> None:
        e, info = video.entry, video.done.info
        feats = np.concatenate(video.chunks, axis=0)
        features: np.ndarray | dict[str, np.ndarray] = self.reduction(feats)
        note = ""
        if self.audio is not None:
            has_audio = bool(info["has_audio"])
            features = {"rgb": features, "audio": self.audio(video.done.audio_examples, has_audio)}
            note = "" if has_audio else NO_AUDIO_NOTE
            self.summary.no_audio += not has_audio
        self.writer.write(
            e.video_id,
            features,
            note=note,
            labels=e.labels,
            timestamps=np.concatenate(video.timestamps),
            source_path=str(e.path),
            duration_s=info.get("duration_s"),
            native_fps=info.get("native_fps"),
            decoder=info.get("decoder", self.cfg.decoder),
            split=e.split,
            group=e.group,
        )
        self.summary.ok += 1
        self.summary.frames += len(feats)

    def fail(self, video_id: str, status: str, reason: str) -> None:
        video = self.videos.pop(video_id)
        # Drop its frames still waiting for the backbone: nothing partial is stored.
        self.pending = [(v, f) for v, f in self.pending if v != video_id]
        self.pending_frames = sum(len(f) for _, f in self.pending)
        e = video.entry
        self.writer.write_failure(
            video_id,
            status,
            reason,
            labels=e.labels,
            source_path=str(e.path),
            decoder=self.cfg.decoder,
            split=e.split,
            group=e.group,
        )
        self.summary.failed += 1
        self.summary.failures[video_id] = status
        self.failed_since_update += 1
        log.warning("%s failed (%s): %s", video_id, status, reason)
        if self.cfg.fail_fast:
            raise DecodeError(f"{video_id}: {reason}", status=status)


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
    stored = (read_store_attrs(cfg.out, cfg.format) or {}).get("precision")
    if stored is not None:
        precision, why = str(stored), "as the store was begun"
    elif (device_type := _backbone_device_type(cfg)) is None:
        # The engine's workers pick their devices later (a Ray cluster's GPUs, else CPUs);
        # fp32 is the one precision every device runs.
        precision, why = "fp32", f"the {cfg.engine} workers' devices are not known yet"
    else:
        precision = settle_precision(cfg.runtime, device_type, cfg.precision)
        why = f"the default on {device_type}"
    log.info("precision auto: %s (%s)", precision, why)
    return dataclasses.replace(cfg, precision=precision)


def _backbone_device_type(cfg: ExtractConfig) -> str | None:
    """ "cpu" or "cuda" for the backbone of ``cfg``'s job, or None when it is not known here:
    another engine with ``device="auto"``. Only the local engine resolves "auto" on this
    machine, where its backbone runs."""
    from vidfeat.backbones._module import resolve_device

    if cfg.engine == "local":
        return resolve_device(cfg.device).type
    if cfg.device == "auto":
        return None
    return "cuda" if cfg.device.startswith("cuda") else "cpu"


def log_resume(summary: ExtractSummary, out: object) -> None:
    if summary.skipped:
        log.info("resuming: %d of %d videos already in %s", summary.skipped, summary.total, out)


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
