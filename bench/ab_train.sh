#!/usr/bin/env bash
# A/B of `diffscape train` throughput between two source trees, interleaved (the machine is
# shared and noisy: compare the two in the same run, as a ratio).
# usage: bench/ab_train.sh OLD_SRC NEW_SRC DATASET [REPEATS] [STEPS]
# e.g.   git archive d73ae0d src | tar -x -C /tmp/old && bench/ab_train.sh /tmp/old/src src data/synth
set -euo pipefail
old=$1 new=$2 data=$3 repeats=${4:-3} steps=${5:-150}
py=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
for i in $(seq 1 "$repeats"); do
  for side in old new; do
    src=$([ "$side" = old ] && echo "$old" || echo "$new")
    rm -rf "$out/run"
    PYTHONPATH=$src OMP_WAIT_POLICY=PASSIVE "$py" -m diffscape train "$data" --out "$out/run" \
      --conditional --set train.steps="$steps" --set train.checkpoint_every_steps=0 \
      --set train.sample_every_steps=0 --set train.log_every_steps=25 --no-progress >/dev/null 2>&1
    # img/s over the logged windows after the first (warm-up) one
    ips=$("$py" -c "import json,statistics,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(round(statistics.median(x['images_per_second'] for x in r[1:]),1))" "$out/run/metrics.jsonl")
    echo "$i $side $ips"
  done
done
rm -rf "$out"
