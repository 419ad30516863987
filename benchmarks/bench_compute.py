"""Compute benchmark: training and inference images per second of both models, as a share of peak.

    python -m benchmarks.bench_compute                          # both models, 128x128 and 192x256
    python -m benchmarks.bench_compute --models improved --sizes 128x128 --precisions float32 mixed

For each model, input size and precision: the model is built and compiled as `train.py` does
(per-image Dice + BCE, Adam, the training metrics) and timed on random batches held in memory, so the
figures are pure compute. Training and inference images per second are turned into GFLOP/s with the
model's FLOPs per image (counted from its convolutions; a training step is taken as 3x a forward
pass) and given as a fraction of the GFLOP/s of a large matrix product of the same precision, measured
in the same run on the same backend. Optional sweeps time batch sizes, `jit_compile` and `run_eagerly`
(`train.py --run-eagerly`).
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

from lesion_unet import losses
from lesion_unet.distribution import set_mixed_precision
from lesion_unet.basic_unet import build_unet
from lesion_unet.improved_unet import build_improved_unet

BUILDERS = {"improved": build_improved_unet, "basic": build_unet}


def forward_flops(model):
    """Multiply-adds x 2 of every convolution (and dense layer) for one image; other layers are ignored.

    Normalisation, activations, additions and resampling add well under 5% to a U-Net's count.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, channels_in = layer.input.shape
            total += 2 * height * width * channels_in * int(np.prod(layer.kernel_size)) * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            channels_in = layer.input.shape[-1]
            total += 2 * height * width * channels_in * int(np.prod(layer.kernel_size)) * layer.filters
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return total


def matmul_gflops(dtype, size=4096, repeats=8):
    """Best GFLOP/s of a `size` x `size` matrix product in `dtype` on the current backend."""
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((size, size)), dtype=dtype)
    b = keras.ops.convert_to_tensor(rng.standard_normal((size, size)), dtype=dtype)
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def _timed(step, min_seconds, min_steps):
    """Runs `step` until both limits are passed; returns the median seconds per call."""
    times = []
    started = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def measure(model_name, image_size, precision, batch_size, step, min_seconds, min_steps, base_filters):
    """Times training and inference steps of one configuration (`step`: "graph", "xla" or "eager");
    returns a result dict."""
    set_mixed_precision(precision == "mixed")
    keras.utils.set_random_seed(0)
    kwargs = {} if base_filters is None else {"base_filters": base_filters}
    model = BUILDERS[model_name](image_size, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.SegmentationLoss("dice_bce"),
                  metrics=losses.training_metrics(), jit_compile=step == "xla", run_eagerly=step == "eager")
    rng = np.random.default_rng(0)
    images = rng.random((batch_size, *image_size, 3), dtype=np.float32)
    masks = (rng.random((batch_size, *image_size, 1)) > 0.5).astype(np.float32)
    started = time.perf_counter()
    model.train_on_batch(images, masks)  # traces and compiles
    first_step_s = time.perf_counter() - started
    model.train_on_batch(images, masks)
    train_s = _timed(lambda: model.train_on_batch(images, masks), min_seconds, min_steps)
    model.predict_on_batch(images)
    infer_s = _timed(lambda: model.predict_on_batch(images), min_seconds / 2, min_steps)
    flops = forward_flops(model)
    result = {
        "model": model_name, "image_size": list(image_size), "precision": precision, "batch_size": batch_size,
        "step": step, "jit_compile": step == "xla", "run_eagerly": step == "eager",
        "params": model.count_params(), "gflops_per_image": flops / 1e9,
        "first_step_s": first_step_s, "train_step_s": train_s, "train_img_per_s": batch_size / train_s,
        "infer_img_per_s": batch_size / infer_s,
    }
    result["train_gflop_per_s"] = result["train_img_per_s"] * 3 * flops / 1e9
    result["infer_gflop_per_s"] = result["infer_img_per_s"] * flops / 1e9
    keras.backend.clear_session()
    return result


def _size(text):
    height, width = text.lower().split("x")
    return int(height), int(width)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDERS), default=["improved", "basic"],
                        help="models to time (default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(128, 128), (192, 256)],
                        help="input sizes as HxW (default: 128x128 192x256)")
    parser.add_argument("--precisions", nargs="+", choices=("float32", "mixed"), default=["float32", "mixed"],
                        help="float32 and/or mixed (bfloat16 on CPU, float16 on GPU) (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument("--basic-filters", type=int, default=None,
                        help="base filters of the basic U-Net (default: the paper's 64)")
    parser.add_argument("--batch-sweep", type=int, nargs="*", default=[8, 32],
                        help="extra batch sizes for the first model at the first size (default: %(default)s)")
    parser.add_argument("--jit-sweep", action=argparse.BooleanOptionalAction, default=True,
                        help="also time jit_compile=True for the first model at the first size (default: on)")
    parser.add_argument("--eager-sweep", action=argparse.BooleanOptionalAction, default=True,
                        help="also time run_eagerly=True for the first model at the first size (default: on)")
    parser.add_argument("--min-seconds", type=float, default=15.0,
                        help="time each configuration for at least this long (default: %(default)s)")
    parser.add_argument("--min-steps", type=int, default=3, help="and at least this many steps (default: %(default)s)")
    parser.add_argument("--report", default=None, help="also write the results as JSON here (default: none)")
    args = parser.parse_args(argv)

    peaks = {"float32": matmul_gflops("float32")}
    if "mixed" in args.precisions:
        peaks["mixed"] = matmul_gflops("bfloat16" if set_mixed_precision(True) == "mixed_bfloat16" else "float16")
        set_mixed_precision(False)
    print(f"backend {keras.backend.backend()}, Keras {keras.__version__}, {os.cpu_count()} CPU(s); "
          f"matmul peak: " + ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in peaks.items()), flush=True)

    configs = [(model, size, precision, args.batch_size, "graph")
               for model in args.models for size in args.sizes for precision in args.precisions]
    first_model, first_size = args.models[0], args.sizes[0]
    configs += [(first_model, first_size, precision, batch, "graph")
                for batch in args.batch_sweep for precision in args.precisions]
    if args.jit_sweep:
        configs.append((first_model, first_size, "float32", args.batch_size, "xla"))
    if args.eager_sweep:
        configs.append((first_model, first_size, "float32", args.batch_size, "eager"))

    results = []
    header = ("model", "size", "precision", "batch", "step", "GFLOP/img", "train img/s", "train % peak",
              "infer img/s", "infer % peak", "first step s")
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header), flush=True)
    for model_name, size, precision, batch, step in configs:
        filters = args.basic_filters if model_name == "basic" else None
        result = measure(model_name, size, precision, batch, step, args.min_seconds, args.min_steps, filters)
        result["peak_gflop_per_s"] = peaks[precision]
        results.append(result)
        print(f"| {model_name}{'' if filters is None else f' ({filters} filters)'} | {size[0]}x{size[1]} | "
              f"{precision} | {batch} | {step} | {result['gflops_per_image']:.2f} | "
              f"{result['train_img_per_s']:.1f} | {100 * result['train_gflop_per_s'] / peaks[precision]:.0f}% | "
              f"{result['infer_img_per_s']:.1f} | {100 * result['infer_gflop_per_s'] / peaks[precision]:.0f}% | "
              f"{result['first_step_s']:.1f} |", flush=True)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump({"backend": keras.backend.backend(), "keras": keras.__version__, "peaks_gflop_per_s": peaks,
                       "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
