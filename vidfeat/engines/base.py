"""The engine registry: name -> ``run(cfg: ExtractConfig) -> ExtractSummary``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vidfeat.registry import Registry

if TYPE_CHECKING:
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import ExtractSummary

ENGINES: Registry[Callable[[ExtractConfig], ExtractSummary]] = Registry("engine")
