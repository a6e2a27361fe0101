"""The ``local`` engine: decode processes on this machine feed one backbone and one writer."""

from __future__ import annotations

import time

from vidfeat.config import ExtractConfig
from vidfeat.engines.base import ENGINES, backbone_here
from vidfeat.extraction import Extraction
from vidfeat.pipeline import ExtractJob, ExtractSummary, prepare, progress_bar
from vidfeat.signals import sigterm_as_interrupt


@ENGINES.register("local")
@backbone_here
def run_local(cfg: ExtractConfig) -> ExtractSummary:
    """Extract this shard of the manifest into the part ``cfg.part_name``."""
    # SIGTERM is Ctrl-C from the start (loading models can take a while), and the handler is
    # entered before the writer so it still covers the writer's final commit.
    with sigterm_as_interrupt():
        job = prepare(cfg)
        return _run(cfg, job)


def _run(cfg: ExtractConfig, job: ExtractJob) -> ExtractSummary:
    summary = job.summary
    with job.open_writer(cfg.part_name) as writer:
        todo = job.resume(writer.committed_ids("ok"), writer.committed_failures())
        extraction = Extraction(cfg, job.backbone, job.reduction, writer, summary, job.audio)
        summary.setup_s = time.monotonic() - job.started
        with progress_bar(len(todo), cfg.progress) as progress:
            extraction.run(todo, progress)
    return summary
