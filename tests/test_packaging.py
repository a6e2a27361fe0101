"""The wheel's package list, written out by hand in pyproject.toml, covers every package folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed() -> None:
    listed = set(_setuptools()["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("vidfeat", "heads")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
    assert {p for p in listed if not p.startswith("vidfeat_cli")} <= on_disk


def test_cli_installs_under_a_name_that_cannot_clash() -> None:
    cfg = _setuptools()
    assert cfg["package-dir"] == {"vidfeat_cli": "cli"}
    assert "cli" not in cfg["packages"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert all(target.startswith("vidfeat_cli.") for target in scripts.values())
