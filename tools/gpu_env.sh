# Sourced by the gpu_*.sh scripts on a lent GPU machine (the `device` tool), from the repository's
# root: installs the wheels gpu_prepare.sh put in .whl/ (what the device's image lacks) into
# /tmp/site, and runs Keras on JAX, as the device has no TensorFlow.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || return 1
export PYTHONPATH=/tmp/site KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
