"""Extraction configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from fractions import Fraction
from pathlib import Path

from vidfeat.backbones.runtimes import (
    AUTO_PRECISION,
    DEFAULT_RUNTIME,
    precision_names,
    runtime_names,
)
from vidfeat.decode.base import DEFAULT_DECODER
from vidfeat.errors import ConfigError
from vidfeat.location import Location, as_location, is_url
from vidfeat.sampling import format_fps

SHARD_RE = re.compile(r"^(\d+)/(\d+)$")
DEVICES_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based I) -> (I, N)."""
    m = SHARD_RE.match(text.strip())
    if not m or not int(m[1]) < int(m[2]):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return int(m[1]), int(m[2])


def shard_of(key: str, n_shards: int) -> int:
    """Stable shard for a video id or file name: independent of order, so edits don't reshuffle.

    A cryptographic hash, because CRC32's low bits barely move between ids like v1, v2, v3.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Everything ``vidfeat extract`` needs. Fields that change features go into store attrs."""

    manifest: Path
    out: Location  # a local path, or a URL (s3://, gs://, ...)
    format: str | None = None  # zarr | hdf5 | None (by suffix)
    backbone: str = "inception_v3"
    weights: str = "yt8m"
    fps: str = "1"  # exact text, normalised by format_fps: "1.0" and "1/1" become "1"
    max_frames: int = 360
    decoder: str = DEFAULT_DECODER
    workers: int = 2
    batch_size: int | None = None  # None: by the backbone's device (vidfeat.device)
    device: str = "auto"
    runtime: str = DEFAULT_RUNTIME  # a key of vidfeat.backbones.runtimes.RUNTIMES
    # "auto": the runtime's default on the job's device (settled when the job starts).
    precision: str = AUTO_PRECISION
    dtype: str = "float32"  # stored dtype without quantization: float32 | float16
    pca: str | None = None
    quantize: bool = False
    timeout_s: float = 300.0
    shard: tuple[int, int] = (0, 1)
    fail_fast: bool = False
    retry_failed: bool = False
    progress: bool = True
    # Finished videos are committed in groups of this many (or every 10 s): a killed job loses
    # at most that group. Smaller is safer, larger writes fewer metadata updates.
    commit_every: int = 16
    # A second stream "audio" from the audio track (an audio backbone name, e.g. "vggish"),
    # its weight file, and VGGish's PCA parameters (needed for uint8 audio with --quantize).
    audio: str | None = None
    audio_weights: str | None = None
    audio_pca: str | None = None
    # Where the loop runs (vidfeat.engines): "local", or "ray" with decode tasks over the
    # cluster feeding ``embed_workers`` actors (default: one per GPU in the cluster, else 1).
    engine: str = "local"
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a cluster on this machine
    embed_workers: int | None = None

    def __post_init__(self) -> None:
        if is_url(str(self.manifest)):  # before Path() folds its "//"
            raise ConfigError(f"manifest {self.manifest}: a URL is not read; copy it here first")
        object.__setattr__(self, "manifest", Path(self.manifest))
        object.__setattr__(self, "out", as_location(self.out))
        problems = []
        try:
            # One spelling per rate: "1", "1.0" and "1/1" make the same store.
            object.__setattr__(self, "fps", format_fps(self.fps))
        except ConfigError:
            problems.append(f"fps must be a number > 0 like 1, 0.5 or 1/3, got {self.fps!r}")
        if not 1 <= self.max_frames <= 100_000:
            problems.append("max_frames must be between 1 and 100000")
        batch_size = 1 if self.batch_size is None else self.batch_size  # None: by device
        if self.workers < 1 or batch_size < 1 or self.commit_every < 1:
            problems.append("workers, batch_size and commit_every must be >= 1")
        if self.runtime not in runtime_names():
            problems.append(f"runtime must be one of {runtime_names()}")
        if self.precision not in (AUTO_PRECISION, *precision_names()):
            problems.append(f"precision must be one of {[AUTO_PRECISION, *precision_names()]}")
        if not DEVICES_RE.match(self.device):
            problems.append(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.dtype not in ("float32", "float16"):
            problems.append("dtype must be float32 or float16 (use --quantize for uint8)")
        if self.quantize and not self.pca:
            problems.append("--quantize needs --pca (raw features do not fit [-2, 2])")
        if self.quantize and self.dtype != "float32":  # it would be ignored: uint8 is stored
            problems.append(f"--dtype {self.dtype} and --quantize conflict (quantized is uint8)")
        if not self.timeout_s > 0:  # NaN too
            problems.append("timeout must be > 0 seconds")
        if self.audio is None and (self.audio_weights or self.audio_pca):
            problems.append("--audio-weights and --audio-pca need --audio")
        if self.audio is not None and self.quantize and not self.audio_pca:
            problems.append("--quantize with --audio needs --audio-pca (VGGish's PCA parameters)")
        if self.engine != "ray" and (self.ray_address or self.embed_workers):
            problems.append("--ray-address and --embed-workers need --engine ray")
        if self.embed_workers is not None and self.embed_workers < 1:
            problems.append("embed_workers must be >= 1")
        i, n = self.shard
        if not 0 <= i < n:
            problems.append(f"shard must satisfy 0 <= I < N, got {i}/{n}")
        if problems:
            raise ConfigError("invalid extraction settings: " + "; ".join(problems))

    @property
    def fps_fraction(self) -> Fraction:
        return Fraction(str(self.fps))

    @property
    def part_name(self) -> str:
        i, n = self.shard
        return "main" if n == 1 else f"shard-{i:05d}-of-{n:05d}"

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["manifest"], data["out"] = str(self.manifest), str(self.out)
        data["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return data
