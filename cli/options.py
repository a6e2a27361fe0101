"""Options in ``--help`` sections, options built on first use, and the shared option types.

A small ``click.Command`` subclass rather than a plugin such as click-option-group: we need
two things it does not give together, sections for options generated from the config
dataclasses, and options whose choices come from registries that import torch, built only
when the command runs or shows its help (so ``heads --help`` stays instant).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click

# Section order in --help; options without a section are listed last, under "Options".
SECTIONS = ("Data", "Model", "Optimisation", "Run")


class SectionOption(click.Option):
    """A ``click.Option`` that names the ``--help`` section it belongs to."""

    def __init__(self, *args: Any, section: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


def option(*decls: str, section: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``click.option`` that lands in ``section`` of the command's ``--help``."""
    return click.option(*decls, cls=SectionOption, section=section, **kwargs)


class _Deferred:
    """Placeholder for parameters that ``factory`` builds when the command first needs them;
    ``SectionedCommand`` replaces it before click reads its parameters."""

    def __init__(self, factory: Callable[[], Iterable[click.Parameter]]) -> None:
        self.factory = factory


def deferred(factory: Callable[[], Iterable[click.Parameter]]) -> Callable[[Any], Any]:
    """Decorator: the options ``factory()`` returns, built on first use (they may import
    torch to read a registry). Only for commands with ``cls=SectionedCommand``."""

    def decorate(f: Any) -> Any:
        if not hasattr(f, "__click_params__"):
            f.__click_params__ = []
        # click reverses decorator-collected params; keep the factory's order inside.
        f.__click_params__.append(_Deferred(factory))
        return f

    return decorate


class SectionedCommand(click.Command):
    """Prints options by section (Data, Model, Optimisation, Run) and expands deferred ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {"max_content_width": 100})
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if any(isinstance(p, _Deferred) for p in self._params):
            expanded: list[click.Parameter] = []
            for param in self._params:
                if isinstance(param, _Deferred):
                    expanded.extend(param.factory())
                else:
                    expanded.append(param)
            self._params = expanded
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = list(value)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        by_section: dict[str | None, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and not isinstance(param, click.Argument):
                section = getattr(param, "section", None)
                by_section.setdefault(section if section in SECTIONS else None, []).append(record)
        for section in (*SECTIONS, None):
            if by_section.get(section):
                with formatter.section(f"{section} options" if section else "Options"):
                    formatter.write_dl(by_section[section])


def choice(values: Sequence[str]) -> click.Choice:
    """A choice of registry names or a config module's tuple of values."""
    return click.Choice(list(values))


class DeviceType(click.ParamType):
    """auto, cpu, cuda or cuda:N (the pattern of ``vidfeat.config.DEVICES_RE``)."""

    name = "device"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[auto|cpu|cuda|cuda:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from vidfeat.config import DEVICES_RE

        if not isinstance(value, str) or not DEVICES_RE.match(value):
            self.fail(f"{value!r} is not auto, cpu, cuda or cuda:N", param, ctx)
        return value


DEVICE = DeviceType()


class StorePathType(click.ParamType):
    """A store: a local path (a ``Path``) or a URL fsspec opens, kept as text (``s3://b/x``).

    ``click.Path`` would fold a URL's ``//``. Credentials never go in the URL (refused); they
    come from the environment and config files of the filesystem library.
    """

    name = "store"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        # An argument keeps its name (STORE), which the command's text refers to; an option
        # (--out) says what it takes.
        if isinstance(param, click.Argument) and param.name:
            return param.name.upper()
        return "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from vidfeat.errors import ConfigError
        from vidfeat.location import as_location

        try:
            location = as_location(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        return location if isinstance(location, Path) else str(location)


STORE = StorePathType()


def check_device(name: str | None) -> None:
    """Refuse a CUDA device this machine does not have, before any output is created."""
    if name in (None, "auto", "cpu"):
        return  # without importing torch
    from vidfeat.device import resolve_device

    resolve_device(name, label="--device")
