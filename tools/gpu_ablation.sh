#!/usr/bin/env bash
# Issue 10's ablation on a lent GPU (the `device` tool), in one command: for each recipe, the five
# folds of protocol.py cv, trained at once, and one run on the default split (the model that recipe
# would ship), all recipes side by side; then protocol.py compare's table, the first recipe the baseline.
# One training leaves an H100 mostly idle at batch 16 (docs/benchmarks.md), so the runs share one GPU (how
# well is not measured yet: the progress lines log its use, for sizing the next call).
#
# Here first: bash tools/gpu_prepare.sh   (the data in .gpudata/, the wheels in .whl/)
# On the device: run(carry=['.gpudata', '.whl'], timeout_s=600,
#   command='bash tools/gpu_ablation.sh "$OUT" 560 default= zoom="--zoom 0.8 1.4"')
# (12 processes for 16 CPU cores; a third recipe, e.g. aspect="--image-size 96 128", makes 18 and fewer epochs each)
# Comes back in OUT: ablation.md, results.tar.gz (per-recipe protocol.md/.json, logs, every run's
#   config, history and metrics) and NAME.keras, the default-split run's best model of each recipe.
# Usage: bash tools/gpu_ablation.sh OUT SECONDS NAME="TRAIN.PY FLAGS" [NAME="FLAGS" ...]
#   SECONDS bounds the whole script. Environment for a dry run on a CPU: PYTHON (default python3, with
#   the .whl install), DATA (default .gpudata), EXTRA (flags added to every run, e.g. a tiny model),
#   FOLD_BY (default random; "order" for folds of consecutive ids, the default-split run unaffected),
#   FOLDS (default 5), WORK (default /tmp/ablation), SCORE_SECONDS (default 170).
set -u
if [ $# -lt 3 ]; then
  sed -n '2,/^set -u$/{/^set -u$/!p}' "$0"; exit 2  # the header above, as help
fi
out=$1; budget=$2; shift 2
deadline=$(( $(date +%s) + budget ))
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the script works from the repository's root
cd "$(dirname "$0")/.."
data=${DATA:-.gpudata}
work=${WORK:-/tmp/ablation}
extra=${EXTRA:-}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  . "$(dirname "$0")/gpu_env.sh" || exit 1  # the carried wheels, Keras on JAX
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 NO_ALBUMENTATIONS_UPDATE=1
rm -rf "$work"; mkdir -p "$work"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PYTHON" -c "import keras; print('keras', keras.__version__, keras.backend.backend())"; } | tee "$work/device.txt"

# Scoring 5 x 2,148 images under 5 conditions: its CPU side alone (shifting, resizing, post-processing,
# metrics) measured 6 ms per image and condition on the 2-core AMD machine, 65 s, and the model's calls
# come on top, so SCORE_SECONDS are kept for it and training gets what is left. Every run
# gets it as train.py's --time-budget, so however slowly the shared GPU goes, each run re-plans its
# epochs to finish (annealed, test report written) before the timeout would kill it; the epochs each
# run trained are in its config.json.
train_seconds=$(( deadline - $(date +%s) - ${SCORE_SECONDS:-170} ))
time_budget="--time-budget $(awk "BEGIN { m = ($train_seconds - 15) / 60; print (m > 0.05 ? m : 0.05) }")"
names=()
for recipe in "$@"; do
  name=${recipe%%=*}; flags=${recipe#*=}
  names+=("$name")
  # $time_budget, $flags and $extra are split into words on purpose: they hold several words.
  # shellcheck disable=SC2086
  timeout "$(( deadline - $(date +%s) ))" "$PYTHON" protocol.py cv --out "$work/$name" --folds "${FOLDS:-5}" \
    --parallel "${FOLDS:-5}" -- --data "$data" --workers 1 --fold-by "${FOLD_BY:-random}" $time_budget $flags $extra \
    > "$work/$name.cv.log" 2>&1 &
  # shellcheck disable=SC2086
  timeout "$train_seconds" "$PYTHON" train.py --data "$data" --workers 1 --verbose 2 $time_budget $flags $extra \
    --out "$work/${name}_final" > "$work/$name.final.log" 2>&1 &
done
while [ -n "$(jobs -r)" ]; do  # a line every 30 s: GPU use, epochs done per run (for sizing the next call)
  sleep 30
  echo "$(date +%T) gpu $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)" \
    "epochs done: $(for f in "$work"/*/history.csv "$work"/*/fold*/history.csv; do
    [ -f "$f" ] && n=$(( $(wc -l < "$f") - 1 )) && printf '%s=%s ' "${f#"$work"/}" "$(( n > 0 ? n : 0 ))"; done)"
done
wait

reports=(); labels=()
for name in "${names[@]}"; do
  if [ -f "$work/$name/protocol.json" ]; then
    reports+=("$work/$name/protocol.json"); labels+=("$name")
  else
    echo "$name: no protocol (see $name.cv.log)"; tail -5 "$work/$name.cv.log"
  fi
  if [ -f "$work/${name}_final/best.keras" ]; then
    cp "$work/${name}_final/best.keras" "$out/$name.keras"
  fi
  grep -E "^(dice|jaccard|threshold_jaccard) |best validation" "$work/$name.final.log"
done
if [ "${#reports[@]}" -ge 2 ]; then
  "$PYTHON" protocol.py compare "${reports[@]}" --labels "${labels[@]}" --out "$work/ablation.md" \
    2> "$work/compare.log" && cp "$work/ablation.md" "$out/"
fi
for name in "${names[@]}"; do [ -f "$work/$name/protocol.md" ] && cat "$work/$name/protocol.md"; done
tar czf "$out/results.tar.gz" --exclude='*.keras' --exclude='split.json' --exclude='cases.png' -C "$(dirname "$work")" \
  "$(basename "$work")"
ls -la "$out"
