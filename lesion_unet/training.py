"""Trains a lesion segmentation model into a run folder and reports its test metrics.

The library behind `train.py`, for notebooks and tests as well:

    config = training.make_config("runs/try", data="../shared/data/isic2017", epochs=2)
    training.run_training(config, "runs/try")      # data -> model -> fit -> test report
    training.resume_training("runs/try")           # continues a killed run to its planned epochs

A run folder gets `config.json`, `split.json`, `history.csv`, `curves.png`, `best.keras` (best
validation Dice, loadable with `keras.saving.load_model` alone), `last.keras` and `state.json` (for
resuming), and after the last epoch the test split's `metrics.json`, `per_image.csv` and `cases.png`
(file names in `runfolder.py`). Nothing is written before every check on the input has passed.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import sys
import time
import zipfile

import keras

from lesion_unet import cache
from lesion_unet import callbacks as run_callbacks
from lesion_unet import data as dataGenerator
from lesion_unet import distribution
from lesion_unet import inference
from lesion_unet import losses
from lesion_unet import runfolder
from lesion_unet import scoring
from lesion_unet import settings
from lesion_unet import synthetic
from lesion_unet.errors import InputError, make_output_dir
from lesion_unet.basic_unet import build_unet
from lesion_unet.improved_unet import build_improved_unet

MODELS = {"improved": build_improved_unet, "basic": build_unet}
# The schema of config.json: 2 since 0.9.0 (this key); runs of earlier releases have none and read as 1.
# A run folder written by a later release, whose settings this one may not know, is refused.
CONFIG_VERSION = 2


def make_config(run_dir, **overrides):
    """Returns the resolved settings of a new run: `train.py`'s defaults with `overrides`.

    Args:
        run_dir: the run folder (the synthetic demo writes its data inside it).
        **overrides: fields of `train_options.RunSettings` (each a `train.py` flag by its argparse
            name), e.g. `epochs=2`, `image_size=(64, 64)`, `model="basic"`, and the data flags,
            e.g. `data="DIR"`.

    Raises:
        InputError: an unknown setting, or what `resolve_config` refuses.
    """
    from lesion_unet import train_options  # RunSettings holds every default, once; its parser applies them

    args = train_options.build_parser().parse_args([])
    unknown = sorted(set(overrides) - set(vars(args)))
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)}; see python train.py --help")
    vars(args).update(overrides, out=run_dir)
    return resolve_config(args)


def resolve_config(args):
    """Turns parsed `train.py` arguments into the run's full settings, writing nothing.

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
    if args.input_norm:  # only when on, so the configs of earlier runs still mean what they meant
        model_kwargs["input_norm"] = True
    # Checked here, before any data is decoded, so a bad size fails at once.
    try:
        MODELS[args.model]((*args.image_size,), **model_kwargs)
    except ValueError as error:
        raise InputError(f"--image-size {args.image_size[0]} {args.image_size[1]}"
                         f"{' --base-filters ' + str(args.base_filters) if args.base_filters else ''}: "
                         f"{error}") from None
    try:
        dataGenerator.build_augmentation(args.image_size, 0, zoom=args.zoom, color=args.color_augment,
                                         hair=args.hair_augment)
    except ValueError as error:
        raise InputError(f"--zoom {args.zoom[0]:g} {args.zoom[1]:g}: {error}") from None
    if args.init is not None and not os.path.isfile(args.init):
        raise InputError(f"--init {args.init}: no such model file; pass a .keras file")
    if args.loss != "bce":  # train.py refuses these at parse time; a call from Python is checked here
        try:
            losses.check_fn_weight(args.loss, args.fn_weight)
        except ValueError as error:
            raise InputError(f"--fn-weight {args.fn_weight:g}: {error}") from None
    if args.folds is not None and args.fold >= args.folds:
        raise InputError(f"--fold {args.fold}: must be below --folds {args.folds}")
    mixed_precision, precision_reason = distribution.choose_mixed_precision(args.mixed_precision)
    return {
        "demo": demo,
        "images": os.path.abspath(images_dir),
        "masks": os.path.abspath(masks_dir),
        "skip_unpaired": args.skip_unpaired,
        "model": args.model,
        "model_kwargs": model_kwargs,
        "image_size": list(args.image_size),
        "epochs": args.epochs or (settings.DEMO_EPOCHS if demo else settings.REAL_DATA_EPOCHS),
        "time_budget_minutes": (settings.REAL_DATA_TIME_BUDGET_MINUTES if args.time_budget is None and not demo
                                else args.time_budget or None),
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "warmup_epochs": args.warmup_epochs,
        "loss": args.loss,
        "fn_weight": losses.DICE_FN_WEIGHT if args.loss == "bce" else args.fn_weight,  # BCE has no Dice term
        "augment": args.augment,
        "zoom": list(args.zoom),
        "color_augment": args.color_augment,
        "hair_augment": args.hair_augment,
        "ema": args.ema,
        "run_eagerly": args.run_eagerly,
        "init": os.path.abspath(args.init) if args.init else None,
        "tta": args.tta,
        "postprocess": args.postprocess,
        "seed": args.seed,
        "limit": args.limit,
        "workers": args.workers,
        "mixed_precision": mixed_precision,
        "mixed_precision_reason": precision_reason,
        "split_fractions": list(settings.DEFAULT_SPLIT),
        "folds": args.folds,
        "fold": args.fold if args.folds else None,
        "fold_by": args.fold_by if args.folds else None,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "config_version": CONFIG_VERSION,
    }


def load_initial_weights(model, path):
    """Copies the weights of a saved model into `model` (`train.py --init`).

    Raises:
        InputError: the file is not a model this project can load, or its weights do not fit `model`
            (another architecture, depth or width; the image size does not matter).
    """
    source = inference.load_model(path)
    if [tuple(w.shape) for w in source.weights] != [tuple(w.shape) for w in model.weights]:
        raise InputError(f"--init {path}: its weights ({source.name}, {source.count_params():,} parameters) do not "
                         f"fit this model ({model.name}, {model.count_params():,}); pass the --model and "
                         "--base-filters it was trained with")
    model.set_weights(source.get_weights())


def check_new_run_dir(run_dir, overwrite=False):
    """Checks that a new run may write into `run_dir`, writing nothing.

    Returns:
        Whether `run_dir` holds an earlier run that `overwrite` will replace.

    Raises:
        InputError: `run_dir` exists and is not replaceable.
    """
    if not os.path.exists(run_dir) or (os.path.isdir(run_dir) and not os.listdir(run_dir)):
        return False
    if not runfolder.is_run_folder(run_dir):
        kind = "folder" if os.path.isdir(run_dir) else "file"
        raise InputError(f"{run_dir}: this {kind} exists and is not a run folder of train.py (no config.json "
                         "or state.json of a run); choose a new or empty --out")
    if not overwrite:
        raise InputError(f"{run_dir}: run folder exists; pass --resume to continue it, "
                         "--overwrite to replace it, or another --out")
    foreign = runfolder.foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(f"{run_dir}: holds files that no run writes ({shown}), so --overwrite will not "
                         "replace it; move them out, or choose another --out")
    return True


def check_resumable(run_dir, epochs=None):
    """Checks that `run_dir` can be resumed, writing nothing.

    Args:
        run_dir: the run folder.
        epochs: the epochs asked for, or `None`; a resumed run ends where it was planned to.

    Returns:
        `(config, state)`: the saved settings and progress.

    Raises:
        InputError: nothing to resume, a damaged file, or `epochs` other than the planned number.
    """
    needed = (runfolder.CONFIG, runfolder.STATE, runfolder.LAST)
    if not all(os.path.isfile(os.path.join(run_dir, name)) for name in needed):
        raise InputError(f"{run_dir}: nothing to resume (needs config.json, state.json and "
                         "last.keras from a run that finished at least one epoch)")
    config = runfolder.read_config(run_dir)
    check_settings(config, os.path.join(run_dir, runfolder.CONFIG))
    state = runfolder.read_json(os.path.join(run_dir, runfolder.STATE), "the run's progress")
    check_progress(state, config, os.path.join(run_dir, runfolder.STATE))
    if epochs is not None and epochs != config["epochs"]:
        raise InputError(
            f"--epochs {epochs}: this run was planned for {config['epochs']} epochs and its "
            "learning rate follows that plan (warm-up, then cosine decay to 0 at the last epoch), so "
            f"--resume continues to epoch {config['epochs']}; for a longer run start a new one")
    return config, state


# config.json keys that are train.py flags under another name; the rest carry the flag's own name.
_CONFIG_FLAGS = {"time_budget_minutes": "time_budget"}


def _setting_problem(action, value, item=False):
    """Why `value`, read from a run's files, is not what `action` (a train.py flag) could have given;
    `None` when it is. `item`: `value` is one of the flag's two values (`nargs=2`)."""
    if value is None:
        return None if action.default is None and not item else "must not be empty"
    if action.nargs == 2 and not item:
        if not isinstance(value, list) or len(value) != 2:
            return "must be a list of two values"
        return next(filter(None, (_setting_problem(action, one, item=True) for one in value)), None)
    if action.choices is not None:
        return None if value in action.choices else f"must be one of {', '.join(map(str, action.choices))}"
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
        return None if isinstance(value, bool) else "must be true or false"
    if hasattr(action.type, "high"):  # cliargs.int_range / float_range: the parser's own bounds
        integer = action.type.__name__ == "integer"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return f"must be {'an integer' if integer else 'a number'}"
        try:
            action.type(repr(value))
        except argparse.ArgumentTypeError as error:
            return str(error)
    return None


def check_settings(config, path):
    """Checks a run's saved settings as strictly as `train.py` checks its command line.

    Args:
        config: the dict read from `config.json`.
        path: the file, for the message.

    Raises:
        InputError: a setting of the wrong type or out of the flag's range, naming it.
    """
    from lesion_unet import train_options  # its parser holds every flag's type and range, once

    if not isinstance(config, dict) or not all(key in config for key in runfolder.CONFIG_KEYS):
        raise InputError(f"{path}: not the settings of a train.py run; restore the file, or start a new run "
                         "with another --out")
    version = config.get("config_version", 1)
    if type(version) is not int or not 1 <= version <= CONFIG_VERSION:
        raise InputError(f"{path}: config_version = {json.dumps(version)}: this release reads versions 1 to "
                         f"{CONFIG_VERSION}; use the later release that wrote it, or restore the file")
    actions = {action.dest: action for action in train_options.build_parser()._actions}
    values = {key: config[key] for key in config if _CONFIG_FLAGS.get(key, key) in actions}
    values.update((key, value) for key, value in (config.get("model_kwargs") or {}).items() if key in actions)
    for key, value in values.items():
        if value is None and key in ("fold", "fold_by") and config.get("folds") is None:
            continue  # recorded as null in a run without --folds
        problem = _setting_problem(actions[_CONFIG_FLAGS.get(key, key)], value)
        if problem:
            raise InputError(f"{path}: {key} = {json.dumps(value)}: {problem}; restore the file, or start a new "
                             "run with another --out")
    if "zoom" in values and values["zoom"][0] > values["zoom"][1]:
        raise InputError(f"{path}: zoom = {json.dumps(values['zoom'])}: the smaller zoom comes first; restore the "
                         "file, or start a new run with another --out")
    if config.get("folds") is not None and not 0 <= config.get("fold", 0) < config["folds"]:
        raise InputError(f"{path}: fold = {json.dumps(config.get('fold'))}: must be below folds "
                         f"{config['folds']}; restore the file, or start a new run with another --out")


def check_progress(state, config, path):
    """Checks a run's `state.json` against its settings.

    Raises:
        InputError: a damaged or impossible value, naming it.
    """
    if not isinstance(state, dict) or type(state.get("epochs_done")) is not int:
        raise InputError(f"{path}: damaged (no epochs_done); restore it, or start a new run with another --out")
    problems = []
    if not 0 <= state["epochs_done"] <= config["epochs"]:
        problems.append(f"epochs_done = {state['epochs_done']}: must be 0 to the run's {config['epochs']} epochs")
    best = state.get("best_val_dice")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float)) or
                             not (best == -math.inf or 0 <= best <= 1)):
        problems.append(f"best_val_dice = {json.dumps(best)}: must be a number from 0 to 1")
    epoch = state.get("best_epoch", 0)
    if type(epoch) is not int or not 0 <= epoch <= config["epochs"]:
        problems.append(f"best_epoch = {json.dumps(epoch)}: must be an epoch of the run")
    if problems:
        raise InputError(f"{path}: {problems[0]}; restore the file, or start a new run with another --out")


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
                                              config["seed"], config.get("fold_by") or "random")
        except ValueError as error:
            raise InputError(f"{config['images']}: --folds {config['folds']}: {error}") from None
    else:
        split = dataGenerator.split_pairs(pairs, config["split_fractions"], config["seed"])
    if not split["train"] or not split["val"]:
        raise InputError(f"{config['images']}: {len(pairs)} pair(s) are too few to split into train, "
                         "validation and test; use at least 3")
    return split


def relocate_data(config, run_dir, images_dir, masks_dir, pairs, split):
    """Points a resumed run at moved data folders and updates its `config.json`.

    Args:
        config: the run's settings.
        run_dir: the run folder.
        images_dir, masks_dir: where the data lies now.
        pairs: the pairs found there.
        split: the run's split; the new folders must hold every id of it.

    Returns:
        The updated settings.

    Raises:
        InputError: the folders lack some of the run's ids.
    """
    split_path = os.path.join(run_dir, runfolder.SPLIT)
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


def make_learning_rate_schedule(config, steps_per_epoch, epochs=None):
    """Linear warm-up to the peak learning rate over `config["warmup_epochs"]`, then cosine decay to 0
    at the end of epoch `epochs` (default: `config["epochs"]`)."""
    total_steps = max(1, (epochs or config["epochs"]) * steps_per_epoch)
    warmup_steps = min(total_steps - 1, int(round(config["warmup_epochs"] * steps_per_epoch)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config["learning_rate"],
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=config["learning_rate"] if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def _fn_weight(config):
    """The loss's weight of missed lesion pixels; runs from before the option have none (soft Dice)."""
    return config.get("fn_weight", losses.DICE_FN_WEIGHT)


def make_optimizer(config, steps_per_epoch):
    """Adam on `make_learning_rate_schedule`'s schedule (and, with `config["ema"]`, a moving average of
    the weights)."""
    return keras.optimizers.Adam(learning_rate=make_learning_rate_schedule(config, steps_per_epoch),
                                 use_ema=bool(config.get("ema")), ema_momentum=0.99)


def make_time_budget(config, run_dir, steps_per_epoch, test_share, processes=1):
    """The `callbacks.TimeBudget` of a new run, or `None` when `config` sets no budget.

    The plan is made after the warm-up (and never before epoch 2: the first epoch also pays for
    tracing the model); a cut is written into the run's `config.json` as `epochs`, with the epochs asked
    for kept as `epochs_requested`, so `--resume` and anyone reading the run see what was trained.
    A run over several processes gets no budget (recorded in `config.json`): each would time its own
    epochs, and processes that stopped at different epochs would wait for each other forever.
    """
    minutes = config.get("time_budget_minutes")
    if not minutes:
        return None
    config_path = os.path.join(run_dir, runfolder.CONFIG)
    if processes > 1:
        print(f"note: no time budget with {processes} processes (they must stop at the same epoch); "
              f"training all {config['epochs']} epochs", file=sys.stderr)
        config["time_budget_minutes"] = None
        runfolder.save_json(config, config_path)
        return None

    def record(epochs):
        config.update(epochs_requested=config.get("epochs_requested", config["epochs"]), epochs=epochs)
        runfolder.save_json(config, config_path)

    return run_callbacks.TimeBudget(
        minutes * 60, config["epochs"], plan_at=max(2, math.ceil(config["warmup_epochs"])),
        make_schedule=lambda epochs: make_learning_rate_schedule(config, steps_per_epoch, epochs),
        test_share=test_share, on_replan=record)


def _prepare_new(config, run_dir, overwrite, spread, setup):
    """Checks everything, then creates (or replaces) the run folder and its data.

    Nothing is written until every check that can fail on bad input has passed; an earlier run that
    `overwrite` replaces is only renamed aside (see `run_training`).

    Args:
        config, run_dir, overwrite: as in `run_training`.
        spread: the `distribution.Distribution` in use.
        setup: a dict this function fills as it goes, so `_undo` can take back exactly what was done
            if a later step fails: `aside` (where a replaced run went), `created` (this call made
            the folder), `filled` (it wrote into an empty folder the user made); at the end also
            `config`, `state` (`None`), `pairs` and the `train`/`val`/`test` pairs.
    """
    replace = check_new_run_dir(run_dir, overwrite)
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
    if replace and config.get("init"):
        out = os.path.realpath(run_dir)
        if os.path.commonpath([out, os.path.realpath(config["init"])]) == out:
            raise InputError(f"--init {config['init']}: inside --out {run_dir}, which --overwrite replaces before "
                             "the model starts; copy the model out of the run folder first (e.g. cp "
                             f"{os.path.join(run_dir, runfolder.BEST)} start.keras), or choose another --out")
    # Every check has passed: only now is anything moved or written.
    if replace:
        setup["aside"] = runfolder.set_aside(run_dir)
    existed = os.path.isdir(run_dir)
    make_output_dir(run_dir)
    setup["created" if not existed else "filled"] = True
    if config["demo"]:
        synthetic.write_dataset(os.path.dirname(config["images"]), settings.DEMO_SAMPLES, seed=config["seed"])
        pairs = find_run_pairs(config)
        split = make_split(pairs, config)
    runfolder.save_json(config, os.path.join(run_dir, runfolder.CONFIG))
    runfolder.save_json(split, os.path.join(run_dir, runfolder.SPLIT))
    _select_split(setup, run_dir, config, None, pairs, split)


def _prepare_resume(run_dir, epochs, folders, setup):
    """Checks a run to resume and fills `setup` as `_prepare_new` does (`state` set)."""
    config, state = check_resumable(run_dir, epochs)
    runfolder.remove_stale_temp_files(run_dir)
    images_dir, masks_dir = folders if folders is not None else (config["images"], config["masks"])
    gone = [folder for folder in (images_dir, masks_dir) if not os.path.isdir(folder)]
    if gone and folders is None:
        raise InputError(f"{gone[0]}: the run's data is no longer there (moved or deleted); resume with "
                         f"--data DIR (or --images DIR --masks DIR) where it lies now: python train.py --resume "
                         f"--out {run_dir} --data DIR")
    pairs = dataGenerator.find_pairs(images_dir, masks_dir, skip_unpaired=True)
    split = dataGenerator.load_split(os.path.join(run_dir, runfolder.SPLIT))
    if folders is not None:
        config = relocate_data(config, run_dir, images_dir, masks_dir, pairs, split)
    _select_split(setup, run_dir, config, state, pairs, split)


def _select_split(setup, run_dir, config, state, pairs, split):
    split_path = os.path.join(run_dir, runfolder.SPLIT)
    setup.update(config=config, state=state, pairs=pairs,
                 **{name: dataGenerator.select_pairs(pairs, split[name], split_path)
                    for name in ("train", "val", "test")})


def _make_datasets(setup, spread, workers, use_cache, cache_dir, verbose):
    """Decodes the run's images (from the cache when possible) and wraps them in `LesionDataset`s.

    Returns:
        `(train_data, val_data)`.
    """
    config = setup["config"]
    image_size = tuple(config["image_size"])
    # One cache entry for every pair (the test split too), so other seeds and splits reuse it.
    cache_dir = None if (not use_cache or config["demo"]) else (cache_dir or settings.default_cache_dir())
    to_load = setup["pairs"] if cache_dir else setup["train"] + setup["val"]
    images, masks = _load_arrays(to_load, image_size, cache_dir, verbose == 1)
    row = {pair.id: index for index, pair in enumerate(to_load)}
    loader = dict(image_size=image_size, batch_size=config["batch_size"], seed=config["seed"],
                  workers=workers or config["workers"])

    def dataset(part, **options):
        rows = [row[pair.id] for pair in part]
        return distribution.for_replicas(
            dataGenerator.LesionDataset(part, arrays=(images[rows], masks[rows]), **options, **loader), spread)

    augmentation = {"zoom": tuple(config.get("zoom", settings.DEFAULT_ZOOM)),
                    "color": config.get("color_augment", "light"),
                    "hair": config.get("hair_augment", False)}  # runs from before the flag had none
    return (dataset(setup["train"], augment=config["augment"], shuffle=True, augmentation=augmentation),
            dataset(setup["val"], augment=False, shuffle=False))


def run_training(config, run_dir, overwrite=False, use_cache=True, cache_dir=None, distribute="auto", verbose=1,
                 started=None):
    """Trains a new run into `run_dir` and reports its test metrics: data -> model -> fit -> report.

    The caller holds the folder's `runfolder.RunLock` when other processes might use it.

    Args:
        config: the run's settings, from `make_config` (or `resolve_config`).
        run_dir: the run folder; it must not exist, or be empty, or (with `overwrite`) hold an
            earlier run, which is kept aside until the new run's first checkpoint.
        overwrite: replace an earlier run in `run_dir`.
        use_cache: keep decoded, resized images in a cache between runs (the demo never does).
        cache_dir: the cache's folder (default: `settings.default_cache_dir()`).
        distribute: one of `settings.DISTRIBUTION_MODES` (see `distribution.choose_distribution`), or
            the `distribution.Distribution` it returned, when the caller had to choose it first.
        verbose: Keras output: 0 silent, 1 progress bars, 2 one line per epoch.
        started: `time.perf_counter()` at the start of the run (default: now).

    Returns:
        The exit status: 0, or 1 when training stopped on a non-finite loss.

    Raises:
        InputError: bad input, found before anything is written.
    """
    return _run(run_dir, lambda spread, setup: _prepare_new(config, run_dir, overwrite, spread, setup),
                None, use_cache, cache_dir, distribute, verbose, started)


def resume_training(run_dir, folders=None, epochs=None, workers=None, use_cache=True, cache_dir=None,
                    distribute="auto", verbose=1, started=None):
    """Continues the run in `run_dir` from its last completed epoch to its planned last epoch, with its
    saved settings, then reports its test metrics.

    Args:
        run_dir: the run folder.
        folders: `(images_dir, masks_dir)` where the run's data lies now, if it moved; they must hold
            every id of the run's split.
        epochs: the epochs asked for, if any; anything but the planned number is refused.
        workers: threads preparing batches (default: the run's).
        use_cache, cache_dir, distribute, verbose, started: as in `run_training`.

    Returns:
        The exit status, as `run_training`'s.

    Raises:
        InputError: nothing to resume, a damaged run file, other `epochs`, or data that lacks the
            run's ids; found before anything is written.
    """
    return _run(run_dir, lambda spread, setup: _prepare_resume(run_dir, epochs, folders, setup),
                workers, use_cache, cache_dir, distribute, verbose, started)


def _run(run_dir, prepare, workers, use_cache, cache_dir, distribute, verbose, started):
    # A run in mixed precision sets Keras's global policy; the caller's process (a notebook, the tests)
    # gets its own back, or every model it builds or loads afterwards would compute in bfloat16.
    with distribution.global_policy_restored():
        return _train_and_report(run_dir, prepare, workers, use_cache, cache_dir, distribute, verbose, started)


def _train_and_report(run_dir, prepare, workers, use_cache, cache_dir, distribute, verbose, started):
    """A run, step by step: prepare (folder, data, model), plan, fit with the named callbacks, then
    check for divergence and report the test split. `_undone_unless_saved` is the one place that takes
    back a start that fails before the run's first checkpoint."""
    started = time.perf_counter() if started is None else started
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    spread = distribute if isinstance(distribute, distribution.Distribution) else \
        distribution.choose_distribution(distribute)
    setup, progress = {}, {}
    try:
        with _undone_unless_saved(run_dir, setup, progress):
            prepare(spread, setup)
            config, state = setup["config"], setup["state"]
            train_data, val_data = _make_datasets(setup, spread, workers, use_cache, cache_dir, verbose)
            # Loaded before the seed is set, as a fresh run builds its model after: loading draws from
            # Keras's random state, and a resumed run must draw what an uninterrupted one would.
            last_model = (_load_last_checkpoint(os.path.join(run_dir, runfolder.LAST), spread.scope)
                          if state is not None else None)
            keras.utils.set_random_seed(config["seed"])
            policy = distribution.set_mixed_precision(config.get("mixed_precision", False))
            model, initial_epoch = _build_or_restore_model(setup, spread, len(train_data), last_model)
            checkpoint = progress["checkpoint"] = _make_checkpoint(run_dir, setup)
            if state is not None:
                _truncate_history(os.path.join(run_dir, runfolder.HISTORY), initial_epoch)
                train_data.set_epoch(initial_epoch)
            model.run_eagerly = bool(config.get("run_eagerly"))  # not in a saved model: a resumed run asks again
            budget = None
            if state is None:  # a resumed run keeps the plan made when it started (its config.json)
                budget = make_time_budget(config, run_dir, len(train_data),
                                          len(setup["test"]) / max(1, len(setup["val"])), spread.processes)
            print(_describe_run(run_dir, setup, model, policy, spread, budget, initial_epoch))
            warning = distribution.gpu_fallback_warning()
            if warning:
                print(warning, file=sys.stderr)
            callbacks = RunCallbacks(run_dir, config, model, started, checkpoint, budget, initial_epoch)
            if initial_epoch < config["epochs"]:
                progress["fitting"] = True
                # shuffle=False: LesionDataset already walks a permutation seeded by (seed, epoch); Keras's
                # own batch shuffling would draw from Python's global `random`, so the order would change
                # on resume.
                model.fit(train_data, validation_data=val_data, epochs=config["epochs"], initial_epoch=initial_epoch,
                          callbacks=callbacks.in_order(), verbose=verbose, shuffle=False)
    except ValueError as error:
        if not ("MultiWorker" in spread.description and "PerReplica" in str(error)):
            raise
        print("error: Keras " + keras.__version__ + " cannot fit() under MultiWorkerMirroredStrategy "
              "(https://github.com/keras-team/keras/issues/20585); for several machines use the JAX "
              "backend (README, 'Several GPUs, several machines'), or unset TF_CONFIG", file=sys.stderr)
        return 1
    if callbacks.nan_guard.where is not None or checkpoint.diverged:
        _report_divergence(run_dir, setup, callbacks.nan_guard, checkpoint)
        return 1
    if spread.process_index:  # the chief's run folder is the result; it alone tests
        print(f"process {spread.process_index}: training done; the first process reports the test metrics")
        return 0
    distribution.use_one_device()  # the test images come one by one, in batches of any size
    report_test_split(run_dir, config, setup["test"], checkpoint, verbose, started,
                      config["time_budget_minutes"] if budget is not None else None)
    return 0


@contextlib.contextmanager
def _undone_unless_saved(run_dir, setup, progress):
    """Takes back a start that fails before the run's first checkpoint: the one place that does.

    Whatever fails (bad data, a damaged `--init` model, a full disk, Ctrl-C) before a new run has saved
    an epoch leaves nothing behind: the folder or files `_prepare_new` recorded in `setup` are removed
    and a run it set aside comes back (`_undo`). A folder without `state.json` could be neither resumed
    nor reused. A resumed run records nothing in `setup`, so nothing of it is undone.

    Args:
        run_dir: the run folder.
        setup: the dict `prepare` fills.
        progress: filled by the caller: `checkpoint` (the `RunCheckpoint`, once made) and `fitting`
            (once `fit()` started, when the user is told what happened).
    """
    try:
        yield
    except BaseException:
        checkpoint = progress.get("checkpoint")
        if checkpoint is None or (setup.get("state") is None and not checkpoint.saved):
            _undo(run_dir, setup)
            if progress.get("fitting"):
                print(f"note: no epoch of the new run was saved, so {run_dir} was "
                      f"{'put back as it was' if setup.get('aside') or setup.get('filled') else 'removed'}; "
                      "start the run again", file=sys.stderr)
        raise


def _build_or_restore_model(setup, spread, steps_per_epoch, last_model=None):
    """A new run's compiled model (from `--init`'s weights if given), or a resumed run's `last_model`
    (its last checkpoint, compiled as it was saved).

    Returns:
        `(model, initial_epoch)`.
    """
    config, state = setup["config"], setup["state"]
    if state is not None:
        return last_model, state["epochs_done"]
    with spread.scope:
        model = MODELS[config["model"]](tuple(config["image_size"]), **config["model_kwargs"])
        if config.get("init"):
            load_initial_weights(model, config["init"])
        model.compile(optimizer=make_optimizer(config, steps_per_epoch),
                      loss=losses.SegmentationLoss(config["loss"], _fn_weight(config)),
                      # weighted: the zero-weight padding of JAX data-parallel batches stays out
                      weighted_metrics=losses.training_metrics())
    return model, 0


def _make_checkpoint(run_dir, setup):
    """The run's `RunCheckpoint`: a new run's (which deletes a replaced run at its first save), or a
    resumed run's, carrying its best validation Dice so far."""
    state, aside = setup["state"], setup.get("aside")
    if state is None:
        return run_callbacks.RunCheckpoint(
            run_dir, on_first_save=(lambda: shutil.rmtree(aside, ignore_errors=True)) if aside else None)
    return run_callbacks.RunCheckpoint(run_dir, state.get("best_val_dice", -math.inf), state.get("best_epoch", 0))


class RunCallbacks:
    """The callbacks of a run's `fit()`, by name; `in_order()` gives them in the order they must run.

    Args:
        run_dir, config, model: the run.
        started: `time.perf_counter()` at the run's start.
        checkpoint: the run's `RunCheckpoint`.
        budget: the run's `TimeBudget`, or `None`.
        initial_epoch: epochs already done (a resumed run appends to its history).
    """

    def __init__(self, run_dir, config, model, started, checkpoint, budget, initial_epoch):
        # Validation sees the averaged weights (swapped in and back around it), so the best epoch is
        # chosen by what best.keras holds; last.keras keeps the raw weights, for resuming.
        self.ema = keras.callbacks.SwapEMAWeights() if config.get("ema") else None
        self.nan_guard = run_callbacks.StopOnNonFiniteLoss()
        self.timing = run_callbacks.EpochTiming(started)
        self.budget = budget
        self.history = run_callbacks.HistoryLog(
            run_dir, f"{model.name} on {os.path.basename(os.path.dirname(config['images']))}",
            append=initial_epoch > 0)
        self.checkpoint = checkpoint
        # Keras adds its own progress bar, timing columns included, when none is given.
        self.progress = run_callbacks.ProgressWithoutTimings()

    def in_order(self):
        """EMA first (validation must see the averaged weights), the NaN guard, the timing before the
        budget and the history (both read its timings), the checkpoint after the history, the
        progress line last."""
        ordered = [self.ema, self.nan_guard, self.timing, self.budget, self.history, self.checkpoint, self.progress]
        return [callback for callback in ordered if callback is not None]


def _describe_run(run_dir, setup, model, policy, spread, budget, initial_epoch):
    """The line a run prints before its first epoch: data, model, plan, precision, devices, folder."""
    config, pairs, test_pairs, aside = setup["config"], setup["pairs"], setup["test"], setup.get("aside")
    image_size = tuple(config["image_size"])
    return (f"data: {len(pairs)} pairs from {config['images']} -> train {len(setup['train'])} / "
            f"val {len(setup['val'])} / test {len(test_pairs)} at {image_size[0]}x{image_size[1]}"
            f"{' (synthetic demo)' if config['demo'] else ''} | model: {model.name}, "
            f"{model.count_params():,} params"
            + (", input standardized per image" if config["model_kwargs"].get("input_norm") else "")
            + f" | {_count(config['epochs'], 'epoch')}"
            + (f" (fewer if they would not fit in {config['time_budget_minutes']:g} min from start to test report)"
               if budget is not None else "")
            + f", batch {config['batch_size']}, "
            f"{config['loss']} loss"
            + (f" (fn weight {_fn_weight(config):g})" if _fn_weight(config) != losses.DICE_FN_WEIGHT else "")
            + f", {policy}"
            + (f" ({config['mixed_precision_reason']})" if config.get("mixed_precision_reason") else "")
            + f" | {distribution.describe_devices()} ({spread.description}), "
            f"Keras {keras.__version__} ({keras.backend.backend()}) | run: {run_dir}"
            + (f" | resuming after epoch {initial_epoch}" if initial_epoch else "")
            + (f" | replacing the earlier run (kept in {aside} until the first checkpoint)" if aside else ""))


def _report_divergence(run_dir, setup, nan_guard, checkpoint):
    """Says where a run diverged and what was kept; a replaced run comes back if nothing was saved."""
    where = ""
    if nan_guard.where is not None:
        epoch, batch, loss = nan_guard.where
        where = f" (loss {loss} at epoch {epoch}, batch {batch})"
    best_path = os.path.join(run_dir, runfolder.BEST)
    kept = (f"the best checkpoint so far, from epoch {checkpoint.best_epoch}, is intact in {best_path}"
            if os.path.isfile(best_path) else "no checkpoint was saved")
    if setup.get("aside") and not checkpoint.saved:
        _undo(run_dir, setup)
        kept = f"nothing was saved, and the earlier run in {run_dir} was kept"
    print(f"error: training stopped: the model diverged{where}; try a lower --learning-rate. {kept}", file=sys.stderr)


def report_test_split(run_dir, config, test_pairs, checkpoint, verbose=1, started=None, budget_minutes=None):
    """Scores `best.keras` on the test split: `metrics.json`, `per_image.csv`, `cases.png` and a table;
    with `started` (`time.perf_counter()` at the run's start), prints the run's time, against
    `budget_minutes` if given."""
    best_path = os.path.join(run_dir, runfolder.BEST)
    files = [runfolder.HISTORY, runfolder.CURVES]
    if test_pairs:
        best_model = inference.load_model(best_path)
        best_model.run_eagerly = bool(config.get("run_eagerly"))
        options = dict(tta=config["tta"], postprocess=config["postprocess"])
        scores = scoring.evaluate_pairs(best_model, test_pairs, config["batch_size"], progress=verbose == 1,
                                        **options)
        summary = scoring.write_report(scores, run_dir, {"model": best_path, "images": "test split", **options})
        scoring.save_cases(best_model, test_pairs, scores, os.path.join(run_dir, runfolder.CASES),
                           title="test split: best, median, worst", **options)
        print(scoring.format_table(summary))
        files += ["metrics.json", runfolder.CASES]
        print(f"best validation Dice {checkpoint.best:.4f} at epoch {checkpoint.best_epoch}; "
              f"test Dice {summary['dice']:.4f} on {_count(summary['n_images'], 'image')}")
    if started is not None:
        print(f"time: {(time.perf_counter() - started) / 60:.1f} min from start to test report"
              + (f" (time budget {budget_minutes:g} min)" if budget_minutes else ""))
    print(f"run folder: {run_dir} (best.keras; {', '.join(files)})")


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


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
    if zipfile.is_zipfile(path):  # a damaged one is named below; a padded one is refused before it is read
        inference.check_keras_archive(path)
    try:
        with scope:
            return keras.saving.load_model(path)
    except Exception as error:  # Keras raises many types for a damaged archive; all mean "cannot use it"
        raise InputError(f"{path}: damaged, cannot load the last checkpoint ({type(error).__name__}); "
                         "restore it from a backup, or start a new run with another --out") from None


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
