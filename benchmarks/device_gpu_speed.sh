#!/usr/bin/env bash
# One device call (a lent GPU) for the GPU path of issue "deploy on the line": trained runs give the CPU's
# numbers on the GPU per precision (benchmarks/gpu_check.py), and each run's batch-1 latency, eager and as a
# captured CUDA graph, and throughput at batch 256 per precision (benchmarks/speed.py --device "$DEVICE"), plus the
# default model with a random head on the real encoder. Prepare here first (device_data/ is git-ignored):
#   python benchmarks/gpu_check.py pack --runs runs/ablation/bottle_line_lite/seed0 \
#     runs/ablation/bottle_line_lite/seed0_bank4096
# then one call: run(command="bash benchmarks/device_gpu_speed.sh", carry=["device_data"], timeout_s=600).
# The eight files it writes under $OUT (gpu_check*, speed_gpu_*) go into benchmarks/results/. A dry run here:
#   DEVICE=cpu REPEATS=2 OUT=/tmp/out bash benchmarks/device_gpu_speed.sh
set -euo pipefail
OUT=${OUT:-/tmp/out} DEVICE=${DEVICE:-cuda} REPEATS=${REPEATS:-200}
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1  # no install: the machine has no network
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv
runs=(device_data/runs/*)
python3 benchmarks/gpu_check.py check --runs "${runs[@]}" --data device_data/bottle --device "$DEVICE" \
  --results "$OUT" --name gpu_check
for run in "${runs[@]}"; do
  python3 benchmarks/speed.py --run "$run" --device "$DEVICE" --engines torch --repeats "$REPEATS" \
    --results "$OUT" --name "speed_gpu_$(basename "$run")"
done
python3 benchmarks/speed.py --config configs/mobilenet_v2_tf.yaml --device "$DEVICE" --engines torch --repeats "$REPEATS" \
  --set model.encoder.weights=device_data/weights/mobilenet_v2_imagenet.pth --results "$OUT" --name speed_gpu_default
