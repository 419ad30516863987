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
import json
import math
import os
import re
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
from errors import InputError, make_output_dir, run_cli
from model_basic import build_unet
from model_improved import build_improved_unet

MODELS = {"improved": build_improved_unet, "basic": build_unet}
REAL_DATA_EPOCHS = 30
DEMO_EPOCHS = 8
DEMO_SAMPLES = 240


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


def _atomic_save_model(model, path):
    tmp_path = f"{path[:-len('.keras')]}.tmp{os.getpid()}.keras"
    model.save(tmp_path)
    os.replace(tmp_path, path)


def export_inference_model(model, path):
    """Saves an uncompiled copy of `model` (weights and architecture only), atomically.

    Without a compile config the file loads with `keras.saving.load_model(path)` in any process,
    whether or not this project's losses are importable there.
    """
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    _atomic_save_model(clone, path)


class RunCheckpoint(keras.callbacks.Callback):
    """After each epoch: `best.keras` when validation Dice improves, then `last.keras` and `state.json`.

    Every file is written to a temporary name and renamed, so a kill at any moment leaves the
    previous complete files in place.

    Args:
        run_dir: the run folder.
        best: best validation Dice so far (when resuming).
        best_epoch: its epoch number (1-based), or 0.
    """

    def __init__(self, run_dir, best=-math.inf, best_epoch=0):
        super().__init__()
        self.run_dir = run_dir
        self.best = best
        self.best_epoch = best_epoch

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_dice")
        if value is not None and math.isfinite(value) and value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            export_inference_model(self.model, os.path.join(self.run_dir, "best.keras"))
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            return  # keep last.keras at the last sound epoch
        _atomic_save_model(self.model, os.path.join(self.run_dir, "last.keras"))
        dataGenerator.save_json(
            {"epochs_done": epoch + 1, "best_val_dice": self.best, "best_epoch": self.best_epoch},
            os.path.join(self.run_dir, "state.json"))


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
        tmp_path = f"{path}.tmp{os.getpid()}"
        with open(tmp_path, "w", encoding="utf-8") as handle:
            handle.writelines(kept)
        os.replace(tmp_path, path)


_TEMP_NAME = re.compile(r"\.tmp\d+")


def _remove_stale_temp_files(run_dir):
    """Deletes temporary files (`<name>.tmp<pid>...`) that a killed run left half-written."""
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if _TEMP_NAME.search(name) and os.path.isfile(path):
            os.remove(path)


def build_parser():
    parser = argparse.ArgumentParser(
        description="Train a basic or Improved U-Net on lesion images and report test metrics. "
                    "With no data arguments, trains on a synthetic demo data set.")
    dataGenerator.add_data_arguments(parser)
    parser.add_argument("--model", choices=sorted(MODELS), default="improved",
                        help="architecture: the Improved U-Net of Isensee et al. or the basic U-Net "
                             "(default: %(default)s)")
    parser.add_argument("--image-size", type=int, nargs=2, default=list(dataGenerator.DEFAULT_IMAGE_SIZE),
                        metavar=("H", "W"), help="training height and width (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs (default: {REAL_DATA_EPOCHS} on real data, {DEMO_EPOCHS} for the demo)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="peak Adam learning rate, reached after the warm-up and then cosine-decayed "
                             "to 0 (default: %(default)s)")
    parser.add_argument("--warmup-epochs", type=float, default=1.0,
                        help="epochs of linear learning-rate warm-up (default: %(default)s)")
    parser.add_argument("--loss", choices=metrics.SegmentationLoss.KINDS, default="dice_bce",
                        help="per-image soft Dice + binary cross-entropy, or either alone (default: %(default)s)")
    parser.add_argument("--base-filters", type=int, default=None,
                        help="filters at the first level (default: the paper's, 16 for improved, 64 for basic)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="flips, 90-degree turns, small affine and colour jitter on training "
                             "batches (default: on)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=inference.DEFAULT_TTA,
                        help="flip test-time augmentation for the final test metrics "
                             f"(default: {'on' if inference.DEFAULT_TTA else 'off'}, as evaluate.py)")
    parser.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=inference.DEFAULT_POSTPROCESS,
                        help="largest-region post-processing for the final test metrics "
                             f"(default: {'on' if inference.DEFAULT_POSTPROCESS else 'off'}, as evaluate.py)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, weights, order and augmentation "
                                                            "(default: %(default)s)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<model>_<date>-<time>)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs, by id (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="threads preparing batches (default: %(default)s)")
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


def prepare_run_dir(args):
    """Creates, checks or reopens the run folder; on `--resume`, loads the saved settings.

    Returns:
        `(config, state, created)`: the saved settings and `state.json` when resuming (else `None`),
        and whether this call created the folder.

    Raises:
        InputError: the folder exists without `--resume`/`--overwrite`, or cannot be resumed.
    """
    run_dir = args.out
    config_path = os.path.join(run_dir, "config.json")
    if args.resume:
        state_path = os.path.join(run_dir, "state.json")
        if not (os.path.isfile(config_path) and os.path.isfile(state_path)
                and os.path.isfile(os.path.join(run_dir, "last.keras"))):
            raise InputError(f"{run_dir}: nothing to resume (needs config.json, state.json and "
                             "last.keras from a run that finished at least one epoch)")
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
        if args.epochs is not None:
            config["epochs"] = args.epochs
        _remove_stale_temp_files(run_dir)
        return config, state, False
    created = not os.path.exists(run_dir)
    if os.path.exists(run_dir) and (not os.path.isdir(run_dir) or os.listdir(run_dir)):
        if not args.overwrite:
            raise InputError(f"{run_dir}: run folder exists; pass --resume to continue it, "
                             "--overwrite to replace it, or another --out")
        shutil.rmtree(run_dir) if os.path.isdir(run_dir) else os.remove(run_dir)
        created = True
    make_output_dir(run_dir)
    return None, None, created


def resolve_config(args):
    """Turns parsed arguments into the run's full settings, making the demo data if needed."""
    demo = args.data is None and args.images is None and args.masks is None
    if demo:
        data_dir = os.path.join(args.out, "synthetic_data")
        synthetic.write_dataset(data_dir, DEMO_SAMPLES, seed=args.seed)
        images_dir, masks_dir = os.path.join(data_dir, "images"), os.path.join(data_dir, "masks")
    else:
        images_dir, masks_dir = dataGenerator.resolve_folders(args.data, args.images, args.masks)
    model_kwargs = {} if args.base_filters is None else {"base_filters": args.base_filters}
    # Checked here, before any data is decoded, so a bad size fails at once.
    try:
        MODELS[args.model]((*args.image_size,), **model_kwargs)
    except ValueError as error:
        raise InputError(f"--image-size {args.image_size[0]} {args.image_size[1]}: {error}") from None
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
        "tta": args.tta,
        "postprocess": args.postprocess,
        "seed": args.seed,
        "limit": args.limit,
        "workers": args.workers,
        "mixed_precision": args.mixed_precision,
        "split_fractions": list(dataGenerator.DEFAULT_SPLIT),
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _set_up_data(args, run_dir, config, state):
    """Resolves the settings (writing `config.json`), pairs the data and splits it (`split.json`).

    Returns:
        `(config, (train_pairs, val_pairs, test_pairs), all_pairs)`.
    """
    if config is None:
        config = resolve_config(args)
    pairs = dataGenerator.find_pairs(config["images"], config["masks"], config["skip_unpaired"])
    if config["limit"]:
        pairs = pairs[: config["limit"]]
    split_path = os.path.join(run_dir, "split.json")
    if state is None:
        split = dataGenerator.split_pairs(pairs, config["split_fractions"], config["seed"])
    else:
        split = dataGenerator.load_split(split_path)
    parts = tuple(dataGenerator.select_pairs(pairs, split[name], split_path) for name in ("train", "val", "test"))
    if not parts[0] or not parts[1]:
        raise InputError(f"{config['images']}: {len(pairs)} pair(s) are too few to split into train, "
                         "validation and test; use at least 3")
    if state is None:
        dataGenerator.save_json(config, os.path.join(run_dir, "config.json"))
        dataGenerator.save_json(split, split_path)
    return config, parts, pairs


def _load_arrays(pairs, image_size, cache_dir, progress):
    """Decodes `pairs` (from the cache when possible) into in-memory `uint8` arrays."""
    started = time.perf_counter()
    images, masks, status = cache.cached_arrays(pairs, image_size, cache_dir, progress)
    where = {"off": "decoded (no cache)", "built": f"decoded and cached in {cache_dir}",
             "reused": f"read from the cache in {cache_dir}"}[status]
    print(f"images: {len(pairs)} {where} in {time.perf_counter() - started:.1f} s")
    return images, masks


def make_optimizer(config, steps_per_epoch):
    """Adam with linear warm-up to the peak learning rate, then cosine decay to 0."""
    total_steps = max(1, config["epochs"] * steps_per_epoch)
    warmup_steps = min(total_steps - 1, int(round(config["warmup_epochs"] * steps_per_epoch)))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config["learning_rate"],
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=config["learning_rate"] if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    return keras.optimizers.Adam(learning_rate=schedule)


def main(argv=None):
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = os.path.join("runs", f"{args.model}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if args.distribute in ("auto", "multi-worker") and keras.backend.backend() in ("tensorflow", "jax"):
        is_chief, task_name = distribution.multi_worker_role()
        if not is_chief:  # every worker trains, only the chief's folder is the result
            args.out = f"{args.out}.{task_name}"
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    spread = distribution.choose_distribution(args.distribute)
    config, state, created = prepare_run_dir(args)
    run_dir = args.out
    try:
        config, (train_pairs, val_pairs, test_pairs), pairs = _set_up_data(args, run_dir, config, state)
        n_pairs = len(pairs)
        image_size = tuple(config["image_size"])
        # One cache entry for every pair (the test split too), so other seeds and splits reuse it.
        cache_dir = None if (args.no_cache or config["demo"]) else args.cache_dir
        to_load = pairs if cache_dir else train_pairs + val_pairs
        images, masks = _load_arrays(to_load, image_size, cache_dir, args.verbose == 1)
        row = {pair.id: index for index, pair in enumerate(to_load)}
        # JAX shards each batch evenly over the devices: pad the last batch, weighting the padding 0.
        pad = spread.replicas if keras.backend.backend() == "jax" else 1
        if config["batch_size"] % spread.processes:
            raise InputError(f"--batch-size {config['batch_size']}: must be a multiple of the "
                             f"{spread.processes} processes that share each batch")
        loader = dict(image_size=image_size, batch_size=config["batch_size"], seed=config["seed"],
                      workers=config["workers"], pad_to_multiple=pad,
                      shard=(spread.process_index, spread.processes))

        def dataset(part, **options):
            rows = [row[pair.id] for pair in part]
            return dataGenerator.LesionDataset(part, arrays=(images[rows], masks[rows]), **options, **loader)

        train_data = dataset(train_pairs, augment=config["augment"], shuffle=True)
        val_data = dataset(val_pairs, augment=False, shuffle=False)
    except (InputError, KeyboardInterrupt):
        if created:  # a run that never started leaves nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    keras.utils.set_random_seed(config["seed"])
    policy = distribution.set_mixed_precision(config.get("mixed_precision", False))

    initial_epoch = 0
    if state is None:
        with spread.scope:
            model = MODELS[config["model"]](image_size, **config["model_kwargs"])
            model.compile(optimizer=make_optimizer(config, len(train_data)),
                          loss=metrics.SegmentationLoss(config["loss"]),
                          # weighted: the zero-weight padding of JAX data-parallel batches stays out
                          weighted_metrics=metrics.training_metrics())
        checkpoint = RunCheckpoint(run_dir)
    else:
        with spread.scope:
            model = keras.saving.load_model(os.path.join(run_dir, "last.keras"))
        initial_epoch = state["epochs_done"]
        _truncate_history(os.path.join(run_dir, "history.csv"), initial_epoch)
        train_data.set_epoch(initial_epoch)
        checkpoint = RunCheckpoint(run_dir, state["best_val_dice"], state["best_epoch"])

    print(f"data: {n_pairs} pairs from {config['images']} -> train {len(train_pairs)} / "
          f"val {len(val_pairs)} / test {len(test_pairs)} at {image_size[0]}x{image_size[1]}"
          f"{' (synthetic demo)' if config['demo'] else ''} | model: {model.name}, "
          f"{model.count_params():,} params | {config['epochs']} epochs, batch {config['batch_size']}, "
          f"{config['loss']} loss, {policy} | {distribution.describe_devices()} ({spread.description}), Keras {keras.__version__} "
          f"({keras.backend.backend()}) | run: {run_dir}"
          + (f" | resuming after epoch {initial_epoch}" if initial_epoch else ""))

    nan_guard = StopOnNonFiniteLoss()
    callbacks = [
        nan_guard,
        EpochTiming(started),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=initial_epoch > 0),
        checkpoint,
        CurvesPlot(run_dir, f"{model.name} on {os.path.basename(os.path.dirname(config['images']))}"),
        ProgressWithoutTimings(),  # Keras adds its own, timing columns included, when none is given
    ]
    if initial_epoch < config["epochs"]:
        # shuffle=False: LesionDataset already walks a permutation seeded by (seed, epoch); Keras's own
        # batch shuffling would draw from Python's global `random`, so the order would change on --resume.
        try:
            model.fit(train_data, validation_data=val_data, epochs=config["epochs"], initial_epoch=initial_epoch,
                      callbacks=callbacks, verbose=args.verbose, shuffle=False)
        except ValueError as error:
            if "MultiWorker" not in spread.description or "PerReplica" not in str(error):
                raise
            print("error: Keras " + keras.__version__ + " cannot fit() under MultiWorkerMirroredStrategy "
                  "(https://github.com/keras-team/keras/issues/20585); for several machines use the JAX "
                  "backend (README, 'Several GPUs, several machines'), or unset TF_CONFIG", file=sys.stderr)
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            return 1
    if nan_guard.where is not None:
        epoch, batch, loss = nan_guard.where
        print(f"error: training stopped: the loss became {loss} at epoch {epoch}, batch {batch}; "
              f"try a lower --learning-rate. The best checkpoint so far is intact in {run_dir}/best.keras",
              file=sys.stderr)
        return 1

    if spread.process_index:  # the chief's run folder is the result; it alone tests
        print(f"process {spread.process_index}: training done; the first process reports the test metrics")
        return 0
    distribution.use_one_device()  # the test images come one by one, in batches of any size
    best_model = inference.load_model(os.path.join(run_dir, "best.keras"))
    options = dict(tta=config["tta"], postprocess=config["postprocess"])
    if test_pairs:
        rows = evaluate.evaluate_pairs(best_model, test_pairs, config["batch_size"], progress=args.verbose == 1,
                                       **options)
        summary = evaluate.write_report(rows, run_dir, {"model": os.path.join(run_dir, "best.keras"),
                                                        "images": "test split", **options})
        evaluate.save_cases(best_model, test_pairs, rows, os.path.join(run_dir, "cases.png"),
                            title="test split: best, median, worst", **options)
        print(evaluate.format_table(summary))
        print(f"best validation Dice {checkpoint.best:.4f} at epoch {checkpoint.best_epoch}; "
              f"test Dice {summary['dice']:.4f} on {summary['n_images']} images; run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
