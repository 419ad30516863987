"""Exports a saved model for use without TensorFlow: ONNX, run by ONNX Runtime.

    python export.py runs/my_run --format onnx              # writes runs/my_run/best.onnx
    python export.py --format onnx --out lesion.onnx        # the pre-trained model
    python predict.py runs/my_run/best.onnx images/ --out masks/   # then, without TensorFlow

Beside the `.onnx` file goes `<name>.onnx.json`: what anyone needs to rebuild the pipeline around the
network in another language (input size and layout, channel order, scaling, resizing, the optional
hair removal, what the output means, threshold, post-processing) and, when the model carries one,
its quality model (`quality.py`: expected Dice and review flag). `predict.py`, `evaluate.py` and
`app.py` take the `.onnx` file as they take a `.keras` one.
"""

import datetime
import os
import warnings

from lesion_unet import cliargs
from lesion_unet import runfolder
from lesion_unet import settings
from lesion_unet.errors import InputError, exit_script, make_output_dir, run_cli

FORMATS = ("onnx",)


def pipeline_description(model, source):
    """Returns the JSON-ready description of the pipeline around an exported network."""
    import keras

    from lesion_unet import hair_removal

    height, width = (int(side) for side in model.input_shape[1:3])
    return {
        "format": "onnx",
        "source": os.path.abspath(source),
        "exported": datetime.datetime.now().isoformat(timespec="seconds"),
        "keras_version": keras.__version__,
        "input": {
            "shape": ["batch", height, width, 3],
            "layout": "NHWC (batch, height, width, channels)",
            "dtype": "float32",
            "channel_order": "RGB",
            "scaling": "8-bit pixel values divided by 255, so 0..1; no mean or standard deviation",
            "resize": f"each image resized to {width}x{height} (width x height) with bilinear, antialiased "
                      "filtering (Pillow's BILINEAR), whatever its aspect ratio",
            "remove_hair": hair_removal.description(),
        },
        "output": {
            "shape": ["batch", height, width, 1],
            "meaning": "lesion probability per pixel (sigmoid), 0..1",
        },
        "mask": {
            "resize": "the probability map resized back to the image's own size (bilinear), then thresholded",
            "threshold": settings.DEFAULT_THRESHOLD,
            "postprocess": "on by default: keep the largest 8-connected lesion region and fill its holes",
            "file": "single-channel PNG, 0 = skin, 255 = lesion, the image's own size (<id>_segmentation.png)",
        },
    }


def export_onnx(model_path, out_path):
    """Writes `model_path` as ONNX to `out_path`, with its pipeline description beside it.

    Both files are written atomically. Returns the description.

    Raises:
        InputError: the model cannot be loaded, the exporter is missing, or the folder is not writable.
    """
    from lesion_unet import inference
    import numpy as np

    model = inference.load_model(model_path)
    try:
        import tf2onnx  # noqa: F401 (Keras's ONNX export on TensorFlow needs it)
    except ImportError:
        raise InputError("exporting to ONNX needs tf2onnx; pip install -r requirements.txt") from None
    # Keras exports only a model that has been called once.
    model.predict_on_batch(np.zeros((1, *model.input_shape[1:]), dtype=np.float32))
    make_output_dir(os.path.dirname(out_path) or ".")
    with runfolder.atomic_write(out_path) as tmp_path, warnings.catch_warnings():
        # Keras's tf2onnx shim probes `np.object`, which NumPy 2 answers with a FutureWarning.
        warnings.filterwarnings("ignore", category=FutureWarning)
        model.export(tmp_path, format="onnx", verbose=False)
    description = pipeline_description(model, model_path)
    quality_model = inference.load_quality_model(model_path)
    if quality_model is not None:  # the expected Dice and review flag travel with the model (quality.py)
        description["quality"] = quality_model.to_dict()
    runfolder.save_json(description, out_path + ".json")
    return description


def build_parser():
    parser = cliargs.ArgumentParser(description="Export a saved model to run without TensorFlow (ONNX).")
    parser.add_argument("target", nargs="?", default=None,
                        help="a run folder (its best.keras) or a .keras model (default: the pre-trained "
                             "model, pretrained/improved_unet.keras)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="export format (default: %(default)s)")
    parser.add_argument("--out", default=None,
                        help="the file to write (default: beside the model, e.g. RUN/best.onnx; "
                             "improved_unet.onnx for the pre-trained model)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    model_path = runfolder.model_file(args.target, settings.DEFAULT_MODEL)
    if not model_path.lower().endswith(".keras"):
        raise InputError(f"{model_path}: export.py converts a .keras model; "
                         f"{'this one is ONNX already' if model_path.lower().endswith('.onnx') else 'pass one'} "
                         "(predict.py and evaluate.py take a .onnx file as it is)")
    if args.out is None:
        stem = os.path.splitext(model_path)[0]
        args.out = (os.path.basename(stem) if model_path == settings.DEFAULT_MODEL else stem) + ".onnx"
    elif not args.out.lower().endswith(".onnx"):
        # Anything else could be a file the user keeps: `--out RUN/best.keras` would replace the model itself.
        raise InputError(f"{args.out}: --out must name a .onnx file (its pipeline description goes beside it, "
                         "as .onnx.json)")
    if os.path.isdir(args.out) or os.path.isdir(args.out + ".json"):
        raise InputError(f"{args.out}: a folder, not a file; name the .onnx file to write, e.g. "
                         f"{os.path.join(args.out, 'model.onnx')}")
    from lesion_unet import quiet  # Keras loads only now that the arguments are known to be good

    quiet.import_keras()
    description = export_onnx(model_path, args.out)
    height, width = description["input"]["shape"][1:3]
    print(f"wrote {args.out} ({height}x{width} RGB in, lesion probability out) and {args.out}.json "
          "(the pipeline around it)")


if __name__ == "__main__":
    exit_script(run_cli(main))
