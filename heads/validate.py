"""Field checks shared by the heads' frozen config dataclasses (``heads.config``,
``heads.models``): each raises ``ConfigError`` naming the field and the value it got."""

from __future__ import annotations

import math

from vidfeat.errors import ConfigError


def check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """An int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{name} must be {bounds}, got {value}")


def check_float(
    obj: object, name: str, low: float, high: float | None = None, *, open_low: bool = False
) -> None:
    """Check a float field and normalise ints to float (so JSON round trips compare equal)."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if math.isinf(value):  # --lr inf trains to NaN at the first step
        raise ConfigError(f"{name} must be a finite number, got {value}")
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high):
        sign = ">" if open_low else ">="
        bounds = f"{sign} {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{name} must be {bounds}, got {value}")
    object.__setattr__(obj, name, float(value))


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """One of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
