"""``--config`` files: JSON or YAML, checked key by key against the config dataclasses.

A file may be nested like a run's ``config.json`` (``head:`` and ``data:`` sections) or flat
like the command line (``hidden_size: 64``, or ``hidden-size: 64``). An unknown key is refused
with the closest known one, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError

# Written by heads into a run's config.json next to the training config; not options.
RUN_RECORD_KEYS = ("store", "finetune", "split_file")
_NESTED = ("head", "data")


def config_fields() -> dict[str, str]:
    """Every settable key -> the config it belongs to ("train", "head" or "data")."""
    from heads.config import DataConfig, TrainConfig
    from heads.models import HeadConfig

    fields = {f.name: "train" for f in dataclasses.fields(TrainConfig) if f.name not in _NESTED}
    fields.update({f.name: "head" for f in dataclasses.fields(HeadConfig)})
    fields.update({f.name: "data" for f in dataclasses.fields(DataConfig)})
    return fields


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {where}{hint}")


def flatten_config(data: object, where: str) -> dict[str, Any]:
    """``{field: value}`` from a nested or flat mapping; unknown keys are refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of settings, got {type(data).__name__}")
    fields = config_fields()
    flat: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key in RUN_RECORD_KEYS:
            continue
        if key in _NESTED:
            if not isinstance(value, dict):
                raise ConfigError(f"{key!r} in {where} must be a mapping")
            section = [name for name, owner in fields.items() if owner == key]
            for sub_key, sub_value in value.items():
                sub = str(sub_key).replace("-", "_")
                if sub not in section:
                    raise _unknown(sub, section, f"{where} ({key})")
                flat[sub] = sub_value
            continue
        if key not in fields:
            raise _unknown(key, [*fields, *_NESTED], where)
        flat[key] = value
    return flat


# YAML 1.1 (PyYAML's rules) reads a number with an exponent but no dot, such as 1e-3, as a
# string; YAML 1.2 and every other reader of configs read it as the float it looks like.
_YAML_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+0123456789"))
    return Loader


def recorded_split_file(path: Path) -> Path | None:
    """The --split-file a run's config.json records (None if it records none)."""
    value = _load(path).get("split_file") if path.suffix.lower() == ".json" else None
    return Path(value) if isinstance(value, str) and value else None


def read_config_file(path: Path) -> dict[str, Any]:
    """The flat settings of a JSON (``.json``) or YAML (any other suffix) file."""
    data = _load(path)
    return flatten_config({} if data is None else data, str(path))


def _load(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: plain data only
    except (ValueError, yaml.YAMLError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"cannot parse config {path}: {first}") from None
    return data
