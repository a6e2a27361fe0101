"""The ``local`` engine: decode processes on this machine feed one backbone and one writer."""

from __future__ import annotations

import time

from vidfeat.config import ExtractConfig
from vidfeat.engines.base import ENGINES
from vidfeat.extraction import Extraction
from vidfeat.pipeline import ExtractSummary, log_resume, prepare, progress_bar
from vidfeat.signals import sigterm_as_interrupt


@ENGINES.register("local")
def run_local(cfg: ExtractConfig) -> ExtractSummary:
    """Extract this shard of the manifest into the part ``cfg.part_name``."""
    job = prepare(cfg)
    summary = job.summary
    # The SIGTERM handler is entered first so it still covers the writer's final commit.
    with sigterm_as_interrupt(), job.open_writer(cfg.part_name) as writer:
        done = writer.committed_ids("ok" if cfg.retry_failed else "any")
        todo = [e for e in job.entries if e.video_id not in done]
        summary.skipped = len(job.entries) - len(todo)
        log_resume(summary, cfg.out)
        extraction = Extraction(cfg, job.backbone, job.reduction, writer, summary, job.audio)
        summary.setup_s = time.monotonic() - job.started
        with progress_bar(len(todo), cfg.progress) as progress:
            extraction.run(todo, progress)
    return summary
