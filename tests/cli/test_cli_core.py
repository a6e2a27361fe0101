"""The shared CLI core: exit codes, error messages, --help/--version, option sections."""

from __future__ import annotations

import dataclasses
import errno
import os
import ssl
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner

from heads import config
from heads.config import DataConfig, TrainConfig
from heads.models import HEADS, HeadConfig
from vidfeat.decode import DECODERS
from vidfeat.errors import StoreError
from vidfeat.store.base import BACKENDS
from vidfeat_cli import core
from vidfeat_cli import heads as heads_cli
from vidfeat_cli import vidfeat as vidfeat_cli
from vidfeat_cli.heads_options import HEAD_HELP


def _group_raising(exc: BaseException) -> click.Group:
    """A CliGroup whose one command raises ``exc``: the handler both tools share."""

    @click.group(cls=core.CliGroup)
    @core.verbosity_options
    def group(verbose: int, quiet: bool) -> None:
        core.setup_logging(verbose, quiet)

    @group.command()
    def boom() -> None:
        raise exc

    return group


@pytest.mark.parametrize(
    "exc, code, text",
    [
        (OSError(errno.ENOSPC, "No space left on device", "out/best.pt"), 2, "disk full"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 2, "read-only file system"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/x"), 2, "a file is in the way"),
        (StoreError("store s.zarr is corrupt"), 2, "store s.zarr is corrupt"),
        (ValueError("unexpected\nsecond line"), 70, "This is a bug"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_one_line_and_documented_code(exc, code, text):
    result = CliRunner().invoke(_group_raising(exc), ["boom"])
    assert result.exit_code == code
    assert code in dict(core.EXIT_CODES)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in result.output


def test_wrapped_os_error_is_found_in_the_chain():
    """torch reports a full disk while saving as a RuntimeError; the ENOSPC is its cause."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "run/last.pt")
        except OSError as inner:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from inner
    except RuntimeError as outer:
        exc = outer
    assert core.classify(exc) == (2, "run/last.pt: disk full")


def test_internal_error_never_uses_code_1_and_vv_shows_the_traceback():
    result = CliRunner().invoke(_group_raising(TypeError("bad")), ["-vv", "boom"])
    assert result.exit_code == core.EXIT_INTERNAL != core.EXIT_SOME_FAILED
    assert "Traceback" in result.output and "TypeError: bad" in result.output


def test_verbosity_flags_after_the_command_count_as_before_it():
    # Given after the command (as users type them), -v and -q reach the group that owns them.
    result = CliRunner().invoke(_group_raising(TypeError("bad")), ["boom", "-vv"])
    assert result.exit_code == core.EXIT_INTERNAL and "TypeError: bad" in result.output
    hoisted = core.hoist_verbosity(["-q", "pca", "fit", "s.zarr", "-v", "--dim", "4", "--", "-q"])
    assert hoisted == ["-q", "-v", "pca", "fit", "s.zarr", "--dim", "4", "--", "-q"]
    assert core.hoist_verbosity(["info", "s.zarr"]) == ["info", "s.zarr"]
    assert core.hoist_verbosity(["--version"]) == ["--version"]


def test_stdout_on_a_full_disk_exits_2(tmp_path):
    """Real ENOSPC: the merged config printed to /dev/full."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "vidfeat_cli.heads", "train", "-m", "bof", "--print-config"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert proc.returncode == 2, proc.stderr
    assert "disk full" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("module", ["vidfeat_cli.heads", "vidfeat_cli.vidfeat"])
@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_import_no_torch(module, args):
    code = (
        f"import sys; from {module} import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('torch', 'zarr', 'h5py', 'av', 'decord', 'pandas') "
        "if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in proc.stdout, proc.stdout
    if args == ["--version"]:
        assert "0." in proc.stdout.splitlines()[0]
    else:
        assert "Exit codes:" in proc.stdout and "70" in proc.stdout


def test_exit_code_table_in_both_helps():
    for main in (heads_cli.main, vidfeat_cli.main):
        out = CliRunner().invoke(main, ["--help"]).output
        for code, text in core.EXIT_CODES:
            assert f"{code}" in out and text in out


def test_train_help_is_sectioned_and_derived_from_the_registries():
    out = CliRunner().invoke(heads_cli.main, ["train", "--help"]).output
    positions = [out.index(f"{s} options:") for s in ("Data", "Model", "Optimisation", "Run")]
    assert positions == sorted(positions)
    assert f"[{'|'.join(HEADS.names())}]" in out
    for values in (config.REDUCTIONS, config.POOLINGS, config.INPUT_NORMS):
        assert f"[{'|'.join(values)}]" in out
    assert "Head option." not in out
    for field in dataclasses.fields(HeadConfig):
        assert field.name in HEAD_HELP  # every head option has a real help line
        assert f"--{field.name.replace('_', '-')}" in out
    # Defaults shown are the dataclasses' own.
    assert f"[default: {TrainConfig.__dataclass_fields__['epochs'].default}]" in out
    assert f"[default: {DataConfig().max_frames}]" in out


def test_extract_help_choices_come_from_the_registries():
    out = CliRunner().invoke(vidfeat_cli.main, ["extract", "--help"]).output
    assert f"[{'|'.join(DECODERS.names())}]" in out
    assert f"[{'|'.join(BACKENDS.names())}]" in out
    assert "Run options:" in out and "--progress / --no-progress" in out


def test_bad_device_value_is_a_usage_error():
    result = CliRunner().invoke(heads_cli.main, ["train", "-m", "bof", "--device", "gpu"])
    assert result.exit_code == 2 and "not auto, cpu, cuda or cuda:N" in result.output


def test_cli_modules_import_each_other_without_cycles():
    """Every import between vidfeat_cli modules, deferred ones included, forms a DAG."""
    import ast
    import graphlib
    from pathlib import Path

    import vidfeat_cli

    folder = Path(vidfeat_cli.__path__[0])
    graph = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vidfeat_cli"):
                if node.module == "vidfeat_cli":
                    deps |= {alias.name for alias in node.names}
                else:
                    deps.add(node.module.split(".")[1])
        graph[path.stem] = deps
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError
    assert order.index("core") < order.index("heads_options") < order.index("finetune")


# A command run the way the installed scripts run (``core.run_command``), in its own process.
_SCRIPT_EXIT = """
import atexit, sys, threading, time
from pathlib import Path
import click
from vidfeat_cli import core

out = Path(sys.argv[1])


class TornDown:
    def __del__(self):  # runs in the interpreter's teardown, which run_command skips
        (out / "teardown").write_text("ran")


kept = TornDown()


@click.group(cls=core.CliGroup)
def group():
    pass


@group.command()
@click.argument("code", type=int)
def finish(code):
    def late():
        time.sleep(0.5)
        (out / "thread").write_text("joined")

    threading.Thread(target=late).start()
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    print("buffered", flush=False)
    sys.exit(code)


sys.argv = ["prog", "finish", sys.argv[2]]
core.run_command(group) if "{mode}" == "fast" else group.main()
"""


@pytest.mark.parametrize("code", [0, 3])
def test_installed_script_ending_skips_only_the_teardown(tmp_path, code):
    """Threads are joined, atexit handlers run, buffered output arrives, the code is kept;
    the interpreter's teardown (here: a module global's __del__) does not happen."""
    for mode in ("fast", "click"):
        out = tmp_path / mode
        out.mkdir()
        script = _SCRIPT_EXIT.replace("{mode}", mode)
        proc = subprocess.run(
            [sys.executable, "-c", script, str(out), str(code)], capture_output=True, text=True
        )
        assert proc.returncode == code, (mode, proc.stderr)
        assert proc.stdout == "buffered\n"
        assert (out / "thread").read_text() == "joined"
        assert (out / "atexit").read_text() == "ran"
        # The control: ended by click and the interpreter, the teardown runs.
        assert (out / "teardown").exists() == (mode == "click"), mode


def test_installed_script_output_lost_on_a_full_disk_is_an_error(tmp_path):
    """Buffered output that cannot be written at the end turns success into exit code 2."""
    script = _SCRIPT_EXIT.replace("{mode}", "fast")
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path), "0"], stdout=full, stderr=subprocess.PIPE
        )
    assert proc.returncode == core.EXIT_CANNOT_RUN, proc.stderr


def test_a_reader_that_left_ends_the_command_quietly(tmp_path):
    """`vidfeat info s.zarr | head -1` once printed "error: Broken pipe" and exited 2. The
    reading end is closed before the command starts, so every write meets EPIPE."""
    from vidfeat import create_store

    store = tmp_path / "s.zarr"
    with create_store(store, dim=2) as w:
        w.write("v", np.ones((1, 2), np.float32))
    script = "import sys; sys.argv[0] = 'vidfeat'; from vidfeat_cli.vidfeat import main; "
    script += "from vidfeat_cli.core import run_command; run_command(main)"
    for args in (["info", str(store)], ["info", "--json", str(store)]):
        read, write = os.pipe()
        os.close(read)
        try:
            proc = subprocess.run(
                [sys.executable, "-c", script, *args], stdout=write, stderr=subprocess.PIPE
            )
        finally:
            os.close(write)
        assert (proc.returncode, proc.stderr) == (core.EXIT_READER_LEFT, b""), args


def test_an_ssl_error_code_is_not_read_as_a_system_errno():
    # OpenSSL's code 1 printed as "operation not permitted" (EPERM) for a TLS failure.
    code, message = core.classify(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version"))
    assert code == 2 and "not permitted" not in message and "WRONG_VERSION_NUMBER" in message


def test_an_object_stores_refusal_is_said_to_be_the_object_stores():
    # s3fs raises a bare PermissionError("Forbidden") from botocore's ClientError.
    from botocore.exceptions import ClientError

    refusal = ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")
    try:
        try:
            raise refusal
        except ClientError as inner:
            raise PermissionError("Forbidden") from inner
    except PermissionError as outer:
        code, message = core.classify(outer)
    assert code == 2 and message.startswith("object store: An error occurred (403) when calling")
    assert "credentials come from the environment" in message
    # Its other answers are not the credentials' doing: a bug raised while handling one (here
    # a precondition failure) stays an internal error.
    try:
        try:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
        except ClientError:
            raise KeyError("etag")  # noqa: B904 - the implicit context is the point
    except KeyError as bug:
        assert isinstance(bug.__context__, ClientError)
        assert core.classify(bug)[0] == core.EXIT_INTERNAL
