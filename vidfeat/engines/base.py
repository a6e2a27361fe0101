"""The engine registry: name -> ``run(cfg: ExtractConfig) -> ExtractSummary``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from vidfeat.registry import Registry

if TYPE_CHECKING:
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import ExtractSummary

ENGINES: Registry[Callable[[ExtractConfig], ExtractSummary]] = Registry("engine")

Run = TypeVar("Run", bound=Callable[..., object])


def backbone_here(run: Run) -> Run:
    """Mark an engine whose backbone runs in this process: ``--device auto`` and the default
    precision are then settled on this machine before it starts. Other engines' workers pick
    their devices later, wherever they run."""
    run.backbone_here = True  # type: ignore[attr-defined]
    return run


def runs_backbone_here(engine: str) -> bool:
    """Whether ``engine`` (a registered name) runs its backbone in this process."""
    return bool(getattr(ENGINES.get(engine), "backbone_here", False))
