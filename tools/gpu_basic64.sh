#!/usr/bin/env bash
# The basic U-Net at the paper's width (64 base filters, 31 M parameters), which the 2-core CPU
# trains at ~2 img/s, trained on a lent GPU with the default recipe for the results table.
# Usage on the device: bash tools/gpu_basic64.sh "$OUT"   (data in .gpudata, wheels in .whl)
set -u
out=${1:-gpu_runs}
mkdir -p "$out"
. "$(dirname "$0")/gpu_env.sh" || exit 1  # the carried wheels, Keras on JAX
start=$(date +%s)
timeout 185 python3 train.py --data .gpudata --model basic --out /tmp/runs/basic64 --workers 8 --verbose 2 \
  > "$out/basic64.log" 2>&1
echo "rc=$? wall_s=$(( $(date +%s) - start ))" | tee -a "$out/basic64.log"
cp /tmp/runs/basic64/history.csv /tmp/runs/basic64/metrics.json /tmp/runs/basic64/config.json "$out/" 2>/dev/null
tail -12 "$out/basic64.log"
