"""What the fault table's rows do: the library calls they run, and the faults they inject.

Each function takes the case's ``Env``. Commands that are CLI invocations are built in cases.py
with ``vidfeat(...)`` / ``heads(...)``; the rest live here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from heads.synthetic import write_store
from tests.faults.harness import (
    Env,
    Outcome,
    delete_chunk,
    flip_chunk,
    set_root_meta,
)
from vidfeat import create_store, open_store
from vidfeat_cli.core import EXIT_OK as OK

SMALL = ("--epochs", "1", "--hidden-size", "8", "--fc-size", "8")
ATTRS = {"backbone": "synthetic", "weights": "w1", "pca": None, "fps": "1"}
ARRAYS = {"features": "streams/rgb/features", "ids": "video_id", "labels": "labels"}


# ------------------------------------------------------------------------------ library calls


def read_everything(env: Env) -> None:
    """What a consumer of a store does: open it, then read every committed video."""
    with open_store(env.store) as r:
        for vid in r.ok_ids:
            r.read(vid)
            r.mean(vid)
            r.timestamps(vid)
            r.labels(vid)


def append_one(env: Env, path: Path | None = None, **attrs: object) -> None:
    """Reopen the store to append (what a rerun of `extract` does) and add one video."""
    with create_store(path or env.store, dim=16, attrs={**ATTRS, **attrs}) as w:
        if "appended" not in w.committed_ids():
            w.write("appended", np.ones((2, 16), np.float32), labels=["class0"])


def float16_overflow(env: Env) -> None:
    with create_store(env.out, dim=2, dtype="float16", attrs=ATTRS) as w:
        w.write("fine", np.array([[6e4, 0.0]], np.float32))
        w.write("big", np.array([[1e5, 0.0]], np.float32))  # finite in float32, inf in float16


def nan_in_attrs(env: Env) -> None:
    create_store(env.out, dim=2, attrs={**ATTRS, "fps": float("nan")})


# ------------------------------------------------------------------------------ injections


def flip(array: str):
    return lambda env: flip_chunk(env.store, env.fmt, array)


def delete(array: str):
    return lambda env: delete_chunk(env.store, env.fmt, array)


def newer_schema(env: Env) -> None:
    set_root_meta(env.store, env.fmt, schema_version=99)


def one_class_store(env: Env) -> None:
    videos = [(f"v{i}", np.full((3, 16), i, np.float32), ("only",)) for i in range(12)]
    write_store(env.path(f"one{env.suffix}"), videos, dim=16, format=env.fmt, attrs=ATTRS)


def file_at(name: str):
    def inject(env: Env) -> None:
        env.path(name).parent.mkdir(parents=True, exist_ok=True)
        env.path(name).write_text("in the way")

    return inject


def locks_is_a_file(env: Env) -> None:
    env.store.with_name(env.store.name + ".locks").write_text("in the way")


def truncate_predictions(env: Env) -> None:
    npz = env.run / "test_predictions.npz"
    npz.write_bytes(npz.read_bytes()[:100])


class _RunsCode:
    """Unpickling this runs ``touch`` on a marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_checkpoint(env: Env) -> None:
    torch.save({"format": 1, "payload": _RunsCode(env.path("pwned"))}, env.run / "best.pt")


def manifest(*rows: str):
    """Write manifest.csv (header plus ``rows``, ``{tmp}`` filled in) into the case's folder."""

    def inject(env: Env) -> None:
        text = "video_id,path,labels\n" + "".join(env.format(r) + "\n" for r in rows)
        env.path("manifest.csv").write_text(text)

    return inject


def special_files(env: Env) -> None:
    env.path("a_dir.mp4").mkdir()
    os.mkfifo(env.path("a_fifo.mp4"))


def killed_writer(sig: int):
    """Kill a writer (tests.vidfeat.store_worker) after 3 commits, then rerun it to the end."""

    def run(env: Env) -> Outcome:
        import subprocess
        import sys

        root = Path(__file__).resolve().parents[2]
        cmd = [sys.executable, "-m", "tests.vidfeat.store_worker", str(env.out), env.fmt, "main"]
        proc = subprocess.Popen(
            [*cmd, "0", "12"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3):
            proc.stdout.readline()
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        rerun = subprocess.run([*cmd, "0", "12"], cwd=root, capture_output=True, text=True)
        return Outcome(rerun.returncode, rerun.stderr)

    return run


def extract_with(env: Env, key: str, *values: str) -> None:
    """Create a store with the identity `extract --KEY VALUE` gives it, for each value in turn
    (the first creates it, the others reopen it), as a rerun with other options does."""
    from vidfeat.backbones import BackboneSpec
    from vidfeat.config import ExtractConfig
    from vidfeat.pca.apply import FeatureReduction
    from vidfeat.pipeline import resume_attrs, store_attrs

    spec = BackboneSpec("inception_v3", 4, 8, "tf1_bilinear", (0, 0, 0), (1, 1, 1), "w", "a" * 64)
    for value in values:
        cfg = ExtractConfig(manifest=env.path("m.csv"), out=env.out, **{key: value})
        attrs = resume_attrs(cfg, store_attrs(cfg, spec, FeatureReduction()))
        with create_store(env.out, dim=4, attrs=attrs) as w:
            w.write(f"v{len(w.committed_ids())}", np.zeros((1, 4), np.float32))


def two_writers(env: Env) -> None:
    """A second writer of the same part while the first still holds it."""
    with create_store(env.store, dim=16, attrs=ATTRS):
        append_one(env)


def concurrent_shards(env: Env) -> Outcome:
    """Three writer processes (tests.vidfeat.store_worker), one part each, at the same time."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "tests.vidfeat.store_worker", str(env.out), env.fmt]
    procs = [
        subprocess.Popen(
            [*cmd, f"shard-{s}-of-3", str(4 * s), "4"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in range(3)
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    code = max(p.returncode for p in procs)
    return Outcome(code, "".join(errs))


def one_video_store(env: Env) -> None:
    videos = [("v0", np.ones((3, 16), np.float32), ("class0", "class1"))]
    write_store(env.path(f"one{env.suffix}"), videos, dim=16, format=env.fmt, attrs=ATTRS)


BAD_INPUTS = ("empty", "not_video", "unreadable", "truncated", "no_video_stream", "decode_error")


def bad_inputs_manifest(env: Env) -> None:
    media = env.fixtures["media"]
    rows = [f"good,{media['good']},a"] + [f"bad_{s},{media[s]},b" for s in BAD_INPUTS]
    rows.append(f"bad_missing,{env.path('gone.mp4')},b")
    env.path("manifest.csv").write_text("video_id,path,labels\n" + "\n".join(rows) + "\n")


def decoders_agree(name: str):
    """Frames of media ``name`` from both decoders: the largest pixel difference."""

    def run(env: Env) -> Outcome:
        from vidfeat.decode import open_video

        frames = {}
        for decoder in ("pyav", "decord"):
            with open_video(env.fixtures["media"][name], decoder) as video:
                frames[decoder] = [f.frame.astype(int) for f in video.sample(5, None)]
        pairs = zip(frames["pyav"], frames["decord"], strict=True)
        diff = max(int(np.abs(a - b).max()) for a, b in pairs)
        return Outcome(OK, f"{len(frames['pyav'])} frames, max difference {diff}\n")

    return run


def open_schema_1(env: Env) -> None:
    """Replace the case's store by a copy of the schema-1 fixture (it holds an inf)."""
    from tests.faults.harness import copy_store

    src = Path(__file__).resolve().parents[1] / "vidfeat" / "fixtures" / f"v1{env.suffix}"
    env.__dict__["store"] = copy_store(src, env.path(f"v1{env.suffix}"))


EXTRACT = ("extract", "{tmp}/manifest.csv", "--out", "{out}", "--no-progress")
