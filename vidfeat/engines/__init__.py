"""Extraction engines: where the decode -> embed -> store loop runs.

Each engine is one module of this package that registers a function ``run(cfg) ->
ExtractSummary`` in ``ENGINES``: ``local`` (this machine: decode processes feeding one
backbone; marked ``@backbone_here``) and ``ray`` (a Ray cluster: decode tasks feeding
embedding actors). Importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

from vidfeat.engines import local, ray  # noqa: F401 - each module registers its engine
from vidfeat.engines.base import ENGINES, runs_backbone_here

__all__ = ["ENGINES", "runs_backbone_here"]
