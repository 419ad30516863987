"""Inference speed of the exported ONNX model under ONNX Runtime against the Keras model on TensorFlow.

    python -m benchmarks.bench_onnx [--model pretrained/improved_unet.keras] [--seconds 20]

Exports the model (export.py's code) to a temporary folder, then times the network alone
(`predict_on_batch` on random model-sized input, no image decoding) at batch 1 and batch 16, each
engine in turn, in one process, after one warm-up call. Prints one Markdown row per engine and batch.
"""

import argparse
import os
import tempfile
import time

from lesion_unet import settings


def images_per_second(model, batch, seconds):
    model.predict_on_batch(batch)  # warm-up: graph building, memory
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_on_batch(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description="ONNX Runtime against TensorFlow, inference images/s.")
    parser.add_argument("--model", default=settings.DEFAULT_MODEL, help="a .keras model (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="timing per engine and batch (default: %(default)s)")
    args = parser.parse_args(argv)

    import numpy as np

    import export
    from lesion_unet import inference
    from lesion_unet import quiet

    quiet.import_keras()
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = os.path.join(folder, "model.onnx")
        export.export_onnx(args.model, onnx_path)
        engines = {"TensorFlow (Keras)": inference.load_model(args.model),
                   "ONNX Runtime": inference.load_model(onnx_path)}
        size = inference.model_image_size(engines["ONNX Runtime"])
        print(f"| engine | batch | images/s at {size[0]}x{size[1]} |")
        print("| --- | --- | --- |")
        for batch_size in (1, 16):
            batch = np.random.default_rng(0).random((batch_size, *size, 3)).astype(np.float32)
            for name, model in engines.items():
                print(f"| {name} | {batch_size} | {images_per_second(model, batch, args.seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
