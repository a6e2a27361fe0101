"""docs/recipes.md: every `heads`/`vidfeat` command in its code blocks parses with today's
options, and every recipe of benchmarks.recipes is printed there exactly (and parses scaled
down, as benchmarks.seeds runs it). Nothing is trained."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from benchmarks.recipes import RECIPES, scaled_args, train_command

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
BLOCK = re.compile(r"```(?:bash|sh)?\n(.*?)```", re.S)


def doc_commands() -> list[list[str]]:
    """The `heads ...` and `vidfeat ...` commands of the doc's code blocks, as argv lists."""
    commands = []
    for block in BLOCK.findall(DOC.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] in ("heads", "vidfeat"):
                commands.append(argv)
    return commands


def parse(argv: list[str]) -> click.Context:
    """Parse argv with the real command's options (types converted, callback not run); raises
    click.UsageError for an option or value the command does not accept."""
    from vidfeat_cli.heads import main as heads_main
    from vidfeat_cli.vidfeat import main as vidfeat_main

    group = {"heads": heads_main, "vidfeat": vidfeat_main}[argv[0]]
    parent = click.Context(group, info_name=argv[0])
    command = group.get_command(parent, argv[1])
    if command is None:
        raise click.UsageError(f"no command {argv[1]!r}")
    return command.make_context(argv[1], argv[2:], parent=parent)


def test_the_doc_has_commands_of_both_tools():
    tools = {argv[0] for argv in doc_commands()}
    assert tools == {"heads", "vidfeat"}


@pytest.mark.parametrize("argv", doc_commands(), ids=lambda argv: " ".join(argv[:4]))
def test_every_doc_command_parses(argv):
    parse(argv)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_in_the_doc_verbatim(name):
    assert train_command(RECIPES[name]) in doc_commands()


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if not r.is_ensemble])
def test_scaled_recipes_parse(name):
    recipe = RECIPES[name]
    full = parse(train_command(recipe)).params
    scaled = parse(["heads", "train", "s.zarr", "-o", "r", *scaled_args(recipe.args)]).params
    # Same structure: the same head and fusion, only sizes and counts change.
    for key in ("model", "fusion", "reduction", "optimizer", "lr", "loss", "sampling"):
        assert scaled[key] == full[key]
    assert 0 < scaled["max_steps"] <= 1000


def test_a_flag_that_does_not_exist_is_refused():
    with pytest.raises(click.NoSuchOption):
        parse(["heads", "train", "s.zarr", "-o", "r", "-m", "lstm", "--num-experts-x", "4"])
    with pytest.raises(click.BadParameter):
        parse(["heads", "train", "s.zarr", "-o", "r", "--fusion", "sum"])
