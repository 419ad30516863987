"""Segments new images with a saved model.

    python predict.py my_lesion.jpg --out masks/                 # the pre-trained model
    python predict.py runs/my_run/best.keras images/ --out masks/ --overlay

Writes `<id>_segmentation.png` for each image: single-channel, 0 (skin) / 255 (lesion), at the image's
own size (the ISIC submission format); with `--overlay`, also `<id>_overlay.png`, the outline drawn on
the image.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

import dataGenerator
import inference
import plots
from errors import InputError, make_output_dir, run_cli


def collect_images(inputs):
    """Expands files and folders into a sorted, de-duplicated list of image files.

    Raises:
        InputError: an input does not exist, or no image is found.
    """
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = [os.path.join(item, name) for name in sorted(os.listdir(item))
                     if dataGenerator.image_id_of(name) is not None and not name.startswith(".")]
            if not found:
                raise InputError(f"{item}: no images in this folder (.jpg, .jpeg, .png, .bmp, .tif)")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    return list(dict.fromkeys(paths))


def write_mask(mask, path):
    """Writes a boolean mask as a 0/255 single-channel PNG, atomically."""
    tmp_path = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp_path)
    os.replace(tmp_path, path)


def split_inputs(argv_inputs):
    """Splits positional inputs into `(model_path, images)`: a leading `.keras` file or run folder is the model."""
    first = argv_inputs[0]
    if first.endswith(".keras"):
        return first, argv_inputs[1:]
    if os.path.isdir(first) and os.path.isfile(os.path.join(first, "best.keras")):
        return os.path.join(first, "best.keras"), argv_inputs[1:]
    return inference.DEFAULT_MODEL, argv_inputs


def build_parser():
    parser = argparse.ArgumentParser(
        description="Write <id>_segmentation.png lesion masks (0/255, each image's own size).",
        usage="%(prog)s [MODEL] INPUT [INPUT ...] [--out DIR]")
    parser.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT",
                        help="an optional .keras model or run folder (default: the pre-trained "
                             "model), then image files or folders")
    parser.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--overlay", action="store_true", help="also write <id>_overlay.png, the outline on the image")
    inference.add_inference_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    model_path, inputs = split_inputs(args.inputs)
    if not inputs:
        raise InputError("no input images given; pass image files or folders after the model")
    model = inference.load_model(model_path)
    paths = collect_images(inputs)
    make_output_dir(args.out)
    predictions = inference.predict_files(model, paths, args.batch_size, args.tta, not args.no_progress)
    for path, probability in predictions:
        sample_id = os.path.splitext(os.path.basename(path))[0]
        mask = inference.to_mask(probability, args.threshold, args.postprocess)
        write_mask(mask, os.path.join(args.out, f"{sample_id}_segmentation.png"))
        if args.overlay:
            plots.save_overlay(dataGenerator.read_image(path), mask, os.path.join(args.out, f"{sample_id}_overlay.png"))
    print(f"wrote {len(paths)} mask(s) to {args.out}/ with {model_path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
