"""The extraction loop every engine runs: decoded frames in, whole videos out to the store.

Decode workers (``vidfeat.decode.pool``) stream preprocessed frames of several videos at once;
the loop batches them across videos through the backbone, so decode overlaps inference and
batches stay full. A video is handed to the (PCA) reduction and the store writer only when all
its frames are embedded, and a failed video's frames still waiting are dropped: the store holds
whole videos only. The local engine feeds it from a pool on this machine; a Ray embedding actor
feeds it decode results from the cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from vidfeat.audio.features import AudioFeatures
from vidfeat.config import ExtractConfig
from vidfeat.decode.pool import DecodePool, FramesChunk, VideoDone, VideoFailed
from vidfeat.errors import ConfigError, StoppedAtFailure
from vidfeat.manifest import ManifestEntry
from vidfeat.pca.apply import FeatureReduction
from vidfeat.pipeline import ExtractSummary
from vidfeat.preprocess import preprocess_frame
from vidfeat.store import StoreWriter
from vidfeat.store.base import NO_AUDIO_NOTE

if TYPE_CHECKING:  # torch is imported when the first batch is embedded, not before
    from vidfeat.staging import BatchStaging, FeaturesInFlight, Owners

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Video:
    entry: ManifestEntry
    chunks: list[np.ndarray] = dataclasses.field(default_factory=list)  # (n, D) float32
    timestamps: list[np.ndarray] = dataclasses.field(default_factory=list)
    embedded: int = 0
    done: VideoDone | None = None


class Extraction:
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
        from vidfeat.device import default_batch_size  # torch: the parent's import only

        device = getattr(backbone, "device", None)
        self.batch_size = default_batch_size(device) if cfg.batch_size is None else cfg.batch_size
        # Videos expected, until their first event; then the ones in flight (a few per decode
        # worker). Each event costs time in the videos in flight, never in the videos of the
        # manifest (a scan of every expected video per event was quadratic in the manifest:
        # 4x slower at a million rows).
        self.expected: dict[str, ManifestEntry] = {}
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
            jobs = ((e.video_id, str(e.path)) for e in todo)
            # Idle waits keep the commit timer honest: finished videos wait at most about
            # commit_seconds for their commit, not for the next video to finish.
            for event in pool.map(jobs, on_idle=self.writer.commit_if_due):
                self.handle(event)
                while self.pending_frames >= self.batch_size:
                    self.embed_batch()
                self.tick(progress)
            self.drain()
            self.tick(progress)

    def add(self, entry: ManifestEntry) -> None:
        """Expect events for ``entry``."""
        self.expected[entry.video_id] = entry

    def _video(self, video_id: str) -> _Video:
        """The video in flight, begun at its first event."""
        video = self.videos.get(video_id)
        if video is None:
            video = self.videos[video_id] = _Video(self.expected.pop(video_id))
        return video

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
            video = self._video(event.job_id)
            video.timestamps.append(np.asarray(event.timestamps_s, dtype=np.float64))
            self.pending.append((event.job_id, event.frames))
            self.pending_frames += len(event.frames)
        elif isinstance(event, VideoDone):
            self._video(event.job_id).done = event
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
            self.staging = BatchStaging(self.batch_size, self.backbone.spec.input_size, device)
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
        while self.pending and n < self.batch_size:
            video_id, frames = self.pending[0]
            take = min(len(frames), self.batch_size - n)
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
        try:
            features: np.ndarray | dict[str, np.ndarray] = self.reduction(feats)
        except ConfigError as exc:  # NaN from the backbone, say: name the video
            raise ConfigError(f"video {e.video_id!r}: {exc}") from exc
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
        video = self.videos.pop(video_id, None)
        # Drop its frames still waiting for the backbone: nothing partial is stored.
        self.pending = [(v, f) for v, f in self.pending if v != video_id]
        self.pending_frames = sum(len(f) for _, f in self.pending)
        e = video.entry if video is not None else self.expected.pop(video_id)
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
            raise StoppedAtFailure(f"{video_id}: {reason}", status=status)
