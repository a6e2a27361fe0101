"""``vidfeat info``: what a store holds, how it was made, and what failed."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vidfeat.backbones.base import describe_backbone
from vidfeat.location import Location, RemotePath, as_location
from vidfeat.store import open_store
from vidfeat.store.base import NO_AUDIO_NOTE
from vidfeat.store.claim import parts_being_written
from vidfeat.store.reader import StoreReader


def describe_features(reader: StoreReader, stream: str | None = None) -> dict[str, Any]:
    """What ``vidfeat info`` shows about one stream: size, dtype, PCA, quantization."""
    spec = reader.streams[reader.stream_name(stream)]
    itemsize = np.dtype(spec.dtype).itemsize
    table = reader.videos
    n_frames = int(table.loc[table["status"] == "ok", "n_frames"].sum()) if len(table) else 0
    pca = spec.attrs.get("pca", reader.attrs.get("pca"))
    return {
        "dim": spec.dim,
        "dtype": str(np.dtype(spec.dtype)),
        "bytes_per_frame": spec.dim * itemsize,
        "n_frames": n_frames,
        "feature_bytes": n_frames * spec.dim * itemsize,
        "quantization": spec.quantization,
        "attrs": spec.attrs,
        "pca": None
        if not pca
        else {
            k: pca.get(k)
            for k in ("source", "input_dim", "output_dim", "variance_kept", "sha256", "file")
            if k in pca  # an audio stream's PCA (--audio-pca) records its file and sha256
        },
    }


def _disk_bytes(path: Location) -> int:
    paths = [path, path.with_name(path.name + ".parts")]
    if isinstance(path, RemotePath):  # one recursive listing per prefix
        fs, _ = path.filesystem()
        return sum(_remote_bytes(fs, p.filesystem()[1]) for p in paths)
    total = 0
    for p in paths:
        if p.is_file():
            total += _size(str(p))
        elif p.is_dir():
            for root, _dirs, files in os.walk(p):
                total += sum(_size(os.path.join(root, f)) for f in files)
    return total


def _size(path: str) -> int:
    # A writer's temporary file (zarr's *.partial, an HDF5 segment's .tmp) may be renamed
    # between the listing and this: info on a store being written must not fail on it.
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _remote_bytes(fs: Any, key: str) -> int:
    try:
        return int(fs.du(key, total=True))
    except FileNotFoundError:
        return 0


def store_summary(path: str | os.PathLike | RemotePath) -> dict[str, Any]:
    """A JSON-friendly summary of a store."""
    path = as_location(path)
    with open_store(path) as r:
        videos = r.videos
        ok = videos[videos["status"] == "ok"]
        failed = videos[videos["status"] != "ok"]
        attrs = r.attrs
        backbone = describe_backbone(attrs)
        labels = sorted({x for labs in ok["labels"] for x in labs})
        streams = {name: describe_features(r, name) for name in r.streams}
        return {
            "path": str(path),
            "format": r.format,
            "schema_version": r.meta.schema_version,
            "level": r.level,
            "verified": r.verified,
            "created": r.meta.created,
            "videos": len(videos),
            "ok": len(ok),
            "failed": len(failed),
            "failures_by_status": failed["status"].value_counts().to_dict(),
            "frames": int(ok["n_frames"].sum()),
            "frames_per_video": {
                "min": int(ok["n_frames"].min()) if len(ok) else 0,
                "mean": float(ok["n_frames"].mean()) if len(ok) else 0.0,
                "max": int(ok["n_frames"].max()) if len(ok) else 0,
            },
            "parts": sorted(videos["part"].unique().tolist()),
            # Parts a live writer holds: the counts are those committed so far.
            "being_written": parts_being_written(path),
            "labels": labels,
            "streams": streams,
            # Videos extracted with an audio stream but without an audio track (None: no audio).
            "no_audio": int((ok["reason"] == NO_AUDIO_NOTE).sum()) if "audio" in streams else None,
            # The only stream, for single-stream stores (None with several: see "streams").
            "features": next(iter(streams.values())) if len(streams) == 1 else None,
            "disk_bytes": _disk_bytes(path),
            "backbone": backbone["name"],
            "weights": backbone["weights"],
            "fps": attrs.get("fps"),
            "max_frames": attrs.get("max_frames"),
            "decoder": attrs.get("decoder"),  # part of the identity: a store holds one's frames
            "precision": attrs.get("precision"),
            "attrs": attrs,
            "failures": [
                {"video_id": v, "status": s, "reason": why, "source_path": src}
                for v, s, why, src in failed[
                    ["video_id", "status", "reason", "source_path"]
                ].itertuples(index=False)
            ],
        }


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_summary(s: dict[str, Any], show_failures: bool = True, max_failures: int = 50) -> str:
    fpv = s["frames_per_video"]
    checks = "checksummed" if s["verified"] else "unverified: schema 1 has no checksums"
    lines = [
        f"store       {s['path']} ({s['format']}, schema v{s['schema_version']}, {checks})",
        f"level       {s['level']}"
        + (" (one vector per video and stream, no frames)" if s["level"] == "video" else ""),
        f"videos      {s['videos']} ({s['ok']} ok, {s['failed']} failed) "
        f"in {len(s['parts'])} part(s)"
        + (
            f"; being written (part {', '.join(s['being_written'])}): committed so far"
            if s.get("being_written")
            else ""
        ),
        f"frames      {s['frames']} (per video min {fpv['min']}, mean {fpv['mean']:.1f}, "
        f"max {fpv['max']})",
        *_stream_lines(s["streams"]),
        *(
            [f"no audio    {s['no_audio']} ok video(s) without an audio track"]
            if s.get("no_audio") is not None
            else []
        ),
        f"disk        {_mib(s['disk_bytes'])}",
        f"backbone    {s['backbone']} weights={s['weights']} precision={s['precision']}",
        f"sampling    fps={s['fps']} max_frames={s['max_frames']}"
        + (f" decoder={s['decoder']}" if s.get("decoder") else ""),
        f"labels      {len(s['labels'])}: {', '.join(map(_label_text, s['labels'][:20]))}"
        + (" ..." if len(s["labels"]) > 20 else ""),
    ]
    if s["failed"]:
        by = ", ".join(f"{k}: {v}" for k, v in s["failures_by_status"].items())
        lines.append(f"failures    {by}")
        if show_failures:
            for fail in s["failures"][:max_failures]:
                lines.append(f"  {fail['video_id']}  [{fail['status']}] {fail['reason']}")
            if len(s["failures"]) > max_failures:
                lines.append(f"  ... {len(s['failures']) - max_failures} more (use --json)")
    return "\n".join(lines)


def _label_text(label: str) -> str:
    """A label as listed: quoted when a comma or edge space would make the list ambiguous."""
    return repr(label) if "," in label or label != label.strip() else label


def _stream_lines(streams: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, f in streams.items():
        lines += [
            f"stream      {name}: {f['dim']}-d {f['dtype']}, {f['bytes_per_frame']} bytes/frame, "
            f"{_mib(f['feature_bytes'])} of features",
            f"  pca       {_describe_pca(f.get('pca'))}",
            f"  quantized {f['quantization'] or 'no'}",
        ]
    return lines


def _describe_pca(pca: dict | None) -> str:
    if not pca:
        return "none"
    if "input_dim" not in pca:  # VGGish's own PCA parameters, recorded by file
        return f"{pca.get('file')} (sha256 {str(pca.get('sha256'))[:16]})"
    kept = pca.get("variance_kept")
    kept_txt = f", variance kept {kept:.3f}" if isinstance(kept, float) else ""
    return f"{pca.get('source')} {pca.get('input_dim')} -> {pca.get('output_dim')}{kept_txt}"
