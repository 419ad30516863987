"""lesion_unet: skin lesion segmentation in dermoscopy images with a U-Net and the Improved U-Net.

The public API, each name imported on first use (so `import lesion_unet` loads no Keras, and the
ONNX and scoring paths never do):

    from lesion_unet import build_improved_unet, make_config, run_training, load_model, segment_files

    model = build_improved_unet((128, 128))                       # an uncompiled keras.Model
    config = make_config("runs/try", data="data/isic2017", epochs=2)
    run_training(config, "runs/try")                              # data -> fit -> test report
    model = load_model("runs/try/best.keras")                     # safe mode; .onnx too
    quality = load_quality_model("pretrained/improved_unet.keras")  # expected Dice, review flag
    for path, probability, mask in segment_files(model, ["lesion.jpg"]):
        print(quality.assess(probability)["expected_dice"])
    result = evaluate_run("runs/try", split="val")                # a run's best.keras on a split

The scripts at the project's root (`train.py`, `evaluate.py`, `predict.py`, `export.py`, `app.py`)
parse their command lines and call these.
"""

import importlib

__version__ = "0.10.0"

# name -> the module that defines it
_API = {
    "build_improved_unet": "improved_unet",
    "build_unet": "basic_unet",
    "LesionDataset": "data",
    "find_pairs": "lesion_files",
    "resolve_folders": "lesion_files",
    "split_pairs": "lesion_files",
    "kfold_split": "lesion_files",
    "read_image": "lesion_files",
    "read_mask": "lesion_files",
    "make_config": "training",
    "run_training": "training",
    "resume_training": "training",
    "load_model": "inference",
    "load_quality_model": "inference",
    "predict_files": "inference",
    "segment_files": "inference",
    "evaluate_run": "scoring",
    "evaluate_pairs": "scoring",
    "score_masks": "metrics",
    "InputError": "errors",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"lesion_unet.{_API[name]}"), name)
    raise AttributeError(f"module 'lesion_unet' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
