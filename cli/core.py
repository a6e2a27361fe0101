"""What both command-line tools share: exit codes, the error handler, logging and progress.

Every failure ends as one line on stderr and one of the exit codes in ``EXIT_CODES``; no
traceback unless ``-vv`` asks for one. Commands are registered lazily (module path plus a short
help line), so ``--help`` and ``--version`` import neither torch nor a store backend:

    main.lazy_command("verify", "vidfeat_cli.verify:verify", "Check a store's checksums.")

This module imports only click and the standard library; the command modules import it, never
the other way round, so the CLI modules form no import cycle.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import importlib
import logging
import os
import re
import select
import ssl
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

EXIT_OK = 0
EXIT_SOME_FAILED = 1  # the job finished, but some items (videos) failed and were recorded
EXIT_CANNOT_RUN = 2  # bad option or path, read-only or full disk, corrupt store, ...
EXIT_INTERNAL = 70  # a bug (sysexits' EX_SOFTWARE); never 1, so scripts cannot mistake it
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT)
EXIT_READER_LEFT = 141  # stdout's reader left (`| head`): 128 + SIGPIPE, as the shell reports
MAX_FAILURES_SHOWN = 10  # in an end-of-job summary; `vidfeat info` lists them all

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_SOME_FAILED, "finished, but some items failed (they are recorded; see the summary)"),
    (EXIT_CANNOT_RUN, "could not run: bad option or path, read-only or full disk, corrupt store"),
    (EXIT_INTERNAL, "internal error: a bug; rerun with -vv and report the traceback"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C, SIGTERM); finished work is kept, rerun to resume"),
    (EXIT_READER_LEFT, "the reader of the output left (e.g. `| head`); nothing printed"),
)
# \b keeps click from re-wrapping the table.
EXIT_CODES_EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {c:<4} {t}" for c, t in EXIT_CODES)

# errno -> what a user should read instead of the C library's wording.
OS_ERRORS: dict[int, str] = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a file is in the way where a directory is expected",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error (failing disk or network file system?)",
}

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ errors


def _os_error_in_chain(exc: BaseException) -> OSError | None:
    """The first OSError with a known errno in ``exc``'s cause/context chain (itself included).

    Libraries often wrap the real cause: torch reports a full disk while saving as "unexpected
    pos", with the ENOSPC only in the chain."""
    from vidfeat.errors import exception_chain

    for current in exception_chain(exc):
        # An SSLError's errno is OpenSSL's code, not the system's: its 1 is not EPERM.
        if (
            isinstance(current, OSError)
            and not isinstance(current, ssl.SSLError)
            and current.errno in OS_ERRORS
        ):
            return current
    return None


# Raised by the object stores' client libraries when the environment, not the code, is wrong:
# no or bad credentials, no region, an endpoint that does not answer (module -> class names).
_ENVIRONMENT_ERRORS = {
    "botocore.exceptions": (
        "NoCredentialsError",
        "PartialCredentialsError",
        "CredentialRetrievalError",
        "NoRegionError",
        "ProfileNotFound",
        "ConnectionError",  # EndpointConnectionError, ConnectTimeoutError, ...
        "HTTPClientError",  # ReadTimeoutError, ConnectionClosedError, ...
        "ClientError",  # the service's answers: only its refusals count (_REFUSALS)
    ),
    "google.auth.exceptions": ("GoogleAuthError",),
}


# The error codes of a ClientError that are the environment's doing (credentials, rights);
# any other (NoSuchKey, SlowDown, InternalError, ...) is not, or not only, the user's settings.
_REFUSALS = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "Forbidden",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "401",
        "403",
    }
)


def _is_environments(error: BaseException) -> bool:
    """Whether an error of ``_ENVIRONMENT_ERRORS`` is the environment's: all are, except a
    ClientError (or a subclass: NoSuchBucket, ...) whose code is not a refusal."""
    client_error = getattr(sys.modules.get("botocore.exceptions"), "ClientError", None)
    if client_error is None or not isinstance(error, client_error):
        return True
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code")) in _REFUSALS


def _environment_error_in_chain(exc: BaseException) -> BaseException | None:
    """An object-store client's credentials or connection error in ``exc``'s chain, if any.

    Only modules already imported are looked at: a command that never touched an object store
    has none of these errors, and classifying must not import a client library."""
    kinds = tuple(
        getattr(module, name)
        for module_name, names in _ENVIRONMENT_ERRORS.items()
        if (module := sys.modules.get(module_name)) is not None
        for name in names
        if hasattr(module, name)
    )
    from vidfeat.errors import exception_chain

    for current in exception_chain(exc) if kinds else ():
        if isinstance(current, kinds) and _is_environments(current):
            # Ray re-raises a worker's error as a RayTaskError that is also of its class;
            # its ``cause`` is the original, with the original message.
            return getattr(current, "cause", None) or current
    return None


def describe_os_error(exc: OSError) -> str:
    """One line: the file and a plain reason ("out/best.pt: disk full")."""
    code = exc.errno or -1
    name = exc.filename2 or exc.filename
    if code == errno.EEXIST and name and os.path.lexists(name) and not os.path.isdir(name):
        code = errno.ENOTDIR  # mkdir(exist_ok=True) over a file: the file is in the way
    reason = OS_ERRORS.get(code) or exc.strerror or str(exc) or type(exc).__name__
    return f"{name}: {reason}" if name else reason


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an exception that ended a command."""
    from vidfeat.errors import StoppedAtFailure, VidfeatError

    os_error = _os_error_in_chain(exc)
    if isinstance(exc, StoppedAtFailure):
        return EXIT_SOME_FAILED, f"stopped at the first failed video (--fail-fast): {exc}"
    if isinstance(exc, VidfeatError):
        message = str(exc) or type(exc).__name__
        if os_error is not None and OS_ERRORS[os_error.errno] not in message:
            message = f"{message} ({describe_os_error(os_error)})"
        return EXIT_CANNOT_RUN, message
    if os_error is not None:
        return EXIT_CANNOT_RUN, describe_os_error(os_error)
    environment = _environment_error_in_chain(exc)
    if environment is not None:
        return EXIT_CANNOT_RUN, (
            f"object store: {environment} (its endpoint and credentials come from the "
            "environment: AWS_* variables, ~/.aws/, fsspec's config; see README, Object storage)"
        )
    if isinstance(exc, OSError):  # errno unknown to us, still the environment's doing
        return EXIT_CANNOT_RUN, str(exc) or type(exc).__name__
    first = (str(exc).strip().splitlines() or [""])[0]
    return EXIT_INTERNAL, f"{type(exc).__name__}: {first}"


def _debugging() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG - 1)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised again by a command that knows what the user should do next
    (a bare KeyboardInterrupt: rerun the same command, which resumes)."""

    def __init__(self, next_step: str) -> None:
        super().__init__(next_step)
        self.next_step = next_step


def fail(ctx: click.Context, exc: BaseException) -> NoReturn:
    """Print ``exc`` as one line (``-vv``: with its traceback) and exit with its code."""
    if isinstance(exc, KeyboardInterrupt):
        default = "finished work is kept; rerun the same command to resume"
        click.echo(f"interrupted: {getattr(exc, 'next_step', default)}", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    code, message = classify(exc)
    if _debugging():
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    if code == EXIT_INTERNAL:
        click.echo(
            f"internal error: {message}. This is a bug: please report it with the output of "
            "the same command run with -vv.",
            err=True,
        )
    else:
        click.echo(f"error: {message}", err=True)
    ctx.exit(code)


# ------------------------------------------------------------------------------ the group


class CliGroup(click.Group):
    """A command group with one error policy and commands loaded on first use.

    ``lazy_command(name, "module:attr", help)`` registers a command without importing it: the
    group's ``--help`` shows ``help`` and only running (or asking for help on) the command
    imports its module.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", EXIT_CODES_EPILOG)
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(*args, **kwargs)
        self._lazy: dict[str, tuple[str, str]] = {}

    def lazy_command(self, name: str, target: str, short_help: str) -> None:
        """Register ``target`` ("package.module:attribute") as command ``name``."""
        self._lazy[name] = (target, short_help)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._lazy})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if any(param.name == "verbose" for param in self.params):
            args = hoist_verbosity(args)
        return super().parse_args(ctx, args)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self._lazy:
            module, _, attr = self._lazy[name][0].partition(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Lazy commands show their registered help, so listing them imports nothing.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                if not self.commands[name].hidden:
                    rows.append((name, self.commands[name].get_short_help_str(limit=60)))
            else:
                rows.append((name, self._lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.UsageError):
            raise  # click's own endings: exit codes 0/2, usage errors say how to get help
        except click.ClickException as exc:  # click's default code for these is 1: not ours
            click.echo(f"error: {exc.format_message()}", err=True)
            ctx.exit(EXIT_CANNOT_RUN)
        except BrokenPipeError as exc:
            if not stdout_reader_left():
                fail(ctx, exc)  # another pipe: a worker's, a socket's
            silence_stdout()
            ctx.exit(EXIT_READER_LEFT)
        except (Exception, KeyboardInterrupt) as exc:
            fail(ctx, exc)


def echo_failures(lines: list[str], store: object | None, unrecorded: int = 0) -> None:
    """An end-of-job summary's failures on stderr: the first ``MAX_FAILURES_SHOWN``, then how
    many more ``vidfeat info STORE`` lists (``store`` None: the job wrote no store;
    ``unrecorded``: failures the store does not keep, of inputs left out to be read again)."""
    for line in lines[:MAX_FAILURES_SHOWN]:
        click.echo(f"  failed: {line}", err=True)
    if len(lines) > MAX_FAILURES_SHOWN:
        more = len(lines) - MAX_FAILURES_SHOWN
        if store is None:
            where = "not listed: no store was written to keep them"
        elif unrecorded:
            where = (
                f"`vidfeat info {store}` lists those recorded, not the {unrecorded} of "
                "inputs left out to be read again"
            )
        else:
            where = f"`vidfeat info {store}` lists every failure"
        click.echo(f"  ... and {more} more ({where})", err=True)


def stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reading end is closed (``... | head`` has exited)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # not a real file (tests), or no poll
        return False


def silence_stdout() -> None:
    """Point stdout at /dev/null, so what is still buffered for a departed reader is not an
    error again when the stream is flushed at exit."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def run_command(group: click.Group) -> NoReturn:
    """Run ``group`` as the console command, then end the process without the interpreter's
    teardown. The installed ``vidfeat`` and ``heads`` scripts come here; ``group.main()`` (tests,
    other Python code) ends as click always does.

    Once torch is imported, CPython's teardown (a full garbage collection, then every module's
    objects freed one by one) took 0.6 s after ``import torch`` alone and 1.0 s after a one-clip
    ``vidfeat extract`` on this project's 2-core benchmark machine, three times the weight load.
    What exit must do still happens, in the interpreter's own order: threads still running are
    joined (as ``threading`` does at exit), the atexit handlers run (multiprocessing reaps its
    children, logging flushes its handlers, Ray disconnects), stdout and stderr are flushed.
    Stores are closed by the commands themselves, never by a finalizer.
    """
    try:
        group.main()
        code: object = EXIT_OK
    except SystemExit as exc:
        code = exc.code
    shutdown = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exit_handlers is None:
        sys.exit(code)  # another interpreter: leave the ending to it
    shutdown()
    run_exit_handlers()
    if code is None:
        code = EXIT_OK
    elif not isinstance(code, int):
        print(code, file=sys.stderr)  # what sys.exit("message") prints
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = EXIT_READER_LEFT if code == EXIT_OK else code
        except (OSError, ValueError):
            # Output was lost (a full disk, a closed stream): the command must not look done.
            code = EXIT_CANNOT_RUN if code == EXIT_OK else code
    os._exit(code)


# ------------------------------------------------------------------------------ logging


def interrupt_on_sigterm() -> None:
    """For the rest of the command, SIGTERM (a scheduler, torchrun, ``kill``) ends it as Ctrl-C
    does: exit 130 and finished work kept, from the first moment (loading a model can take a
    while), not only once the long-running part has begun."""
    from vidfeat.signals import raise_on_sigterm

    undo = raise_on_sigterm(lambda signum: KeyboardInterrupt())
    click.get_current_context().call_on_close(undo)


def setup_logging(verbose: int, quiet: bool) -> None:
    """One logging policy for both tools: INFO by default, -q warnings only, -v debug,
    -vv debug plus tracebacks of errors."""
    if quiet:
        level = logging.WARNING
    elif verbose >= 2:
        level = logging.DEBUG - 1  # below DEBUG: also tracebacks (see ``fail``)
    elif verbose == 1:
        level = logging.DEBUG
    else:
        level = logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    from vidfeat.location import quiet_client_logs

    quiet_client_logs(level)


_VERBOSITY = re.compile(r"-q|--quiet|-v+|--verbose")


def hoist_verbosity(args: list[str]) -> list[str]:
    """``-q``/``-v`` given after the command (``vidfeat extract m.csv -v``) moved in front of it,
    where the group that owns them reads them; nothing after ``--`` moves."""
    command = next((i for i, arg in enumerate(args) if not arg.startswith("-")), len(args))
    tail = args[command + 1 :]
    end = tail.index("--") if "--" in tail else len(tail)
    moved = [arg for arg in tail[:end] if _VERBOSITY.fullmatch(arg)]
    if not moved:
        return args
    kept = [arg for arg in tail[:end] if not _VERBOSITY.fullmatch(arg)]
    return [*args[:command], *moved, *args[command : command + 1], *kept, *tail[end:]]


def verbosity_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--verbose`` (count) and ``-q/--quiet`` on a group; call ``setup_logging`` with them.

    A ``CliGroup`` also takes them after its command (``hoist_verbosity``)."""
    f = click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")(f)
    return click.option(
        "-v",
        "--verbose",
        count=True,
        help="More output: -v debug logging, -vv also tracebacks of errors.",
    )(f)


def version_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.version_option(package_name="vidfeat", message="%(prog)s %(version)s")(f)


def progress_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress``: a progress bar, by default only when stderr is a tty."""
    from vidfeat_cli.options import SectionOption

    return click.option(
        "--progress/--no-progress",
        default=None,
        cls=SectionOption,
        section="Run",
        help="Progress bar.  [default: on when stderr is a terminal]",
    )(f)


def show_progress(progress: bool | None) -> bool:
    """The value of ``--progress/--no-progress``, or whether stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else progress
