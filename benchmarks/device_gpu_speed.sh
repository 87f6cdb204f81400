#!/usr/bin/env bash
# One device call (a lent GPU): the GPU path of issue "deploy on the line". Batch-1 latency (eager and CUDA
# graph) and large-batch throughput per precision, with the largest map difference to float32, of the
# default model (light head: strides 8 and 16, MSA at 16, patch matching, score banks) and of the spec's full
# head. Random weights: timing does not depend on them, so no data needs to travel.
#   run(command="bash benchmarks/device_gpu_speed.sh", timeout_s=600)
# The files it writes under $OUT (speed_gpu*.json/.md) go into benchmarks/results/.
set -euo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-deps -e . 2>/dev/null || python3 -m pip install -q -e .
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 benchmarks/speed.py --config configs/mobilenet_v2_tf.yaml --device cuda \
  --engines torch --results "$OUT" --name speed_gpu --repeats 200
python3 benchmarks/speed.py --config configs/mobilenet_v2_tf.yaml --device cuda \
  --engines torch --results "$OUT" --name speed_gpu_full_head --repeats 200 \
  --set "model.head_scales=[0,1,2]" --set "model.msa_scales=[0,1,2]"
