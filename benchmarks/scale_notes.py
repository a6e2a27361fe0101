"""How each figure of benchmarks/scale.py should grow on a real cluster, and what breaks first,
computed from the measured per-part and per-video costs. Each note holds the derived figures
and one sentence per question; a section that was not run has no note."""

from __future__ import annotations

import math
from collections.abc import Callable

# docs/store-format.md ("Listing") and results/objstore.json, measured against moto: opening a
# Zarr store costs about 40 requests per part of up to 4096 videos (65 before s3fs's size
# request before each GET was dropped); each further 4096 videos add one chunk per table column
# (12 columns).
S3_REQUESTS_PER_SMALL_PART = 40
TABLE_COLUMNS = 12
TABLE_CHUNK_VIDEOS = 4096
# InceptionV3's input travels to the embedding actor preprocessed: 299 x 299 x 3 float32.
RAY_FRAME_BYTES = 299 * 299 * 3 * 4
MIB = 2**20


def s3_open_requests(videos: int, parts: int) -> int:
    per_part = math.ceil(videos / max(1, parts))
    extra_chunks = max(0, math.ceil(per_part / TABLE_CHUNK_VIDEOS) - 1)
    return parts * (S3_REQUESTS_PER_SMALL_PART + TABLE_COLUMNS * extra_chunks)


def _two_point(key: str, big: dict, small: dict | None) -> dict:
    """``key`` of the open probe split into a cost per video and a fixed cost per part, from
    two stores with the same parts (the flat store and the index store), when both ran and
    the split is not lost in noise; else all of it per video (an upper bound)."""
    out = {f"{key}_per_video_upper_bound": big[key] / big["videos"]}
    if small and small["parts"] == big["parts"] and small["videos"] < big["videos"]:
        per_video = (big[key] - small[key]) / (big["videos"] - small["videos"])
        per_part = (small[key] - per_video * small["videos"]) / small["parts"]
        if per_video > 0 and per_part >= 0:
            out[f"{key}_per_video"], out[f"{key}_per_part"] = per_video, per_part
    return out


def index_note(p: dict) -> dict:
    index = p["index"]
    n, parts = index["open"]["videos"], index["open"]["parts"]
    small = (p.get("flat") or {}).get("open_probe")
    time_costs = _two_point("open_s", index["open"], small)
    rss_costs = _two_point("held_rss_mib", index["open"], small)
    per_video_s = time_costs.get("open_s_per_video", time_costs["open_s_per_video_upper_bound"])
    per_video_mib = rss_costs.get(
        "held_rss_mib_per_video", rss_costs["held_rss_mib_per_video_upper_bound"]
    )
    per_video_b = per_video_mib * MIB
    figures = {
        **time_costs,
        **rss_costs,
        "index_rss_bytes_per_video": per_video_b,
        "open_peak_over_baseline_mib": index["open"]["peak_over_baseline_mib"],
        "index_rss_gib_at_10M_videos": per_video_b * 1e7 / 2**30,
        "index_rss_gib_at_100M_videos": per_video_b * 1e8 / 2**30,
        "open_s_at_10M_videos": per_video_s * 1e7,
        "s3_open_requests_now": s3_open_requests(n, parts),
        "s3_open_requests_at_10M_videos_1000_parts": s3_open_requests(10_000_000, 1000),
        "open_writer_s": index["append_writer"]["open_writer_s"],
        "open_writer_rss_mib": index["append_writer"]["peak_rss_mib"],
    }
    return {
        "figures": figures,
        "grows": (
            "open_store reads every part's per-video table into one pandas table and a pandas "
            "index of its ids, so its time and memory grow linearly with videos (per part: a "
            "group document and 12 column arrays); every process that opens the store pays it: "
            "each DataLoader worker, each DDP rank, each Ray embedding worker. A random read "
            "costs the same at any size (one part, one or two chunks)."
        ),
        "breaks_first": (
            f"memory of the index: {per_video_b:.0f} bytes per video in every reading process, "
            f"{figures['index_rss_gib_at_100M_videos']:.1f} GiB at 100M videos, times the "
            "processes per node; on an object store the open is "
            f"{figures['s3_open_requests_now']} requests now "
            f"({figures['s3_open_requests_at_10M_videos_1000_parts']} at 10M videos in 1000 "
            "parts), issued part after part, so high-latency storage hits first. Opening a "
            "writer reads every committed id too "
            f"({figures['open_writer_s']:.1f} s here), paid by every new shard or Ray worker."
        ),
    }


def train_note(p: dict) -> dict:
    t = p["train"]
    rate = t["videos_read_per_s"]
    return {
        "figures": {
            "videos_read_per_s": rate,
            "ms_per_video": 1000 / rate,
            "hours_per_pass_of_100M_videos_one_reader": 1e8 / rate / 3600,
            "peak_rss_mib": t["peak_rss_mib"],
        },
        "grows": (
            "reading is per video (locate, read the chunk file, crc32c, decompress), so it "
            "grows with DataLoader workers and DDP ranks, each reading its own videos, until the "
            "disk or the object store's request rate is reached; the start-up (open, splits, "
            "label encoding) grows with the videos in the store and is paid once per process."
        ),
        "breaks_first": (
            "per-video request latency on an object store (every read is at least one GET per "
            "stream, one per touched chunk), then the per-process index memory above multiplied "
            "by the DataLoader workers of every rank."
        ),
    }


def flat_note(p: dict) -> dict:
    check = p["flat"]["check"]
    slope = check.get("rss_slope_mib_per_1k_steps")
    figures = {"flat": check.get("flat"), "rss_slope_mib_per_1k_steps": slope}
    if slope is not None:
        figures["growth_mib_per_1M_steps_if_linear"] = slope * 1000
    return {
        "figures": figures,
        "grows": (
            "training memory should depend on the batch, the model, the index of the store and "
            "the bound of the decoded-chunk cache (--cache-mb per reading process), not on steps "
            "or videos read; the slope after the first pass is the check."
        ),
        "breaks_first": (
            "a positive slope would be a per-step or per-video leak (history kept per "
            "evaluation is a few hundred bytes); at a flat slope, the index memory of the store "
            "is what grows with the store."
        ),
    }


def ray_note(p: dict) -> dict:
    rows = p["ray"]["rows"]
    base = rows[0]["decode_alone"]["frames_per_s"] / rows[0]["decode_workers"]
    efficiency = {
        str(r["decode_workers"]): r["decode_alone"]["frames_per_s"] / (base * r["decode_workers"])
        for r in rows
    }
    peak = max(r["decode_alone"]["frames_per_s"] for r in rows)
    return {
        "figures": {
            "decode_frames_per_s_per_worker": base,
            "decode_scaling_efficiency": efficiency,
            "object_store_mib_per_s_at_best_decode": peak * RAY_FRAME_BYTES / MIB,
            "decode_workers_per_1000_frames_per_s_gpu": 1000 / base,
        },
        "grows": (
            "decoding grows with decode CPUs (independent videos) until the embedding workers "
            "(GPUs) are fed; end to end grows with --embed-workers while decoding keeps up."
        ),
        "breaks_first": (
            "frames travel preprocessed as float32 (~1 MiB per frame) through Ray's object "
            "store and network: a GPU embedding 1,000 frames/s needs ~1 GiB/s in; and each "
            "new embedding worker opens a writer, reading every committed id (index note)."
        ),
    }


def ddp_note(p: dict) -> dict:
    runs = p["ddp"]["runs"]
    params = runs[-1].get("trainable_params") or 0
    return {
        "figures": {
            "speedup_by_ranks": {str(r["ranks"]): r["speedup"] for r in runs},
            "allreduce_mib_per_step": params * 4 / MIB,
            "allreduce_ms_per_step_at_10_gbit": 2 * params * 4 * 8 / 10e9 * 1000,
        },
        "grows": (
            "with one GPU per rank, speed-up should approach the ranks until the per-step "
            "gradient all-reduce or each rank's store reads dominate; on shared CPU cores, as "
            "here, 2 ranks only split the same cores."
        ),
        "breaks_first": (
            "the all-reduce of every parameter every step (fixed per step, whatever the batch): "
            "small heads are latency-bound on it across nodes; then each rank's own store open "
            "(index memory and time, per rank)."
        ),
    }


NOTES: dict[str, Callable[[dict], dict]] = {
    "index": index_note,
    "train": train_note,
    "flat": flat_note,
    "ray": ray_note,
    "ddp": ddp_note,
}


def growth_notes(payload: dict) -> dict:
    return {name: note(payload) for name, note in NOTES.items() if name in payload}
