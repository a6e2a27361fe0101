"""Run every row of the fault table (cases.py) and check its outcome: exit code, message, no
traceback, a one-line error, and that nothing was lost."""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from heads.synthetic import write_store
from tests.faults.actions import ATTRS, SMALL, append_one
from tests.faults.cases import CASES
from tests.faults.harness import Case, Env, copy_store, mounted, store_files, tree_digest
from tests.heads.stores import cluster_videos
from tests.media import make_corrupt_inputs, write_video
from vidfeat import open_store
from vidfeat_cli.core import EXIT_INTERNAL, EXIT_SOME_FAILED
from vidfeat_cli.heads import main as heads_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BACKENDS = ("zarr", "hdf5")


def _params() -> list:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        marks += [pytest.mark.slow] if case.slow else []
        for fmt in BACKENDS if case.stores else ("zarr",):
            name = f"{case.id}-{fmt}" if case.stores else case.id
            params.append(pytest.param(case, fmt, id=name, marks=marks))
    return params


@pytest.fixture
def env(request, tmp_path) -> Env:
    fmt = request.node.callspec.params["fmt"]
    fixtures = dict(request.getfixturevalue("originals_" + fmt))
    if request.node.callspec.params["case"].needs == "media":
        fixtures["media"] = request.getfixturevalue("fault_media")
    return Env(tmp_path, fmt, fixtures)


@pytest.fixture(scope="module")
def fault_media(tmp_path_factory) -> dict[str, Path]:
    """Two good clips, every kind of broken input (by the status each must get), and copies of
    a good clip named so the test decoder "faulty" hangs, spins or crashes on them."""
    folder = tmp_path_factory.mktemp("media")
    media = {
        "good": write_video(folder / "good.mp4", seconds=1, fps=10).path,
        "good2": write_video(folder / "good2.mkv", seconds=1.5, fps=12).path,
        **make_corrupt_inputs(folder / "broken"),
        "rotated": write_video(folder / "rot.mp4", seconds=1, fps=10, rotation=90).path,
        "yuv444": write_video(folder / "444.mp4", seconds=1, fps=10, pix_fmt="yuv444p").path,
        "gif": write_video(folder / "anim.gif", seconds=1, fps=10, codec="gif").path,
    }
    for fault in ("hang", "spin", "segv"):
        media[fault] = folder / f"{fault}.mp4"
        shutil.copyfile(media["good"], media[fault])
    return media


@pytest.fixture(scope="module")
def originals_zarr(request, tmp_path_factory):
    return _originals(request, tmp_path_factory, "zarr")


@pytest.fixture(scope="module")
def originals_hdf5(request, tmp_path_factory):
    return _originals(request, tmp_path_factory, "hdf5")


def _originals(request, tmp_path_factory, fmt: str) -> dict:
    tmp = tmp_path_factory.mktemp(f"originals-{fmt}")
    suffix = ".zarr" if fmt == "zarr" else ".h5"
    videos = cluster_videos(24, dim=16, n_classes=3)
    store = write_store(tmp / f"store{suffix}", videos, dim=16, format=fmt, attrs=ATTRS)
    other_attrs = {**ATTRS, "backbone": "other"}
    other = write_store(tmp / f"other{suffix}", videos, dim=16, format=fmt, attrs=other_attrs)
    run = tmp / "run"
    args = ["-q", "train", str(store), "-m", "bof", "-o", str(run), *SMALL]
    result = CliRunner().invoke(heads_main, args)
    assert result.exit_code == 0, result.output
    return {"store": store, "other": other, "run": run}


# ------------------------------------------------------------------------------ nothing lost


def _committed(env: Env) -> dict[str, np.ndarray]:
    with open_store(env.fixtures["store"]) as r:
        return {vid: r.read(vid) for vid in r.ok_ids}


def _check_committed(env: Env, before: dict) -> None:
    with open_store(env.store) as r:
        for vid, want in _committed(env).items():
            np.testing.assert_array_equal(r.read(vid), want)


def _check_resumes(env: Env, before: dict) -> None:
    (env.mnt / "filler").unlink()
    append_one(env)
    with open_store(env.store) as r:
        assert sorted(r.ok_ids) == sorted([*_committed(env), "appended"])
        np.testing.assert_array_equal(r.read("appended"), np.ones((2, 16), np.float32))


def _check_no_big(env: Env, before: dict) -> None:
    with open_store(env.out) as r:
        assert r.ok_ids == ["fine"]


def _check_equals_uninterrupted(env: Env, before: dict) -> None:
    from tests.vidfeat.store_worker import expected_audio, expected_features, video_id

    with open_store(env.out) as r:
        assert r.ok_ids == [video_id(i) for i in range(12)] and len(r.videos) == 12
        for i in range(12):
            np.testing.assert_array_equal(r.read(video_id(i), "rgb"), expected_features(i))
            np.testing.assert_array_equal(r.read(video_id(i), "audio", raw=True), expected_audio(i))


def _check_shards_complete(env: Env, before: dict) -> None:
    from tests.vidfeat.store_worker import expected_features, video_id

    with open_store(env.out) as r:
        assert sorted(r.ok_ids) == [video_id(i) for i in range(12)] and len(r.videos) == 12
        assert r.videos["part"].nunique() == 3
        for i in range(12):
            np.testing.assert_array_equal(r.read(video_id(i), "rgb"), expected_features(i))


def _check_recorded(env: Env, before: dict) -> None:
    from tests.faults.actions import BAD_INPUTS

    with open_store(env.out) as r:
        rows = r.videos.set_index("video_id")
        assert r.ok_ids == ["good"]
        for status in (*BAD_INPUTS, "missing"):
            assert rows.loc[f"bad_{status}", "status"] == status
            assert rows.loc[f"bad_{status}", "reason"]


KEPT: dict[str, Callable[[Env, dict], None]] = {
    "store": lambda env, before: (
        tree_digest(store_files(env.store)) == before["store"]
        or pytest.fail("the command changed the store's files")
    ),
    "run": lambda env, before: (
        tree_digest(sorted(env.run.rglob("*"))) == before["run"]
        or pytest.fail("the command changed the run directory")
    ),
    "no_out": lambda env, before: (
        not [p for p in env.path("out").rglob("*") if p.is_file()]
        or pytest.fail(f"files left behind: {list(env.path('out').rglob('*'))}")
    ),
    "committed": _check_committed,
    "resumes": _check_resumes,
    "no_big": _check_no_big,
    "equals_uninterrupted": _check_equals_uninterrupted,
    "shards_complete": _check_shards_complete,
    "recorded": _check_recorded,
    "no_code_ran": lambda env, before: (
        not env.path("pwned").exists() or pytest.fail("unpickling the checkpoint ran code")
    ),
}


def _snapshot(case: Case, env: Env) -> dict:
    before = {}
    if "store" in case.kept:
        before["store"] = tree_digest(store_files(env.store))
    if "run" in case.kept:
        before["run"] = tree_digest(sorted(env.run.rglob("*")))
    return before


# ------------------------------------------------------------------------------ places


def _prepare_mount(case: Case, env: Env, stack) -> None:
    """``ro``: the store copy seen through a read-only bind mount; ``full``: on a tmpfs
    filled up to its last few KiB."""
    try:
        if case.needs == "ro":
            source = env.store.parent / "ro-source"
            source.mkdir()
            copy_store(env.store, source / env.store.name)
            stack.enter_context(mounted("ro", env.mnt, source))
            env.__dict__["store"] = env.mnt / env.store.name
        elif case.needs == "full":
            stack.enter_context(mounted("full", env.mnt))
            env.__dict__["store"] = copy_store(env.store, env.mnt / env.store.name)
            _fill(env.mnt / "filler")
    except OSError as exc:
        pytest.skip(f"needs a real {case.needs} file system; cannot mount here: {exc}")


def _fill(file: Path) -> None:
    """Write zeros until the file system is full."""
    with open(file, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


@pytest.mark.parametrize("case, fmt", _params())
def test_fault(case: Case, fmt: str, env: Env) -> None:
    import contextlib

    with contextlib.ExitStack() as stack:
        if case.needs:
            _prepare_mount(case, env, stack)
        if case.inject:
            case.inject(env)
        before = _snapshot(case, env)
        outcome = case.run(env)
        assert "Traceback" not in outcome.output, outcome.output
        lines = [ln for ln in outcome.output.strip().splitlines() if ln.strip()]
        assert outcome.code == case.code, (
            f"exit {outcome.code}, wanted {case.code}:\n{outcome.output}"
        )
        # Judge the words, not the case's folder name (which repeats the case id).
        words = outcome.output.replace(str(env.tmp), "<tmp>")
        assert re.search(case.message, words, re.MULTILINE), outcome.output
        # An error is one line: logs may precede it, only a list of problems ("  - ...") may
        # follow it (a manifest names every bad row at once); no advice, no dump.
        errors = [i for i, ln in enumerate(lines) if ln.startswith(("error:", "internal error:"))]
        assert len(errors) <= 1, outcome.output
        after = lines[errors[0] + 1 :] if errors else []
        assert all(ln.startswith("  - ") for ln in after), outcome.output
        assert outcome.code != EXIT_INTERNAL
        assert outcome.code != EXIT_SOME_FAILED or "failed" in outcome.output
        for name in case.kept:
            KEPT[name](env, before)
