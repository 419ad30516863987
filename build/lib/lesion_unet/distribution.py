"""Training on several devices or machines with the engines Keras already has, and mixed precision.

- TensorFlow backend: `tf.distribute.MirroredStrategy` over the visible GPUs (or, when asked for
  explicitly, over the logical CPU devices); `MultiWorkerMirroredStrategy` when `TF_CONFIG` is set.
- JAX backend: `keras.distribution.DataParallel` over the visible devices; over several processes
  (machines) when Keras's `KERAS_DISTRIBUTION_*` variables are set, each process feeding its slice of
  every batch.
- PyTorch backend: one device.

The batch size given to `train.py` is global: each step's batch is split evenly between the replicas,
so a run gives the same updates whatever the number of devices.
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil

import keras
import numpy as np

from lesion_unet.errors import InputError
from lesion_unet.settings import DISTRIBUTION_MODES


# Read by `keras.distribution.initialize()` when JAX runs over several processes.
JAX_PROCESS_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                         "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclasses.dataclass
class Distribution:
    """How training is spread.

    Attributes:
        scope: context to build, compile and load models in.
        replicas: devices that share each batch, over all processes.
        description: one line for the run's log.
        processes: processes that share each batch; each feeds `batch_size / processes` samples
            (JAX multi-process only: TensorFlow's strategies split the batch themselves).
        process_index: this process's index among them.
    """

    scope: object
    replicas: int
    description: str
    processes: int = 1
    process_index: int = 0


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


def _jax_multi_process():
    missing = [name for name in JAX_PROCESS_VARIABLES if not os.environ.get(name)]
    if missing:
        raise InputError(f"--distribute multi-worker with JAX: set {', '.join(missing)} (Keras's "
                         "variables for keras.distribution.initialize; see README, 'Several machines')")
    import jax

    # CPU processes exchange gradients through gloo (JAX's default CPU client has no collectives
    # across processes); GPUs keep NCCL. Set before the backend starts, so before asking for devices.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    # auto_shard_dataset=False: each process's LesionDataset already yields only its slice.
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    processes, index = jax.process_count(), jax.process_index()
    return Distribution(contextlib.nullcontext(), len(devices),
                        f"DataParallel over {len(devices)} devices in {processes} processes (this is process {index})",
                        processes=processes, process_index=index)


def _jax_distribution(mode):
    if mode == "multi-worker" or (mode == "auto" and os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES")):
        return _jax_multi_process()
    devices = keras.distribution.list_devices()
    if mode == "off" or len(devices) < 2:
        return Distribution(contextlib.nullcontext(), 1, "one device")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Distribution(contextlib.nullcontext(), len(devices), f"DataParallel over {len(devices)} devices")


def choose_distribution(mode="auto"):
    """Sets up data-parallel training for the current backend.

    Args:
        mode: `auto` (several GPUs: mirrored; `TF_CONFIG` or, with JAX,
            `KERAS_DISTRIBUTION_NUM_PROCESSES` set: multi-worker; otherwise one device), `off`,
            `mirrored` (every visible device, CPUs included) or `multi-worker`.

    Returns:
        A `Distribution`: build, compile and load models inside `with distribution.scope:`.

    Raises:
        InputError: the mode is unknown or the backend cannot do it.
    """
    if mode not in DISTRIBUTION_MODES:
        raise InputError(f"--distribute {mode}: choose one of {', '.join(DISTRIBUTION_MODES)}")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_distribution(mode)
    if backend == "jax":
        return _jax_distribution(mode)
    if mode in ("mirrored", "multi-worker"):
        raise InputError(f"--distribute {mode}: not available with the {backend} backend; use tensorflow or jax")
    return Distribution(contextlib.nullcontext(), 1, "one device")


class ShardedBatches(keras.utils.PyDataset):
    """Another dataset's batches, made fit for data-parallel training: padded to equal shards and,
    in one process of several, cut to that process's share.

    A batch whose size is not a multiple of `pad_to_multiple` (and of the process count) is padded
    with repeats of its first samples, and every batch comes with per-image sample weights, 0 for the
    padding, so the padding changes no loss or metric. With `shard=(index, count)`, only the
    `index`-th of `count` equal, contiguous slices of each padded batch is yielded: every process
    makes the same global batch (same order, same augmentation) and takes its part.

    Args:
        dataset: a `keras.utils.PyDataset` of `(images, masks)` batches with a `batch_size`, e.g.
            `dataGenerator.LesionDataset`; its epoch hooks are passed on.
        pad_to_multiple: the shard count of one process's devices (JAX `DataParallel`), or 1.
        shard: `(index, count)` of this process among the processes sharing each batch.

    Raises:
        ValueError: a bad shard, or a batch size that the processes cannot share evenly.
    """

    def __init__(self, dataset, pad_to_multiple=1, shard=(0, 1)):
        super().__init__(workers=dataset.workers, use_multiprocessing=dataset.use_multiprocessing,
                         max_queue_size=dataset.max_queue_size)
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
        if dataset.batch_size % count:
            raise ValueError(f"batch_size {dataset.batch_size} must be a multiple of the {count} processes "
                             "that share each batch")
        self.dataset = dataset
        self.shard = (index, count)
        self.pad_to_multiple = math.lcm(pad_to_multiple, count)  # every process gets as many samples

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        images, masks = self.dataset[index]
        real = len(images)
        padded = math.ceil(real / self.pad_to_multiple) * self.pad_to_multiple
        rows = np.resize(np.arange(real), padded)  # repeats the first samples
        weights = (np.arange(padded) < real).astype(np.float32)
        part = np.array_split(np.arange(padded), self.shard[1])[self.shard[0]]
        return images[rows[part]], masks[rows[part]], weights[part]

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def for_replicas(dataset, spread):
    """Returns `dataset` as `spread` needs it: itself on one device and one process, else wrapped in
    `ShardedBatches` (JAX shards each batch evenly over its devices; processes share each batch)."""
    pad = spread.replicas if keras.backend.backend() == "jax" else 1
    if pad == 1 and spread.processes == 1:
        return dataset
    return ShardedBatches(dataset, pad, (spread.process_index, spread.processes))


def use_one_device():
    """Ends a JAX `DataParallel` distribution, so later models run on one device (no-op otherwise)."""
    if keras.backend.backend() == "jax" and keras.distribution.distribution() is not None:
        keras.distribution.set_distribution(None)


def multi_worker_role(backend=None):
    """Returns `(is_chief, task_name)` of this process in a multi-worker run, `(True, None)` outside one.

    TensorFlow reads `TF_CONFIG`: the chief is the `chief` task, or worker 0 when the cluster has no
    chief. JAX reads `KERAS_DISTRIBUTION_PROCESS_ID`: the chief is process 0. Every worker trains; only
    the chief's run folder is the result, the others write to `<out>.<task_name>`.

    Args:
        backend: `tensorflow` or `jax`; default: the current Keras backend.

    Raises:
        InputError: `TF_CONFIG` is not JSON with a `task` entry, or the process id is not a number.
    """
    if (backend or keras.backend.backend()) == "jax":
        text = os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID")
        if not text or not os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
            return True, None
        if not text.strip().isdigit():
            raise InputError(f"KERAS_DISTRIBUTION_PROCESS_ID={text!r}: expected 0, 1, ... (this process's index)")
        return int(text) == 0, f"process{int(text)}"
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


def accelerators():
    """Returns the accelerators visible to the current backend, e.g. `["GPU", "GPU"]`; `[]` on a CPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return ["GPU"] * len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return [device.platform.upper() for device in jax.local_devices() if device.platform != "cpu"]
    if backend == "torch":
        import torch

        return ["GPU"] * torch.cuda.device_count()
    return []


def describe_devices():
    """Returns a short text naming the accelerators Keras will use, e.g. `2 GPU(s)`, or `CPU`."""
    found = accelerators()
    return f"{len(found)} {found[0]}(s)" if found else "CPU"


# The GPU build of each backend, within the versions requirements.txt / requirements-test.txt allow.
GPU_INSTALL = {
    "tensorflow": 'pip install "tensorflow[and-cuda]>=2.16,<2.22"',
    "jax": 'pip install "jax[cuda12]>=0.4.30,<0.13"',
    "torch": "pip install torch  # the Linux wheels on PyPI include CUDA",
}
NVIDIA_DRIVER_PATH = "/proc/driver/nvidia"


def nvidia_gpu_present():
    """Whether this machine has an NVIDIA GPU, whatever the backend sees: its driver is loaded
    (`/proc/driver/nvidia`) or `nvidia-smi` is installed."""
    return os.path.exists(NVIDIA_DRIVER_PATH) or shutil.which("nvidia-smi") is not None


def gpu_fallback_warning():
    """Returns a one-line warning when the machine has an NVIDIA GPU that the backend does not see
    (a CPU-only build installed), naming the install line for the GPU build; `None` otherwise."""
    if accelerators() or not nvidia_gpu_present():
        return None
    backend = keras.backend.backend()
    return (f"warning: this machine has an NVIDIA GPU, but Keras's {backend} backend sees none, so training "
            f"runs on the CPU (tens of times slower). Install the GPU build: {GPU_INSTALL.get(backend, '')} "
            "(README, 'On a GPU')")


# Where the CPU's flags are read. LESION_UNET_CPUINFO points it at another description, so that a
# machine without native bfloat16 can check what a run or the test suite does on one that has it.
CPUINFO_PATH = os.environ.get("LESION_UNET_CPUINFO", "/proc/cpuinfo")
# x86 flags of native bfloat16 arithmetic, which oneDNN uses for convolutions: without them TensorFlow
# emulates bfloat16, and training gets slower instead of faster.
NATIVE_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bfloat16_flags(cpuinfo_path=None):
    """Returns the CPU's flags that give native bfloat16 arithmetic, e.g. `["amx_bf16", "avx512_bf16"]`.

    Args:
        cpuinfo_path: Linux's CPU description (default: `CPUINFO_PATH`); where it cannot be read
            (another system), the answer is `[]`.

    Returns:
        The flags of `NATIVE_BFLOAT16_FLAGS` that the first CPU lists, sorted; `[]` when none.
    """
    try:
        with open(cpuinfo_path or CPUINFO_PATH, encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(flag for flag in NATIVE_BFLOAT16_FLAGS if flag in flags)
    except OSError:
        pass
    return []


def choose_mixed_precision(requested, cpuinfo_path=None):
    """Resolves `train.py --mixed-precision`: as asked, or, when not asked (`None`), on for a
    TensorFlow run on a CPU with native bfloat16 and off elsewhere.

    That is where it was measured: bfloat16 matched float32's validation Dice and trained 1.5x faster
    (docs/benchmarks.md). Off on a GPU unless asked (its float16 training has not been compared with float32
    here), and on JAX and PyTorch, whose CPU bfloat16 has not been timed.

    Args:
        requested: `True`, `False`, or `None` for the automatic choice.
        cpuinfo_path: where the CPU's flags are read (default: `CPUINFO_PATH`).

    Returns:
        `(enabled, reason)`, the reason a short text for `config.json` and the run's first line.
    """
    if requested is not None:
        return bool(requested), "--mixed-precision" if requested else "--no-mixed-precision"
    if accelerators():
        return False, "auto: off on an accelerator (pass --mixed-precision for float16)"
    if keras.backend.backend() != "tensorflow":
        return False, f"auto: off on the {keras.backend.backend()} backend's CPU (measured on TensorFlow only)"
    flags = native_bfloat16_flags(cpuinfo_path)
    if flags:
        return True, f"auto: this CPU computes bfloat16 natively ({', '.join(flags)})"
    return False, "auto: this CPU has no native bfloat16 (AMX or AVX512-BF16), so float32"


@contextlib.contextmanager
def global_policy_restored():
    """Puts Keras's global dtype policy back as it was when the block is left, however it is left."""
    previous = keras.mixed_precision.global_policy()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def set_mixed_precision(enabled):
    """Sets the global dtype policy: `mixed_float16` on a GPU, `mixed_bfloat16` on a CPU, or `float32`.

    The models' output layers are float32 whatever the policy, and so are the losses.

    Returns:
        The policy's name.
    """
    name = "float32"
    if enabled:
        name = "mixed_float16" if accelerators() else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(name)
    return name
