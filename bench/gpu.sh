#!/usr/bin/env bash
# Issue 17 on a CUDA device, as one prepared script that fits in 15 minutes of device time with
# the machine's start-up: the training step before ("eager": memmap batches gathered on the host,
# the non-finite guard's host sync every step, fused AdamW) against the new step (the split held
# on the GPU and gathered there, the guard decided on the device), for tiny/small/base at 32 px
# and base64 at 64 px: img/s and % of the bf16 conv ceiling measured in the same run; then what
# each half of the new step buys on `base`. Prints the device first; every measurement is saved
# as it comes (OUT/NAME.partial.json; `python bench/bench.py --retabulate FILE` prints its table)
# and each part ends with OUT/NAME.json.
#
#     bash bench/gpu.sh                           # PYTHON=python3 picks the interpreter
#     BENCH_OUT=$OUT bash bench/gpu.sh            # where the JSON goes (default bench/results)
#     BENCH_DEVICE=cpu bash bench/gpu.sh          # the same script on a CPU: tiny, 1 step, to
#                                                 # check its logic (numbers mean nothing)
#
# Measurements run in the bench's own process (--in-process yes): one subprocess per measurement
# cost 17-20 s of start-up on an H100 machine. Each part has a --budget (measurements not started
# by then are skipped, the table shows what was measured) and a hard timeout; the two timeouts
# add up to 7.5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEV=${BENCH_DEVICE:-cuda}
OUT=${BENCH_OUT:-bench/results}
mkdir -p "$OUT"

if [ "$DEV" = cuda ]; then
    $PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__)' || exit 1
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader || true
    PRESETS="tiny small base base64"; STUDY=base; STEPS=10; ROUNDS=7; CONV=()
else
    PRESETS="tiny"; STUDY=tiny; STEPS=1; ROUNDS=1; CONV=(--conv-batch 2)
fi
COMMON=(--device "$DEV" --in-process yes --repeats 1 --steps "$STEPS" --conv-rounds "$ROUNDS" "${CONV[@]}")

echo "== part 1: conv ceiling; eager step vs the new step, presets: $PRESETS"
timeout 290 $PY bench/bench.py "${COMMON[@]}" --parts conv,train --presets $PRESETS \
    --train-rows "eager,new step" --budget 230 --out "$OUT/bench-gpu-step.json" "$@"

echo "== part 2: what each half of the new step buys (preset $STUDY)"
timeout 160 $PY bench/bench.py "${COMMON[@]}" --parts conv,study --study-preset "$STUDY" \
    --study-rows "eager step,+ data on device,+ sync-free guard,new step" --no-compile \
    --budget 110 --out "$OUT/bench-gpu-step-study.json" "$@"
