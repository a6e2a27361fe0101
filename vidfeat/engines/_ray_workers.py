"""What runs inside Ray workers: decode tasks and embedding actors. No Ray import here.

A decode task runs in a Ray worker process, but decodes in a child process of it: the same
``DecodePool`` as the local engine, one decode process per Ray worker, kept between tasks. A
decoder that hangs in native code or crashes costs that video (``timeout`` / ``crashed``) and
a fresh child, never the Ray worker, and the wall-clock limit is the local one.

An embedding actor is the local engine's loop (``vidfeat.extraction.Extraction``) fed by
decode results instead of a local pool. Each actor incarnation writes its own store part, named
at random when it starts, so a restarted or duplicated actor never shares a part with another
writer.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import time
import uuid
from fractions import Fraction
from typing import Any

from vidfeat.allocator import keep_freed_memory
from vidfeat.config import ExtractConfig
from vidfeat.decode.pool import DecodePool, PoolEvent
from vidfeat.decode.worker import FrameTransform
from vidfeat.errors import EngineError, VidfeatError
from vidfeat.manifest import ManifestEntry

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """What a decode task needs: the local pool's settings."""

    decoder: str
    fps: Fraction
    max_frames: int
    frame_transform: FrameTransform | None
    timeout_s: float
    extra_modules: tuple[str, ...] = ()  # as DecodePool's: modules registering decoders
    audio: Any = None  # as DecodePool's: the audio front end (LogMelParams) with --audio


@dataclasses.dataclass(frozen=True)
class VideoReport:
    """A video whose row (ok or failure) is committed in an actor's part."""

    video_id: str
    status: str
    reason: str
    n_frames: int
    no_audio: bool = False  # extracted with --audio from a file without an audio track


# One pool per Ray worker process, reused by every task it runs with the same settings:
# starting a decode process costs far more than decoding a short clip.
_pool: tuple[bytes, DecodePool] | None = None


def _decode_pool(settings: DecodeSettings) -> DecodePool:
    global _pool
    key = pickle.dumps(settings)
    if _pool is not None and _pool[0] == key:
        return _pool[1]
    if _pool is not None:
        _pool[1].close()
    pool = DecodePool(
        num_workers=1,
        decoder=settings.decoder,
        fps=settings.fps,
        max_frames=settings.max_frames,
        frame_transform=settings.frame_transform,
        timeout_s=settings.timeout_s,
        extra_modules=settings.extra_modules,
        audio=settings.audio,
        decode_threads=1,  # the task holds one CPU of the cluster
    )
    _pool = (key, pool)
    return pool


def decode_video(settings: DecodeSettings, video_id: str, path: str) -> tuple[int, list]:
    """Every event of one video (frame chunks then done, or a failure), and their count.

    Two return values, so the coordinator can wait on the small one while the frames go
    from this node straight to an embedding actor.
    """
    events: list[PoolEvent] = list(_decode_pool(settings).map([(video_id, path)]))
    return len(events), events


def _extraction_class() -> type:
    # pipeline imports the store and PCA; decode tasks never need them.
    from vidfeat.extraction import Extraction

    class RecordingExtraction(Extraction):
        """The local loop, remembering what it handed to the writer (to report commits)."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.written: dict[str, tuple[str, str, int, bool]] = {}

        def write(self, video: Any) -> None:
            no_audio = self.summary.no_audio
            super().write(video)
            n = sum(len(c) for c in video.chunks)
            self.written[video.entry.video_id] = ("ok", "", n, self.summary.no_audio > no_audio)

        def fail(self, video_id: str, status: str, reason: str) -> None:
            self.written[video_id] = (status, reason, 0, False)
            super().fail(video_id, status, reason)

    return RecordingExtraction


def store_view(cfg: ExtractConfig) -> dict | str:
    """The creation record of the store at ``cfg.out`` as this process sees it, or why it
    sees none. A Ray worker reads and writes with its own environment (the one `ray start`
    ran with): another object-store endpoint or credentials, or a path not shared, make it
    see another store than the driver's, or none."""
    from vidfeat.store import read_store_created

    try:
        created = read_store_created(cfg.out, cfg.format)
    except Exception as exc:  # whatever this environment raises is the answer
        return f"cannot read it ({type(exc).__name__}: {exc})"
    return created if created is not None else "no store there"


class EmbedWorker:
    """Embeds decoded videos and writes them into its own part (a Ray actor)."""

    def __init__(
        self,
        cfg: ExtractConfig,
        store_settings: dict,
        device: str,
        expected_store: dict | str | None = None,
    ) -> None:
        import torch

        from vidfeat.backbones import create_backbone
        from vidfeat.pca.apply import FeatureReduction
        from vidfeat.pipeline import ExtractSummary, audio_features

        if device == "cpu":
            torch.set_num_threads(1)  # the actor holds one CPU of the cluster
        keep_freed_memory()  # the actor's process is its own: vidfeat.allocator
        self.cfg, self.store_settings = cfg, store_settings
        # The store the driver sees: a worker started in a dead one's place (no `ready` check
        # by the driver) checks it before writing.
        self.expected_store = expected_store
        # Named by start time, then at random: readers show a video's most recent failure by
        # part-name order, so a rerun's parts must sort after the earlier runs'.
        self.part = f"ray-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self.backbone = create_backbone(
            cfg.backbone,
            weights=cfg.weights,
            device=device,
            precision=cfg.precision,
            runtime=cfg.runtime,
        )
        self.reduction = FeatureReduction.from_options(cfg.pca, cfg.quantize)
        self.audio = audio_features(cfg, device, cfg.precision)
        self.summary = ExtractSummary()
        self.writer: Any = None
        self.extraction: Any = None
        self._stored_ok: set[str] = set()  # ok videos in the store when the part was opened

    def ready(self) -> tuple[str, dict | str]:
        """Answers once the model is loaded: the part this worker will write, and the store's
        creation record as this worker sees it (or why it sees none)."""
        return self.part, store_view(self.cfg)

    def _job(self) -> Any:
        if self.extraction is None:  # the part is created with the first video, not before
            from vidfeat.store import create_store

            seen = store_view(self.cfg)
            if self.expected_store is not None and seen != self.expected_store:
                raise EngineError(f"this worker sees another store at {self.cfg.out}: {seen}")

            self.writer = create_store(
                self.cfg.out,
                **self.store_settings,
                part=self.part,
                commit_every=self.cfg.commit_every,
            )
            cls = _extraction_class()
            self.extraction = cls(
                self.cfg, self.backbone, self.reduction, self.writer, self.summary, self.audio
            )
            self._stored_ok = self.writer.committed_ids("ok")
        return self.extraction

    def add(self, entry: ManifestEntry, events: list[PoolEvent]) -> list[VideoReport]:
        """Take one decoded video; returns every video committed since the last call."""
        job = self._job()
        if entry.video_id in self._stored_ok:
            # A worker that died right after committing it never reported it, so the driver
            # queued it again: it is done, and writing it again would be refused.
            return [*self._committed(), self._already_stored(entry.video_id)]
        job.add(entry)
        try:
            for event in events:
                job.handle(event)
            while job.pending_frames >= job.batch_size:
                job.embed_batch()
            job.finish_ready()
        except VidfeatError:  # --fail-fast: commit what is whole, as the local engine does
            self.writer.close()
            raise
        return self._committed()

    def finish(self, drain: bool = True) -> list[VideoReport]:
        """Embed what is left (unless ``drain`` is False), commit and close the part."""
        if self.extraction is not None:
            if drain:
                self.extraction.drain()
                self.extraction.finish_ready()
            self.writer.close()
        return self._committed()

    def _already_stored(self, video_id: str) -> VideoReport:
        from vidfeat.store import open_store

        with open_store(self.cfg.out, self.cfg.format) as reader:
            row = reader.videos.set_index("video_id").loc[video_id]
        return VideoReport(video_id, "ok", "", int(row["n_frames"]))

    def _committed(self) -> list[VideoReport]:
        if self.extraction is None:
            return []
        queued = self.writer.queued_ids
        written = self.extraction.written
        done = [VideoReport(v, *row) for v, row in written.items() if v not in queued]
        for report in done:
            del written[report.video_id]
        return done
