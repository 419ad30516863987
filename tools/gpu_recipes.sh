#!/usr/bin/env bash
# Recipe comparison and JAX training benchmark on a lent GPU machine (the `device` tool).
# Runs train.py with KERAS_BACKEND=jax at three input sizes with about equal CPU-time budgets
# (128x128 for 30 epochs, 160x208 for 20, 192x256 for 15), and one 128x128 run without augmentation.
# Expects the data in .gpudata/{images,masks} and Keras's wheels in .whl/ (see docs/benchmarks.md).
# Usage on the device: bash tools/gpu_recipes.sh "$OUT"
set -u
out=${1:-gpu_runs}
mkdir -p "$out"
. "$(dirname "$0")/gpu_env.sh" || exit 1  # the carried wheels, Keras on JAX
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" | tee -a "$out/device.txt"
run() {  # name, seconds allowed, train.py arguments...
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" python3 train.py --data .gpudata --out "/tmp/runs/$name" --workers 8 --verbose 2 "$@" \
    > "$out/$name.log" 2>&1
  echo "$name rc=$? wall_s=$(( $(date +%s) - start ))" | tee -a "$out/summary.txt"
  cp "/tmp/runs/$name/history.csv" "$out/$name.history.csv" 2>/dev/null
  grep -E "^(dice|jaccard|threshold_jaccard) |best validation" "$out/$name.log" | tee -a "$out/summary.txt"
}
run r128 140 --image-size 128 128 --epochs 30
run r160 140 --image-size 160 208 --epochs 20
run r192 140 --image-size 192 256 --epochs 15
run r128_noaug 90 --image-size 128 128 --epochs 30 --no-augment
