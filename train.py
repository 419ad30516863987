"""Trains a lesion segmentation model and reports its test metrics.

    python train.py                                   # the synthetic demo, a few minutes on a CPU
    python train.py --data ../shared/data/isic2017    # real ISIC data (images/ + masks/)
    python train.py --images ISIC2018_Task1-2_Training_Input --masks ISIC2018_Task1_Training_GroundTruth

A run folder (`--out`) gets `config.json`, `split.json`, `history.csv`, `curves.png`, `best.keras`
(best validation Dice, loadable with `keras.saving.load_model` alone), `last.keras` and `state.json`
(for `--resume`), and after the last epoch the test split's `metrics.json`, `per_image.csv` and
`cases.png`. The GPU is used when one is visible, the CPU otherwise.
"""

import argparse
import datetime
import math
import os
import shutil
import sys
import time

import keras
import numpy as np

import cache
import dataGenerator
import distribution
import evaluate
import inference
import metrics
import plots
import synthetic
import cliargs
import runfolder
from cliargs import explicit_flags, float_range, int_range
from errors import InputError, make_output_dir, run_cli
from model_basic import build_unet
from model_improved import build_improved_unet

MODELS = {"improved": build_improved_unet, "basic": build_unet}
REAL_DATA_EPOCHS = 30
DEMO_EPOCHS = 8
DEMO_SAMPLES = 240


def _atomic_save_model(model, path):
    with runfolder.atomic_write(path) as tmp_path:
        model.save(tmp_path)


def averaged_weights(model):
    """Returns `model`'s weights with each trainable one replaced by the optimizer's moving average
    (`use_ema=True`), in `model.get_weights()` order; `None` when the optimizer keeps no average."""
    optimizer = getattr(model, "optimizer", None)
    if not getattr(optimizer, "use_ema", False) or not hasattr(optimizer, "_model_variables_moving_average"):
        return None
    average = {variable.path: mean for variable, mean in
               zip(optimizer._trainable_variables, optimizer._model_variables_moving_average)}
    return [keras.ops.convert_to_numpy(average.get(variable.path, variable)) for variable in model.weights]


def export_inference_model(model, path, weights=None):
    """Saves an uncompiled copy of `model` (weights and architecture only), atomically.

    Without a compile config the file loads with `keras.saving.load_model(path)` in any process,
    whether or not this project's losses are importable there.

    Args:
        model: the model.
        path: the `.keras` file.
        weights: the weights to save, in `model.get_weights()` order (default: the model's own).
    """
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights() if weights is None else weights)
    _atomic_save_model(clone, path)


def _all_finite(weights):
    return all(np.isfinite(weight).all() for weight in weights)


class RunCheckpoint(keras.callbacks.Callback):
    """After each epoch: `best.keras` when validation Dice improves, then `last.keras` and `state.json`.

    Every file is written to a temporary name and renamed, so a kill at any moment leaves the
    previous complete files in place. An epoch whose loss or weights are not finite saves nothing:
    a diverged model is never a checkpoint.

    Args:
        run_dir: the run folder.
        best: best validation Dice so far (when resuming).
        best_epoch: its epoch number (1-based), or 0.
        on_first_save: called once, after the first `state.json` of this process is written.

    Attributes:
        saved: whether this process has written a checkpoint yet.
        diverged: whether an epoch ended with a non-finite loss or weight.
    """

    def __init__(self, run_dir, best=-math.inf, best_epoch=0, on_first_save=None):
        super().__init__()
        self.run_dir = run_dir
        self.best = best
        self.best_epoch = best_epoch
        self.on_first_save = on_first_save
        self.saved = False
        self.diverged = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        weights = self.model.get_weights()
        best_weights = averaged_weights(self.model) or weights
        if (loss is not None and not math.isfinite(loss)) or not _all_finite(weights) \
                or (best_weights is not weights and not _all_finite(best_weights)):
            self.diverged = True
            return  # keep best.keras and last.keras at the last sound epoch
        value = logs.get("val_dice")
        if value is not None and math.isfinite(value) and value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            export_inference_model(self.model, os.path.join(self.run_dir, runfolder.BEST), best_weights)
        _atomic_save_model(self.model, os.path.join(self.run_dir, runfolder.LAST))
        runfolder.save_json({"epochs_done": epoch + 1, "best_val_dice": self.best, "best_epoch": self.best_epoch},
                            os.path.join(self.run_dir, runfolder.STATE))
        if not self.saved and self.on_first_save is not None:
            self.on_first_save()
        self.saved = True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, remembering where."""

    def __init__(self):
        super().__init__()
        self.where = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (self._epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


class CurvesPlot(keras.callbacks.Callback):
    """Redraws `curves.png` from `history.csv` after each epoch."""

    def __init__(self, run_dir, title):
        super().__init__()
        self.run_dir, self.title = run_dir, title

    def on_epoch_end(self, epoch, logs=None):
        history = plots.read_history(os.path.join(self.run_dir, "history.csv"))
        if history:
            plots.save_curves(history, os.path.join(self.run_dir, "curves.png"), self.title)


class EpochTiming(keras.callbacks.Callback):
    """Adds wall-clock timings to each epoch's logs, and so to `history.csv`.

    - `elapsed_s`: seconds from `start` (when `train.py` began) to the end of the epoch.
    - `train_s`, `val_s`: the epoch's training and validation wall time.
    - `steps_s`: the sum of its training step times; `step_max_s`: the slowest step.
    - `stall_s`: `train_s - steps_s`, time the training loop spent outside its steps (waiting for
      input between steps, epoch-end stalls).

    Args:
        start: `time.perf_counter()` value at which the run started.
    """

    KEYS = ("elapsed_s", "train_s", "val_s", "steps_s", "step_max_s", "stall_s")

    def __init__(self, start):
        super().__init__()
        self.start = start
        self._steps = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._steps = []
        self._val_start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._steps.append(time.perf_counter() - self._step_start)

    def on_test_begin(self, logs=None):
        if self._val_start is None and self._steps:  # validation inside fit(), not evaluate()
            self._val_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._steps:
            return
        now = time.perf_counter()
        train_end = self._val_start or now
        train_s = train_end - self._epoch_start
        logs["elapsed_s"] = now - self.start
        logs["train_s"] = train_s
        logs["val_s"] = now - train_end
        logs["steps_s"] = sum(self._steps)
        logs["step_max_s"] = max(self._steps)
        logs["stall_s"] = train_s - logs["steps_s"]


class ProgressWithoutTimings(keras.callbacks.ProgbarLogger):
    """Keras's progress output, without `EpochTiming`'s columns (they go to `history.csv`)."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items() if k not in EpochTiming.KEYS})


def _truncate_history(path, epochs_done):
    """Keeps the header and the first `epochs_done` rows of `history.csv`.

    A kill between the CSV logger and the checkpoint can leave a row for an epoch that resuming will
    train again.
    """
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    kept = lines[: 1 + epochs_done]
    if len(kept) != len(lines):
        with runfolder.atomic_write(path) as tmp_path, open(tmp_path, "w", encoding="utf-8") as handle:
            handle.writelines(kept)


def build_parser():
    parser = cliargs.ArgumentParser(
        description="Train a basic or Improved U-Net on lesion images and report test metrics. "
                    "With no data arguments, trains on a synthetic demo data set.")
    dataGenerator.add_data_arguments(parser)
    parser.add_argument("--model", choices=sorted(MODELS), default="improved",
                        help="architecture: the Improved U-Net of Isensee et al. or the basic U-Net "
                             "(default: %(default)s)")
    parser.add_argument("--image-size", type=int_range(16, 4096), nargs=2, default=list(dataGenerator.DEFAULT_IMAGE_SIZE),
                        metavar=("H", "W"), help="training height and width (default: %(default)s)")
    parser.add_argument("--epochs", type=int_range(1), default=None,
                        help=f"epochs (default: {REAL_DATA_EPOCHS} on real data, {DEMO_EPOCHS} for the demo)")
    parser.add_argument("--batch-size", type=int_range(1), default=16, help="images per step (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float_range(0, 10, low_open=True), default=1e-3,
                        help="peak Adam learning rate, reached after the warm-up and then cosine-decayed "
                             "to 0 (default: %(default)s)")
    parser.add_argument("--warmup-epochs", type=float_range(0), default=1.0,
                        help="epochs of linear learning-rate warm-up (default: %(default)s)")
    parser.add_argument("--loss", choices=metrics.SegmentationLoss.KINDS, default="dice_bce",
                        help="per-image soft Dice + binary cross-entropy, or either alone (default: %(default)s)")
    parser.add_argument("--base-filters", type=int_range(1, 1024), default=None,
                        help="filters at the first level (default: the paper's, 16 for improved, 64 for basic)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="flips, 90-degree turns, random affine and colour changes on training "
                             "batches (default: on)")
    parser.add_argument("--zoom", type=float_range(0, 10, low_open=True), nargs=2, default=list(dataGenerator.DEFAULT_ZOOM),
                        metavar=("LOW", "HIGH"),
                        help="scale range of the random affine; above 1 zooms in, making large "
                             "lesions common (default: %(default)s)")
    parser.add_argument("--color-augment", choices=dataGenerator.COLOR_AUGMENTATIONS, default="light",
                        help="light: brightness/contrast/saturation/hue jitter; strong: wider jitter, "
                             "gamma, blur and dark corners (default: %(default)s)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=False,
                        help="keep an exponential moving average of the weights (momentum 0.99) and "
                             "validate, checkpoint and report with it (default: off)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=inference.DEFAULT_TTA,
                        help="flip test-time augmentation for the final test metrics "
                             f"(default: {'on' if inference.DEFAULT_TTA else 'off'}, as evaluate.py)")
    parser.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=inference.DEFAULT_POSTPROCESS,
                        help="largest-region post-processing for the final test metrics "
                             f"(default: {'on' if inference.DEFAULT_POSTPROCESS else 'off'}, as evaluate.py)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="seed of the split, weights, order and augmentation "
                                                            "(default: %(default)s)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<model>_<date>-<time>)")
    parser.add_argument("--limit", type=int_range(3), default=None, help="use only the first N pairs, by id (default: all)")
    parser.add_argument("--folds", type=int_range(2, 100), default=None,
                        help="cross-validation: cut the pairs into K seeded folds, test on fold --fold, "
                             "validate on 10%% of the rest (default: no folds, a seeded 80/10/10 split)")
    parser.add_argument("--fold", type=int_range(0, 99), default=0, help="with --folds: the test fold, 0 to K-1 "
                                                            "(default: %(default)s)")
    parser.add_argument("--workers", type=int_range(1, 64), default=2, help="threads preparing batches (default: %(default)s)")
    parser.add_argument("--cache-dir", default=cache.default_cache_dir(),
                        help="where decoded, resized images are cached between runs, keyed by the files' "
                             "names, sizes and dates (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode every image into memory at each start instead of caching "
                             "(the synthetic demo never caches)")
    parser.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=False,
                        help="compute in bfloat16 on a CPU, float16 on a GPU; weights, output layer and "
                             "loss stay float32 (default: off)")
    parser.add_argument("--distribute", choices=distribution.MODES, default="auto",
                        help="data-parallel training: auto uses every GPU when there are several, and "
                             "several machines when TF_CONFIG (TensorFlow) or KERAS_DISTRIBUTION_NUM_PROCESSES "
                             "(JAX) is set; mirrored uses every visible device; --batch-size is global, "
                             "split between replicas (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last completed epoch, with its saved settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder --out")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="Keras output: 0 silent, 1 progress bar, 2 one line per epoch (default: %(default)s)")
    return parser


# Flags that --resume honours; every other flag is the saved run's (config.json).
RESUME_FLAGS = {"out", "resume", "epochs", "data", "images", "masks", "skip_unpaired", "workers", "cache_dir",
                "no_cache", "distribute", "verbose"}


def check_run_dir(args, explicit=frozenset()):
    """Checks `--out` against `--resume`/`--overwrite`, writing nothing.

    Args:
        args: parsed arguments.
        explicit: the flags given on the command line (see `cliargs.explicit_flags`), to say which
            ones `--resume` ignores.

    Returns:
        `(config, state, replace)`: when resuming, the saved settings and `state.json` (else `None`,
        `None`); `replace` is whether `--out` holds an earlier run that `--overwrite` will replace.

    Raises:
        InputError: `--out` exists and is not replaceable, or a run cannot be resumed.
    """
    run_dir = args.out
    if args.resume:
        if args.overwrite:
            raise InputError("--resume and --overwrite contradict each other; pass one")
        needed = (runfolder.CONFIG, runfolder.STATE, runfolder.LAST)
        if not all(os.path.isfile(os.path.join(run_dir, name)) for name in needed):
            raise InputError(f"{run_dir}: nothing to resume (needs config.json, state.json and "
                             "last.keras from a run that finished at least one epoch)")
        config = runfolder.read_json(os.path.join(run_dir, runfolder.CONFIG), "the run's settings")
        state = runfolder.read_json(os.path.join(run_dir, runfolder.STATE), "the run's progress")
        if not isinstance(state, dict) or not isinstance(state.get("epochs_done"), int):
            raise InputError(f"{os.path.join(run_dir, runfolder.STATE)}: damaged (no epochs_done); restore "
                             "it, or start a new run with another --out")
        if args.epochs is not None and args.epochs != config["epochs"]:
            raise InputError(
                f"--epochs {args.epochs}: this run was planned for {config['epochs']} epochs and its "
                "learning rate follows that plan (warm-up, then cosine decay to 0 at the last epoch), so "
                f"--resume continues to epoch {config['epochs']}; for a longer run start a new one")
        ignored = sorted(explicit - RESUME_FLAGS)
        if ignored:
            print("note: --resume keeps the run's saved settings (config.json); ignored: "
                  + ", ".join("--" + name.replace("_", "-") for name in ignored), file=sys.stderr)
        return config, state, False
    if not os.path.exists(run_dir) or (os.path.isdir(run_dir) and not os.listdir(run_dir)):
        return None, None, False
    if not args.overwrite:
        raise InputError(f"{run_dir}: run folder exists; pass --resume to continue it, "
                         "--overwrite to replace it, or another --out")
    if not runfolder.is_run_folder(run_dir):
        kind = "folder" if os.path.isdir(run_dir) else "file"
        raise InputError(f"{run_dir}: this {kind} is not a run folder of train.py (no config.json or "
                         "state.json), and --overwrite replaces only run folders; choose another --out")
    return None, None, True


def resolve_config(args):
    """Turns parsed arguments into the run's full settings, writing nothing.

    Raises:
        InputError: the data folders are missing, or the model cannot take `--image-size`.
    """
    demo = args.data is None and args.images is None and args.masks is None
    if demo:  # written later, inside the run folder
        data_dir = os.path.join(args.out, "synthetic_data")
        images_dir, masks_dir = os.path.join(data_dir, "images"), os.path.join(data_dir, "masks")
    else:
        images_dir, masks_dir = dataGenerator.resolve_folders(args.data, args.images, args.masks)
    model_kwargs = {} if args.base_filters is None else {"base_filters": args.base_filters}
    # Checked here, before any data is decoded, so a bad size fails at once.
    try:
        MODELS[args.model]((*args.image_size,), **model_kwargs)
    except ValueError as error:
        raise InputError(f"--image-size {args.image_size[0]} {args.image_size[1]}"
                         f"{' --base-filters ' + str(args.base_filters) if args.base_filters else ''}: "
                         f"{error}") from None
    try:
        dataGenerator.build_augmentation(args.image_size, 0, zoom=args.zoom, color=args.color_augment)
    except ValueError as error:
        raise InputError(f"--zoom {args.zoom[0]:g} {args.zoom[1]:g}: {error}") from None
    if args.folds is not None and args.fold >= args.folds:
        raise InputError(f"--fold {args.fold}: must be below --folds {args.folds}")
    return {
        "demo": demo,
        "images": os.path.abspath(images_dir),
        "masks": os.path.abspath(masks_dir),
        "skip_unpaired": args.skip_unpaired,
        "model": args.model,
        "model_kwargs": model_kwargs,
        "image_size": list(args.image_size),
        "epochs": args.epochs or (DEMO_EPOCHS if demo else REAL_DATA_EPOCHS),
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "warmup_epochs": args.warmup_epochs,
        "loss": args.loss,
        "augment": args.augment,
        "zoom": list(args.zoom),
        "color_augment": args.color_augment,
        "ema": args.ema,
        "tta": args.tta,
        "postprocess": args.postprocess,
        "seed": args.seed,
        "limit": args.limit,
        "workers": args.workers,
        "mixed_precision": args.mixed_precision,
        "split_fractions": list(dataGenerator.DEFAULT_SPLIT),
        "folds": args.folds,
        "fold": args.fold if args.folds else None,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def find_run_pairs(config):
    """Pairs the run's data folders and applies `--limit`.

    Raises:
        InputError: the folders cannot be paired.
    """
    pairs = dataGenerator.find_pairs(config["images"], config["masks"], config["skip_unpaired"])
    return pairs[: config["limit"]] if config["limit"] else pairs


def make_split(pairs, config):
    """Draws the run's split: k-fold when `config["folds"]`, else the seeded 80/10/10 split.

    Raises:
        InputError: too few pairs for the split.
    """
    if config.get("folds"):
        try:
            split = dataGenerator.kfold_split(pairs, config["folds"], config["fold"], config["split_fractions"][1],
                                              config["seed"])
        except ValueError as error:
            raise InputError(f"{config['images']}: --folds {config['folds']}: {error}") from None
    else:
        split = dataGenerator.split_pairs(pairs, config["split_fractions"], config["seed"])
    if not split["train"] or not split["val"]:
        raise InputError(f"{config['images']}: {len(pairs)} pair(s) are too few to split into train, "
                         "validation and test; use at least 3")
    return split


def relocate_data(args, config, run_dir):
    """On `--resume` with `--data`/`--images`/`--masks`: points the run at moved data folders.

    The new folders must hold every id of the run's split; `config.json` is updated.

    Returns:
        The (possibly updated) settings.

    Raises:
        InputError: the folders are missing, or lack some of the run's ids.
    """
    if args.data is None and args.images is None and args.masks is None:
        return config
    images_dir, masks_dir = dataGenerator.resolve_folders(args.data, args.images, args.masks)
    pairs = dataGenerator.find_pairs(images_dir, masks_dir, skip_unpaired=True)
    split_path = os.path.join(run_dir, runfolder.SPLIT)
    split = dataGenerator.load_split(split_path)
    dataGenerator.select_pairs(pairs, split["train"] + split["val"] + split["test"],
                               f"{split_path} (the run's split, checked against {images_dir})")
    config = {**config, "images": os.path.abspath(images_dir), "masks": os.path.abspath(masks_dir)}
    runfolder.save_json(config, os.path.join(run_dir, runfolder.CONFIG))
    print(f"note: the run's data now comes from {config['images']} and {config['masks']}", file=sys.stderr)
    return config


def _load_arrays(pairs, image_size, cache_dir, progress):
    """Decodes `pairs` (from the cache when possible) into in-memory `uint8` arrays."""
    started = time.perf_counter()
    images, masks, status = cache.cached_arrays(pairs, image_size, cache_dir, progress)
    where = {"off": "decoded (no cache)", "built": f"decoded and cached in {cache_dir}",
             "reused": f"read from the cache in {cache_dir}"}[status]
    print(f"images: {len(pairs)} {where} in {time.perf_counter() - started:.1f} s")
    return images, masks


def make_optimizer(config, steps_per_epoch):
    """Adam with linear warm-up to the peak learning rate, then cosine decay to 0 (and, with
    `config["ema"]`, a moving average of the weights)."""
    total_steps = max(1, config["epochs"] * steps_per_epoch)
    warmup_steps = min(total_steps - 1, int(round(config["warmup_epochs"] * steps_per_epoch)))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config["learning_rate"],
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=config["learning_rate"] if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    return keras.optimizers.Adam(learning_rate=schedule, use_ema=bool(config.get("ema")), ema_momentum=0.99)


def _prepare(args, explicit, spread, setup):
    """Checks everything, then creates (or replaces, or reopens) the run folder and its data.

    Nothing is written until every check that can fail on bad input has passed; an earlier run that
    `--overwrite` replaces is only renamed aside (see `train`).

    Args:
        args, explicit, spread: as in `train`.
        setup: a dict this function fills as it goes, so `_undo` can take back exactly what was done
            if a later step fails: `aside` (where a replaced run went), `created` (this call made
            the folder), `filled` (it wrote into an empty folder the user made); at the end also
            `config`, `state`, `pairs` and the `train`/`val`/`test` pairs.
    """
    run_dir = args.out
    config, state, replace = check_run_dir(args, explicit)
    setup["state"] = state
    if state is not None:
        runfolder.remove_stale_temp_files(run_dir)
        config = relocate_data(args, config, run_dir)
        pairs = dataGenerator.find_pairs(config["images"], config["masks"], skip_unpaired=True)
        split = dataGenerator.load_split(os.path.join(run_dir, runfolder.SPLIT))
    else:
        config = resolve_config(args)
        if not config["demo"]:
            pairs = find_run_pairs(config)
            split = make_split(pairs, config)
        if config["batch_size"] % spread.processes:
            raise InputError(f"--batch-size {config['batch_size']}: must be a multiple of the "
                             f"{spread.processes} processes that share each batch")
        if replace and not config["demo"]:
            out = os.path.realpath(run_dir)
            for folder in (config["images"], config["masks"]):
                if os.path.commonpath([out, os.path.realpath(folder)]) == out:
                    raise InputError(f"{folder}: inside --out {run_dir}, which --overwrite would replace; move "
                                     "the data out of the run folder, or choose another --out")
        # Every check has passed: only now is anything moved or written.
        if replace:
            setup["aside"] = runfolder.set_aside(run_dir)
        existed = os.path.isdir(run_dir)
        make_output_dir(run_dir)
        setup["created" if not existed else "filled"] = True
        if config["demo"]:
            synthetic.write_dataset(os.path.dirname(config["images"]), DEMO_SAMPLES, seed=config["seed"])
            pairs = find_run_pairs(config)
            split = make_split(pairs, config)
        runfolder.save_json(config, os.path.join(run_dir, runfolder.CONFIG))
        runfolder.save_json(split, os.path.join(run_dir, runfolder.SPLIT))
    split_path = os.path.join(run_dir, runfolder.SPLIT)
    setup.update(config=config, pairs=pairs, **{name: dataGenerator.select_pairs(pairs, split[name], split_path)
                                                for name in ("train", "val", "test")})


def _undo(run_dir, setup):
    """Takes back what `_prepare` recorded in `setup`: the folder or files it made, a run it set aside."""
    if setup.get("created"):
        shutil.rmtree(run_dir, ignore_errors=True)
    elif setup.get("filled") and os.path.isdir(run_dir):  # an empty folder the user made: empty again
        for name in os.listdir(run_dir):
            path = os.path.join(run_dir, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    if setup.get("aside"):
        runfolder.restore(setup["aside"], run_dir)
        print(f"note: the earlier run in {run_dir} was kept (nothing was replaced)", file=sys.stderr)


def _load_last_checkpoint(path, scope):
    try:
        with scope:
            return keras.saving.load_model(path)
    except Exception as error:  # Keras raises many types for a damaged archive; all mean "cannot use it"
        raise InputError(f"{path}: damaged, cannot load the last checkpoint ({type(error).__name__}); "
                         "restore it from a backup, or start a new run with another --out") from None


def train(args, explicit=frozenset(), started=None):
    """Trains into `args.out` (creating, replacing or resuming it) and reports the test metrics.

    The caller holds the folder's `runfolder.RunLock`.

    Args:
        args: parsed `build_parser()` arguments, `args.out` set.
        explicit: the flags given on the command line, to say which ones `--resume` ignores.
        started: `time.perf_counter()` at the start of the run (default: now).

    Returns:
        The exit status: 0, or 1 when training stopped on a non-finite loss.

    Raises:
        InputError: bad input, found before anything is written.
    """
    started = time.perf_counter() if started is None else started
    run_dir = args.out
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    spread = distribution.choose_distribution(args.distribute)
    setup = {}
    try:
        _prepare(args, explicit, spread, setup)
        config, state = setup["config"], setup["state"]
        pairs, train_pairs, val_pairs, test_pairs = (setup[k] for k in ("pairs", "train", "val", "test"))
        image_size = tuple(config["image_size"])
        # One cache entry for every pair (the test split too), so other seeds and splits reuse it.
        cache_dir = None if (args.no_cache or config["demo"]) else args.cache_dir
        to_load = pairs if cache_dir else train_pairs + val_pairs
        images, masks = _load_arrays(to_load, image_size, cache_dir, args.verbose == 1)
        row = {pair.id: index for index, pair in enumerate(to_load)}
        # JAX shards each batch evenly over the devices: pad the last batch, weighting the padding 0.
        pad = spread.replicas if keras.backend.backend() == "jax" else 1
        loader = dict(image_size=image_size, batch_size=config["batch_size"], seed=config["seed"],
                      workers=config["workers"], pad_to_multiple=pad,
                      shard=(spread.process_index, spread.processes))

        def dataset(part, **options):
            rows = [row[pair.id] for pair in part]
            return dataGenerator.LesionDataset(part, arrays=(images[rows], masks[rows]), **options, **loader)

        augmentation = {"zoom": tuple(config.get("zoom", dataGenerator.DEFAULT_ZOOM)),
                        "color": config.get("color_augment", "light")}
        train_data = dataset(train_pairs, augment=config["augment"], shuffle=True, augmentation=augmentation)
        val_data = dataset(val_pairs, augment=False, shuffle=False)
        if state is not None:
            last_model = _load_last_checkpoint(os.path.join(run_dir, runfolder.LAST), spread.scope)
    except BaseException:
        _undo(run_dir, setup)  # a run that never started leaves nothing behind
        raise
    keras.utils.set_random_seed(config["seed"])
    policy = distribution.set_mixed_precision(config.get("mixed_precision", False))

    aside = setup.get("aside")

    def forget_replaced_run():
        shutil.rmtree(aside, ignore_errors=True)

    initial_epoch = 0
    if state is None:
        with spread.scope:
            model = MODELS[config["model"]](image_size, **config["model_kwargs"])
            model.compile(optimizer=make_optimizer(config, len(train_data)),
                          loss=metrics.SegmentationLoss(config["loss"]),
                          # weighted: the zero-weight padding of JAX data-parallel batches stays out
                          weighted_metrics=metrics.training_metrics())
        checkpoint = RunCheckpoint(run_dir, on_first_save=forget_replaced_run if aside else None)
    else:
        model = last_model
        initial_epoch = state["epochs_done"]
        _truncate_history(os.path.join(run_dir, runfolder.HISTORY), initial_epoch)
        train_data.set_epoch(initial_epoch)
        checkpoint = RunCheckpoint(run_dir, state.get("best_val_dice", -math.inf), state.get("best_epoch", 0))

    print(f"data: {len(pairs)} pairs from {config['images']} -> train {len(train_pairs)} / "
          f"val {len(val_pairs)} / test {len(test_pairs)} at {image_size[0]}x{image_size[1]}"
          f"{' (synthetic demo)' if config['demo'] else ''} | model: {model.name}, "
          f"{model.count_params():,} params | {config['epochs']} epochs, batch {config['batch_size']}, "
          f"{config['loss']} loss, {policy} | {distribution.describe_devices()} ({spread.description}), Keras {keras.__version__} "
          f"({keras.backend.backend()}) | run: {run_dir}"
          + (f" | resuming after epoch {initial_epoch}" if initial_epoch else "")
          + (f" | replacing the earlier run (kept in {aside} until the first checkpoint)" if aside else ""))

    warning = distribution.gpu_fallback_warning()
    if warning:
        print(warning, file=sys.stderr)

    nan_guard = StopOnNonFiniteLoss()
    callbacks = [
        nan_guard,
        EpochTiming(started),
        keras.callbacks.CSVLogger(os.path.join(run_dir, runfolder.HISTORY), append=initial_epoch > 0),
        checkpoint,
        CurvesPlot(run_dir, f"{model.name} on {os.path.basename(os.path.dirname(config['images']))}"),
        ProgressWithoutTimings(),  # Keras adds its own, timing columns included, when none is given
    ]
    if config.get("ema"):
        # Validation sees the averaged weights (swapped in and back around it), so the best epoch is
        # chosen by what best.keras holds; last.keras keeps the raw weights, for --resume.
        callbacks.insert(0, keras.callbacks.SwapEMAWeights())
    if initial_epoch < config["epochs"]:
        # shuffle=False: LesionDataset already walks a permutation seeded by (seed, epoch); Keras's own
        # batch shuffling would draw from Python's global `random`, so the order would change on --resume.
        try:
            model.fit(train_data, validation_data=val_data, epochs=config["epochs"], initial_epoch=initial_epoch,
                      callbacks=callbacks, verbose=args.verbose, shuffle=False)
        except BaseException as error:
            if aside and not checkpoint.saved:  # no checkpoint yet: the old run comes back
                _undo(run_dir, setup)
            if not (isinstance(error, ValueError) and "MultiWorker" in spread.description
                    and "PerReplica" in str(error)):
                raise
            print("error: Keras " + keras.__version__ + " cannot fit() under MultiWorkerMirroredStrategy "
                  "(https://github.com/keras-team/keras/issues/20585); for several machines use the JAX "
                  "backend (README, 'Several GPUs, several machines'), or unset TF_CONFIG", file=sys.stderr)
            if setup.get("created"):
                shutil.rmtree(run_dir, ignore_errors=True)
            return 1
    if nan_guard.where is not None or checkpoint.diverged:
        where = ""
        if nan_guard.where is not None:
            epoch, batch, loss = nan_guard.where
            where = f" (loss {loss} at epoch {epoch}, batch {batch})"
        best_path = os.path.join(run_dir, runfolder.BEST)
        kept = (f"the best checkpoint so far, from epoch {checkpoint.best_epoch}, is intact in {best_path}"
                if os.path.isfile(best_path) else "no checkpoint was saved")
        if aside and not checkpoint.saved:
            _undo(run_dir, setup)
            kept = f"nothing was saved, and the earlier run in {run_dir} was kept"
        print(f"error: training stopped: the model diverged{where}; try a lower --learning-rate. {kept}",
              file=sys.stderr)
        return 1

    if spread.process_index:  # the chief's run folder is the result; it alone tests
        print(f"process {spread.process_index}: training done; the first process reports the test metrics")
        return 0
    distribution.use_one_device()  # the test images come one by one, in batches of any size
    best_model = inference.load_model(os.path.join(run_dir, runfolder.BEST))
    options = dict(tta=config["tta"], postprocess=config["postprocess"])
    if test_pairs:
        rows = evaluate.evaluate_pairs(best_model, test_pairs, config["batch_size"], progress=args.verbose == 1,
                                       **options)
        summary = evaluate.write_report(rows, run_dir, {"model": os.path.join(run_dir, runfolder.BEST),
                                                        "images": "test split", **options})
        evaluate.save_cases(best_model, test_pairs, rows, os.path.join(run_dir, "cases.png"),
                            title="test split: best, median, worst", **options)
        print(evaluate.format_table(summary))
        print(f"best validation Dice {checkpoint.best:.4f} at epoch {checkpoint.best_epoch}; "
              f"test Dice {summary['dice']:.4f} on {summary['n_images']} images; run folder: {run_dir}")
    return 0


def main(argv=None):
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = explicit_flags(parser, sys.argv[1:] if argv is None else argv)
    if args.out is None:
        args.out = os.path.join("runs", f"{args.model}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if args.distribute in ("auto", "multi-worker") and keras.backend.backend() in ("tensorflow", "jax"):
        is_chief, task_name = distribution.multi_worker_role()
        if not is_chief:  # every worker trains, only the chief's folder is the result
            args.out = f"{args.out}.{task_name}"
    # Taken before the folder is looked at, so two runs cannot both find it free.
    with runfolder.RunLock(args.out):
        return train(args, explicit, started)


if __name__ == "__main__":
    sys.exit(run_cli(main))
