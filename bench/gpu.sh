#!/usr/bin/env bash
# The bench.py table on a CUDA device, in about 5 minutes: the conv ceiling, every preset's
# training (fp32 baseline vs train.py's fast settings), sampling and Inception throughput; then
# what each setting buys on the `base` preset, fused AdamW and torch.compile included (compile
# time shown). Prints the device name first; writes bench/results/bench-gpu*.json.
# On cuda, bench.py measures in its own process (--in-process auto): one subprocess per
# measurement cost 17-20 s of start-up on an H100 machine, which made the first version of this
# script spend 8 minutes and skip most rows (docs/benchmarks.md).
#
#     bash bench/gpu.sh                  # PYTHON=python3 bash bench/gpu.sh to pick the interpreter
#
# Each part has a --budget (measurements not started by then are skipped, the table shows what
# was measured) and a hard timeout, so one slow part cannot eat the others' time. torch.compile
# runs in its own part: a long compile cannot cost the study's table.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)' || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader || true

echo "== part 1: conv ceiling, training, sampling, evaluation (every preset)"
timeout 240 $PY bench/bench.py --device cuda --repeats 1 --parts conv,train,sample,eval \
    --steps 10 --sample-batch 256 --eval-batch 128 --budget 150 \
    --out bench/results/bench-gpu.json "$@"

echo "== part 2: what each setting buys (preset base)"
timeout 150 $PY bench/bench.py --device cuda --repeats 1 --parts study --study-preset base \
    --study-rows "baseline,foreach,bf16 + channels_last,fused,fast:" --no-compile --steps 10 \
    --sample-batch 256 --budget 90 --out bench/results/bench-gpu-study.json "$@"

echo "== part 3: torch.compile against the same fast settings (preset base)"
timeout 180 $PY bench/bench.py --device cuda --repeats 1 --parts study --study-preset base \
    --study-rows "fast" --steps 10 --sample-batch 256 \
    --out bench/results/bench-gpu-compile.json "$@"
