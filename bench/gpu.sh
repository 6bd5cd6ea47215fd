#!/usr/bin/env bash
# The bench.py table on a CUDA device, in under 5 minutes: bf16 autocast, channels-last, fused
# AdamW for every preset at its own batch, plus the baseline / fast / fast+torch.compile rows on
# the `base` preset. Prints the device name first; writes bench/results/bench-gpu*.json.
#
#     bash bench/gpu.sh
#
# Written without a GPU to try it on (the development machine has none): the first run on a GPU
# is its test. Each part has its own timeout so that one slow part cannot eat the others' time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)'
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

# conv ceiling, every preset's training (fp32 vs fast), sampling, Inception: about 2.5 min
timeout 170 $PY bench/bench.py --device cuda --repeats 1 --parts conv,train,sample,eval \
    --steps 10 --sample-batch 256 --eval-batch 128 --out bench/results/bench-gpu.json "$@"

# what each setting buys on the GPU model, torch.compile included (its compile time is shown)
timeout 120 $PY bench/bench.py --device cuda --repeats 1 --parts study --study-preset base \
    --study-rows "baseline,bf16 + channels_last,fast" --steps 10 --sample-batch 256 \
    --out bench/results/bench-gpu-study.json "$@"
