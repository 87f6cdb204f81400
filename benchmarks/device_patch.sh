#!/usr/bin/env bash
# One device call (a lent GPU): the light head `patch_bank_light` (the default patch matching + score banks,
# head on strides 8 and 16 only; issue: deploy on the line) at the full schedule on bottle and screw, seeds
# 0-2, six processes at once, then the GPU speed of the default model and of the light one (random weights:
# timing does not depend on them). Needs device_data/ (python
# benchmarks/device_data.py) carried. Back here: python benchmarks/ablation.py --merge <files_at>/ablation.json
#   run(command="bash benchmarks/device_patch.sh", carry=["device_data"], timeout_s=600)
set -euo pipefail
OUT=${OUT:-/tmp/out}
python3 device_data/unpack.py device_data/bottle_webp device_data/bottle
python3 -m pip install -q --no-deps -e . 2>/dev/null || python3 -m pip install -q -e .
common=(--candidates patch_bank_light --data-root device_data --textures device_data/dtd
        --weights device_data/weights/mobilenet_v2_imagenet.pth --set train.device=cuda --set train.num_workers=2
        --results "$OUT")
for category in bottle screw; do
  for seed in 0 1 2; do
    python3 benchmarks/ablation.py --categories "$category" --seeds "$seed" "${common[@]}" \
      > "/tmp/${category}_${seed}.log" 2>&1 &
  done
done
wait
tail -n 2 /tmp/*_?.log
python3 benchmarks/speed.py --config configs/mobilenet_v2_tf.yaml --device cuda --engines torch --results "$OUT" --name speed_gpu --repeats 200
python3 benchmarks/speed.py --config configs/mobilenet_v2_tf.yaml --device cuda --engines torch --results "$OUT" --name speed_gpu_light --repeats 200 \
  --set "model.head_scales=[1,2]" --set 'model.msa_scales=[2]'
