#!/usr/bin/env bash
# Extraction figures on a GPU node, written beside the CPU ones (benchmarks/results/).
#
#   bash benchmarks/gpu.sh                 # from the repository root, on a machine with CUDA
#   WORKERS=8 BATCH=512 bash benchmarks/gpu.sh
#
# One run of benchmarks.extract with --device cuda measures, on the same clips:
#   - backbone alone in fp32 and fp16 at BATCH (a batch that fills the device);
#   - end to end (`vidfeat extract --device cuda --precision fp16 --batch-size BATCH`) and the
#     plain loop on the GPU, wall time;
#   - backbone cost 0: the pipeline with a no-op backbone of the same shapes (host layout, copy
#     to the device and cast still run) against decode alone with the same workers;
#   - decode frames/s per worker, and from the fp16 backbone-alone rate the decode workers
#     (cores) one GPU needs;
#   - audio end to end and peak RSS with N and 2N videos at 360p.
# -> benchmarks/results/extract_gpu.json, and nvidia-smi's view of the device beside it.
# Then every runtime x precision that runs on CUDA against the CPU's fp32 features on the same
# real frames (fidelity, and frames/s at BATCH): the check that fp16, what --precision auto
# picks on CUDA, stays within 0.01 of fp32 there too -> benchmarks/results/backbone_gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-$(nproc)}        # one decode worker per core
BATCH=${BATCH:-256}
VIDEOS=${VIDEOS:-$WORKERS}          # at least one clip per worker keeps every worker busy
CLIP_SECONDS=${CLIP_SECONDS:-60}
RESOLUTIONS=${RESOLUTIONS:-360p,720p}

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
mkdir -p benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  > benchmarks/results/extract_gpu_device.csv

"$PY" -m benchmarks.extract \
  --device cuda --precision fp16 --backbone-precisions fp32,fp16 \
  --batch-size "$BATCH" --backbone-batch "$BATCH" \
  --workers "$WORKERS" --videos "$VIDEOS" --seconds "$CLIP_SECONDS" \
  --resolutions "$RESOLUTIONS" --name extract_gpu

"$PY" -m benchmarks.backbone --device cuda --batch-size "$BATCH" --frames "$BATCH" \
  --out benchmarks/results/backbone_gpu.json
