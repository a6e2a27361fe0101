"""What the fault table is made of: a case row, the places a case runs in, and the outcome.

A row (``Case``) names what is broken, how to break it (``inject``), the command (``run``) and
the outcome it must have: the exit code, a message fragment, and what must not be lost
(``kept``). Commands run in-process through click's runner (the real CLI, its real error
handler) or, for library calls, through the CLI core's own ``classify``, so a library error is
judged by the code and line the CLI would print.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path

import h5py
from click.testing import CliRunner

from vidfeat_cli.core import EXIT_OK, classify

SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}
PLACEHOLDERS = ("store", "other", "run", "out", "tmp", "fmt", "suffix", "mnt")


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: int
    output: str


@dataclasses.dataclass
class Env:
    """The places one case runs in: fresh copies of the shared store and run, made on demand."""

    tmp: Path
    fmt: str
    fixtures: dict  # "store", "other", "run": shared originals for this backend, never changed

    def __post_init__(self) -> None:
        self.path("out").mkdir()

    @cached_property
    def store(self) -> Path:
        return copy_store(self.fixtures["store"], self.tmp / f"store{SUFFIX[self.fmt]}")

    @cached_property
    def other(self) -> Path:
        """Same video ids and dim, another backbone: a store the run was not trained on."""
        return copy_store(self.fixtures["other"], self.tmp / f"other{SUFFIX[self.fmt]}")

    @cached_property
    def run(self) -> Path:
        """A finished one-epoch ``heads train`` run on the shared original store."""
        dst = self.tmp / "run"
        shutil.copytree(self.fixtures["run"], dst)
        return dst

    @property
    def out(self) -> Path:
        """Where a command may write; a failed command must leave nothing here."""
        return self.tmp / "out" / f"result{SUFFIX[self.fmt]}"

    @property
    def suffix(self) -> str:
        return SUFFIX[self.fmt]

    @property
    def mnt(self) -> Path:
        """Mount point of the read-only or full file system of cases that need one."""
        return self.tmp / "mnt"

    def path(self, name: str) -> Path:
        return self.tmp / name

    def format(self, arg: object) -> str:
        """``"{store}"`` -> the store copy's path, and so on for every attribute."""
        text = str(arg)
        if "{" not in text:
            return text
        names = [n for n in PLACEHOLDERS if "{" + n + "}" in text]
        return text.format(**{n: getattr(self, n) for n in names})


@dataclasses.dataclass(frozen=True)
class Case:
    """One fault: a row of the table."""

    id: str
    fault: str  # what is broken or injected, in words
    run: Callable[[Env], Outcome]  # the command
    code: int  # the exit code it must end with
    message: str = ""  # a fragment its output must contain ("" for none)
    inject: Callable[[Env], None] | None = None  # breaks something before the command
    kept: tuple[str, ...] = ()  # names of KEPT checks: what the command must not lose
    stores: bool = False  # the case involves a store: run it for Zarr and HDF5
    xfail: str = ""  # a known bug whose fix belongs elsewhere (strict)
    needs: str = ""  # "ro" / "full": a real read-only or full file system; "media": test videos
    slow: bool = False  # runs the real backbone (pytest -m slow)


# ------------------------------------------------------------------------------ commands


def _invoke(main, args: tuple[object, ...]) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        result = CliRunner().invoke(main, [env.format(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"the CLI let an exception escape: {result.exception!r}")
        return Outcome(result.exit_code, result.output)

    return run


def vidfeat(*args: object) -> Callable[[Env], Outcome]:
    from vidfeat_cli.vidfeat import main

    return _invoke(main, args)


def heads(*args: object) -> Callable[[Env], Outcome]:
    from vidfeat_cli.heads import main

    return _invoke(main, args)


def lib(fn: Callable[[Env], object]) -> Callable[[Env], Outcome]:
    """A library call, judged as the CLI would print its error."""

    def run(env: Env) -> Outcome:
        try:
            fn(env)
        except Exception as exc:
            code, message = classify(exc)
            return Outcome(code, message)
        return Outcome(EXIT_OK, "")

    return run


# ------------------------------------------------------------------------------ stores


def copy_store(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
        parts = src.with_name(src.name + ".parts")
        shutil.copytree(parts, dst.with_name(dst.name + ".parts"))
    return dst


def store_files(path: Path) -> list[Path]:
    """Every file that makes up a store (HDF5: the root file and its segments)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    parts = path.with_name(path.name + ".parts")
    return [path, *sorted(p for p in parts.rglob("*") if p.is_file())]


def tree_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode())
        h.update(p.read_bytes() if p.is_file() else b"-")
    return h.hexdigest()


def first_segment(store: Path) -> Path:
    return store.with_name(store.name + ".parts") / "main.00000000.h5"


def flip_chunk(store: Path, fmt: str, array: str) -> None:
    """Invert 40 bytes in the middle of the first stored chunk of ``array`` of part main."""
    if fmt == "zarr":
        file = min(p for p in (store / "parts" / "main" / array / "c").rglob("*") if p.is_file())
        start, size = 0, file.stat().st_size
    else:
        file = first_segment(store)
        with h5py.File(file, "r") as f:
            info = f[array].id.get_chunk_info(0)
        start, size = info.byte_offset, info.size
    data = bytearray(file.read_bytes())
    mid = start + size // 2
    for i in range(max(0, mid - 20), min(start + size, mid + 20)):
        data[i] ^= 0xFF
    file.write_bytes(bytes(data))


def delete_chunk(store: Path, fmt: str, array: str) -> None:
    """Remove the bytes of the first rows of ``array``: a Zarr chunk file, or (HDF5, whose unit
    of commit is a segment file) the first segment of part main."""
    if fmt == "zarr":
        min(p for p in (store / "parts" / "main" / array / "c").rglob("*") if p.is_file()).unlink()
    else:
        first_segment(store).unlink()


def truncate_part(store: Path, fmt: str) -> None:
    """Cut part main's metadata (Zarr ``zarr.json``) or its first segment (HDF5) in half."""
    file = store / "parts" / "main" / "zarr.json" if fmt == "zarr" else first_segment(store)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


# ------------------------------------------------------------------------------ file systems


@contextlib.contextmanager
def mounted(kind: str, where: Path, source: Path | None = None) -> Iterator[Path]:
    """A real read-only bind mount of ``source`` (``kind="ro"``) or a 256 KiB tmpfs
    (``kind="full"``) at ``where``. Raises ``OSError`` where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    if kind == "ro":
        cmds = [["mount", "--bind", str(source), str(where)]]
        cmds.append(["mount", "-o", "remount,bind,ro", str(where)])
    else:
        cmds = [["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)]]
    done = 0
    try:
        for cmd in cmds:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise OSError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
            done += 1
        yield where
    finally:
        if done:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def set_root_meta(store: Path, fmt: str, **changes: object) -> None:
    """Rewrite keys of a store's root metadata in place (as a newer vidfeat or an editor would)."""
    import json

    if fmt == "zarr":
        file = store / "zarr.json"
        doc = json.loads(file.read_text())
        doc["attributes"]["vidfeat"].update(changes)
        file.write_text(json.dumps(doc))
    else:
        with h5py.File(store, "r+") as f:
            meta = json.loads(f.attrs["vidfeat"])
            meta.update(changes)
            f.attrs["vidfeat"] = json.dumps(meta)


def decode_job(
    env: Env, names: tuple[str, ...], decoder: str = "pyav", timeout_s: float = 60.0
) -> Outcome:
    """Decode the media files ``names`` (keys of ``env.fixtures["media"]``) in one pool, as
    extraction does; one output line per video (``name: done`` or ``name: STATUS``), and the
    CLI's code for the job: 1 when some videos failed, 0 when none did."""
    from vidfeat.decode.pool import DecodePool, VideoDone, VideoFailed
    from vidfeat_cli.core import EXIT_SOME_FAILED

    media = env.fixtures["media"]
    extra = ["tests.vidfeat.pool_helpers"] if decoder == "faulty" else []
    ends: dict[str, str] = {}
    with DecodePool(2, decoder, timeout_s=timeout_s, extra_modules=extra) as pool:
        for name in names:
            pool.submit(name, media[name])
        for event in pool.events():
            if isinstance(event, VideoDone):
                ends[event.job_id] = "done"
            elif isinstance(event, VideoFailed):
                ends[event.job_id] = event.status
    lines = [f"{name}: {ends.get(name, 'lost')}" for name in names]
    failed = sum(ends.get(name) != "done" for name in names)
    lines.append(f"{len(names) - failed} done, {failed} failed")
    return Outcome(EXIT_SOME_FAILED if failed else EXIT_OK, "\n".join(lines) + "\n")
