#!/usr/bin/env bash
# The CUDA checks and figures on a GPU node, written beside the CPU ones (benchmarks/results/).
#
#   bash benchmarks/gpu.sh                 # from the repository root, on a machine with CUDA
#   WORKERS=8 BATCH=512 bash benchmarks/gpu.sh
#   STEPS=tests bash benchmarks/gpu.sh     # only the CUDA tests
#
# Steps (STEPS, comma-separated; default all three):
#   tests     the tests that need a CUDA device (tests/*/test_cuda.py): every CUDA runtime x
#             precision against the CPU's fp32 on real frames, page-locked staging, no host
#             synchronisation while a batch is launched, `vidfeat extract --device cuda` against
#             the CPU store, `heads train --device cuda` against the CPU run;
#   backbone  every runtime x precision that runs on CUDA against the CPU's fp32 features on
#             the same real frames (fidelity, frames/s at BATCH), and frames/s per batch size
#             with cuDNN's algorithm search off and on (SWEEP)
#             -> benchmarks/results/backbone_gpu.json;
#   extract   benchmarks.extract with --device cuda on the same clips: backbone alone in fp32
#             and fp16 at BATCH; end to end (`vidfeat extract --device cuda --precision fp16
#             --batch-size BATCH`) and the plain loop on the GPU; backbone cost 0 (a no-op
#             backbone of the same shapes) against decode alone with the same workers; decode
#             frames/s per worker and the decode workers (cores) one GPU needs at its fp16 rate;
#             audio and peak RSS with N and 2N videos at AUDIO_RESOLUTION ('' to skip)
#             -> benchmarks/results/$NAME.json, nvidia-smi's view of the device beside it.
# A failed step does not stop the next; the script exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-$(nproc)}        # one decode worker per core
BATCH=${BATCH:-256}
VIDEOS=${VIDEOS:-$WORKERS}          # at least one clip per worker keeps every worker busy
CLIP_SECONDS=${CLIP_SECONDS:-60}
RESOLUTIONS=${RESOLUTIONS:-360p,720p}
AUDIO_RESOLUTION=${AUDIO_RESOLUTION-360p}
SWEEP=${SWEEP:-32,64,128,256,512,1024}
STEPS=${STEPS:-tests,backbone,extract}
VARIANTS=${VARIANTS:-}              # backbone step: runtime:precision,... (default: all on CUDA)
PYTEST_K=${PYTEST_K:-}              # tests step: a pytest -k expression
NAME=${NAME:-extract_gpu}

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")' || exit 1
mkdir -p benchmarks/results
failed=()

run_step() {  # name command...: runs the step if STEPS names it, and notes a failure
  local name=$1
  shift
  [[ ",$STEPS," == *",$name,"* ]] || return 0
  echo "== $name" >&2
  "$@" || failed+=("$name")
}

select=()
[[ -n $PYTEST_K ]] && select=(-k "$PYTEST_K")
run_step tests "$PY" -m pytest -q -p no:cacheprovider -rs --durations=10 "${select[@]}" \
  tests/vidfeat/test_cuda.py tests/heads/test_cuda.py

variants=()
[[ -n $VARIANTS ]] && variants=(--variants "$VARIANTS")
run_step backbone "$PY" -m benchmarks.backbone --device cuda --batch-size "$BATCH" \
  --frames "$((2 * BATCH))" --batch-sweep "$SWEEP" "${variants[@]}" \
  --out benchmarks/results/backbone_gpu.json

extract_step() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    > "benchmarks/results/${NAME}_device.csv"
  "$PY" -m benchmarks.extract \
    --device cuda --precision fp16 --backbone-precisions fp32,fp16 \
    --batch-size "$BATCH" --backbone-batch "$BATCH" \
    --workers "$WORKERS" --videos "$VIDEOS" --seconds "$CLIP_SECONDS" \
    --resolutions "$RESOLUTIONS" --audio-resolution "$AUDIO_RESOLUTION" --name "$NAME"
}
run_step extract extract_step

if ((${#failed[@]})); then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
