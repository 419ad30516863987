"""Training on several devices or machines with the engines Keras already has, and mixed precision.

- TensorFlow backend: `tf.distribute.MirroredStrategy` over the visible GPUs (or, when asked for
  explicitly, over the logical CPU devices); `MultiWorkerMirroredStrategy` when `TF_CONFIG` is set.
- JAX backend: `keras.distribution.DataParallel` over the visible devices.
- PyTorch backend: one device.

The batch size given to `train.py` is global: each step's batch is split evenly between the replicas,
so a run gives the same updates whatever the number of devices.
"""

import contextlib
import dataclasses
import json
import os

import keras

from errors import InputError

MODES = ("auto", "off", "mirrored", "multi-worker")


@dataclasses.dataclass
class Distribution:
    """How training is spread: a scope to build and compile the model in, and the replica count."""

    scope: object
    replicas: int
    description: str


def _tensorflow_distribution(mode):
    import tensorflow as tf

    # Listing logical devices starts TensorFlow, after which a multi-worker strategy cannot be made.
    if mode == "multi-worker" or (mode == "auto" and os.environ.get("TF_CONFIG")):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Distribution(strategy.scope(), strategy.num_replicas_in_sync,
                            f"MultiWorkerMirroredStrategy, {strategy.num_replicas_in_sync} replicas")
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution(strategy.scope(), strategy.num_replicas_in_sync,
                            f"MirroredStrategy over {', '.join(devices)}")
    return Distribution(contextlib.nullcontext(), 1, "one device")


def _jax_distribution(mode):
    if mode == "multi-worker":
        raise InputError("--distribute multi-worker: needs the TensorFlow backend (TF_CONFIG); with JAX, "
                         "call jax.distributed.initialize() and use --distribute mirrored")
    devices = keras.distribution.list_devices()
    if mode == "off" or len(devices) < 2:
        return Distribution(contextlib.nullcontext(), 1, "one device")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Distribution(contextlib.nullcontext(), len(devices), f"DataParallel over {len(devices)} devices")


def choose_distribution(mode="auto"):
    """Sets up data-parallel training for the current backend.

    Args:
        mode: `auto` (several GPUs: mirrored; `TF_CONFIG` set: multi-worker; otherwise one device),
            `off`, `mirrored` (every visible device, CPUs included) or `multi-worker`.

    Returns:
        A `Distribution`: build, compile and load models inside `with distribution.scope:`.

    Raises:
        InputError: the mode is unknown or the backend cannot do it.
    """
    if mode not in MODES:
        raise InputError(f"--distribute {mode}: choose one of {', '.join(MODES)}")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_distribution(mode)
    if backend == "jax":
        return _jax_distribution(mode)
    if mode in ("mirrored", "multi-worker"):
        raise InputError(f"--distribute {mode}: not available with the {backend} backend; use tensorflow or jax")
    return Distribution(contextlib.nullcontext(), 1, "one device")


def use_one_device():
    """Ends a JAX `DataParallel` distribution, so later models run on one device (no-op otherwise)."""
    if keras.backend.backend() == "jax" and keras.distribution.distribution() is not None:
        keras.distribution.set_distribution(None)


def multi_worker_role():
    """Reads `TF_CONFIG`: returns `(is_chief, task_name)`, or `(True, None)` when it is unset.

    The chief is the `chief` task, or worker 0 when the cluster has no chief. Every worker trains;
    only the chief's run folder is the result, the others write to `<out>.<task_name>`.

    Raises:
        InputError: `TF_CONFIG` is not JSON with a `task` entry.
    """
    text = os.environ.get("TF_CONFIG")
    if not text:
        return True, None
    try:
        config = json.loads(text)
        task_type, index = config["task"]["type"], int(config["task"].get("index", 0))
    except (ValueError, KeyError, TypeError):
        raise InputError('TF_CONFIG: expected JSON like {"cluster": {"worker": ["host0:port", "host1:port"]}, '
                         '"task": {"type": "worker", "index": 0}}') from None
    has_chief = bool(config.get("cluster", {}).get("chief"))
    is_chief = task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief)
    return is_chief, f"{task_type}{index}"


def accelerator_present():
    """Returns whether a GPU is visible to the current backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform != "cpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def set_mixed_precision(enabled):
    """Sets the global dtype policy: `mixed_float16` on a GPU, `mixed_bfloat16` on a CPU, or `float32`.

    The models' output layers are float32 whatever the policy, and so are the losses.

    Returns:
        The policy's name.
    """
    name = "float32"
    if enabled:
        name = "mixed_float16" if accelerator_present() else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(name)
    return name
