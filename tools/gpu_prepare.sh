#!/usr/bin/env bash
# Run HERE before a lent GPU run (the `device` tool): puts a copy of the data in .gpudata/ and the
# wheels that the device's Python 3.12 image lacks in .whl/ (Keras and albumentations with their
# missing dependencies, at the versions this venv runs), both kept out of git. Then, on the device:
#   run(command='bash tools/gpu_ablation.sh ...', carry=['.gpudata', '.whl'])
# Usage: bash tools/gpu_prepare.sh [DATA_DIR]   (default: ../shared/data/isic2017)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/isic2017}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for path in /.whl/ /.gpudata/; do
  grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >> "$exclude"
done
python=${PYTHON:-.venv/bin/python}
version() { "$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
# The device has numpy, scipy, scikit-image, opencv, pillow, h5py, ml-dtypes, rich, absl-py, PyYAML,
# tqdm and typing-extensions (device/KINDS.md); these it lacks:
packages=(keras namex optree albumentations albucore stringzilla simsimd pydantic pydantic_core
          annotated-types typing-inspection)
specs=()
for package in "${packages[@]}"; do specs+=("$package==$(version "$package")"); done
rm -rf .whl .gpudata
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${specs[@]}"
mkdir .gpudata
cp -r "$data/images" "$data/masks" .gpudata/
du -sh .whl .gpudata
echo "ready: ${specs[*]}"
