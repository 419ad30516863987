"""Trains a lesion segmentation model and reports its test metrics.

    python train.py                                   # the synthetic demo, a few minutes on a CPU
    python train.py --data ../shared/data/isic2017    # real ISIC data (images/ + masks/)
    python train.py --images ISIC2018_Task1-2_Training_Input --masks ISIC2018_Task1_Training_GroundTruth

A run folder (`--out`) gets `config.json`, `split.json`, `history.csv`, `curves.png`, `best.keras`
(best validation Dice, loadable with `keras.saving.load_model` alone), `last.keras` and `state.json`
(for `--resume`), and after the last epoch the test split's `metrics.json`, `per_image.csv` and
`cases.png`. The GPU is used when one is visible, the CPU otherwise.

This file turns the command line into settings; `training.py` does the work
(`training.run_training`), and notebooks call it directly.
"""

import argparse
import contextlib
import datetime
import os
import sys
import time

import cliargs
import runfolder
import settings
from cliargs import explicit_flags, float_range, int_range
from errors import run_cli

# Flags that --resume honours; every other flag is the saved run's (config.json).
RESUME_FLAGS = {"out", "resume", "epochs", "data", "images", "masks", "skip_unpaired", "workers", "cache_dir",
                "no_cache", "distribute", "verbose"}


def build_parser():
    """The command line of `train.py`; importing it loads no Keras, so `--help` answers at once."""
    parser = cliargs.ArgumentParser(
        description="Train a basic or Improved U-Net on lesion images and report test metrics. "
                    "With no data arguments, trains on a synthetic demo data set.")
    cliargs.add_data_arguments(parser)
    parser.add_argument("--model", choices=settings.MODELS, default="improved",
                        help="architecture: the Improved U-Net of Isensee et al. or the basic U-Net "
                             "(default: %(default)s)")
    parser.add_argument("--image-size", type=int_range(16, 4096), nargs=2, default=list(settings.DEFAULT_IMAGE_SIZE),
                        metavar=("H", "W"), help="training height and width (default: %(default)s)")
    parser.add_argument("--epochs", type=int_range(1, 10_000), default=None,
                        help=f"epochs (default: {settings.REAL_DATA_EPOCHS} on real data, "
                             f"{settings.DEMO_EPOCHS} for the demo)")
    parser.add_argument("--time-budget", type=float_range(0, 10_080), default=None, metavar="MINUTES",
                        help="wall-clock limit from start to test report: after the warm-up, the run "
                             "trains only the epochs that fit (the learning-rate schedule follows and "
                             "config.json records them); 0: no limit, always --epochs (default: "
                             f"{settings.REAL_DATA_TIME_BUDGET_MINUTES} on real data, none for the demo)")
    parser.add_argument("--batch-size", type=int_range(1, 4096), default=16, help="images per step (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float_range(0, 10, low_open=True), default=1e-3,
                        help="peak Adam learning rate, reached after the warm-up and then cosine-decayed "
                             "to 0 (default: %(default)s)")
    parser.add_argument("--warmup-epochs", type=float_range(0, 10_000), default=1.0,
                        help="epochs of linear learning-rate warm-up (default: %(default)s)")
    parser.add_argument("--loss", choices=settings.LOSSES, default="dice_bce",
                        help="per-image soft Dice + binary cross-entropy, or either alone (default: %(default)s)")
    parser.add_argument("--fn-weight", type=float_range(0, 1, low_open=True, high_open=True),
                        default=settings.DEFAULT_FN_WEIGHT,
                        help="the Dice term's weight of missed lesion pixels against false ones, below 1: "
                             "0.5 is soft Dice, 0.7 the Tversky loss that penalises under-segmenting "
                             "(default: %(default)s)")
    parser.add_argument("--base-filters", type=int_range(1, 1024), default=None,
                        help="filters at the first level (default: the paper's, 16 for improved, 64 for basic)")
    parser.add_argument("--input-norm", action=argparse.BooleanOptionalAction, default=settings.DEFAULT_INPUT_NORM,
                        help="standardize each image per channel inside the model (zero mean, unit variance; "
                             f"the paper's preprocessing) (default: {cliargs.on_off(settings.DEFAULT_INPUT_NORM)})")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="flips, 90-degree turns, random affine and colour changes on training "
                             "batches (default: on)")
    parser.add_argument("--zoom", type=float_range(0, 10, low_open=True), nargs=2, default=list(settings.DEFAULT_ZOOM),
                        metavar=("LOW", "HIGH"),
                        help="scale range of the random affine; above 1 zooms in, making large "
                             "lesions common (default: %(default)s)")
    parser.add_argument("--color-augment", choices=settings.COLOR_AUGMENTATIONS, default="light",
                        help="light: brightness/contrast/saturation/hue jitter; strong: wider jitter, "
                             "gamma, blur and dark corners (default: %(default)s)")
    parser.add_argument("--hair-augment", action=argparse.BooleanOptionalAction, default=False,
                        help="draw thin dark hairs on half of the training images (the mask unchanged), "
                             "where dense hair costs the most (default: off)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=False,
                        help="keep an exponential moving average of the weights (momentum 0.99) and "
                             "validate, checkpoint and report with it (default: off)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=settings.DEFAULT_TTA,
                        help="flip test-time augmentation for the final test metrics "
                             f"(default: {cliargs.on_off(settings.DEFAULT_TTA)}, as evaluate.py)")
    parser.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=settings.DEFAULT_POSTPROCESS,
                        help="largest-region post-processing for the final test metrics "
                             f"(default: {cliargs.on_off(settings.DEFAULT_POSTPROCESS)}, as evaluate.py)")
    parser.add_argument("--init", default=None, metavar="MODEL",
                        help="start from the weights of a saved .keras model of the same architecture (fine-tuning, "
                             "e.g. pretrained/improved_unet.keras on your own data; any --image-size) "
                             "(default: random initialisation)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0,
                        help="seed of the split, weights, order and augmentation (default: %(default)s)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<model>_<date>-<time>)")
    parser.add_argument("--limit", type=int_range(3, 10_000_000), default=None,
                        help="use only the first N pairs, by id (default: all)")
    parser.add_argument("--folds", type=int_range(2, 100), default=None,
                        help="cross-validation: cut the pairs into K seeded folds, test on fold --fold, "
                             "validate on 10%% of the rest (default: no folds, a seeded 80/10/10 split)")
    parser.add_argument("--fold", type=int_range(0, 99), default=0,
                        help="with --folds: the test fold, 0 to K-1 (default: %(default)s)")
    parser.add_argument("--fold-by", choices=settings.FOLD_ORDERS, default="random",
                        help="with --folds: 'random' cuts seeded random folds; 'order' cuts runs of consecutive "
                             "ids, so each test fold is a block of the archive (on ISIC data, images collected "
                             "together) that the training folds saw little of, a stand-in for another source; "
                             "validation stays a random 10%% of the rest (default: %(default)s)")
    parser.add_argument("--workers", type=int_range(1, 64), default=2,
                        help="threads preparing batches (default: %(default)s)")
    parser.add_argument("--cache-dir", default=settings.default_cache_dir(),
                        help="where decoded, resized images are cached between runs, keyed by the files' "
                             "names, sizes and dates (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode every image into memory at each start instead of caching "
                             "(the synthetic demo never caches)")
    parser.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                        help="compute in bfloat16 on a CPU, float16 on a GPU; weights, output layer and "
                             "loss stay float32 (default: auto: on where the CPU computes bfloat16 natively, "
                             "AMX or AVX512-BF16, 1.5x faster; off elsewhere, GPUs included)")
    parser.add_argument("--distribute", choices=settings.DISTRIBUTION_MODES, default="auto",
                        help="data-parallel training: auto uses every GPU when there are several, and "
                             "several machines when TF_CONFIG (TensorFlow) or KERAS_DISTRIBUTION_NUM_PROCESSES "
                             "(JAX) is set; mirrored uses every visible device; --batch-size is global, "
                             "split between replicas (default: %(default)s)")
    parser.add_argument("--run-eagerly", action="store_true",
                        help="run each step as plain Python instead of a traced graph (Keras' run_eagerly): "
                             "for stepping through a loss with a debugger, and quicker for runs of a few "
                             "tiny steps (no tracing); each step of a real model is slower (1.7x for the "
                             "Improved U-Net at 128x128, BENCHMARKS.md) (default: off)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last completed epoch, with its saved settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder --out")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                        help="Keras output: 0 silent, 1 progress bar, 2 one line per epoch (default: 1 on a "
                             "terminal, 2 when the output goes to a file or a pipe, so a log holds no progress-bar "
                             "escape codes)")
    return parser


def main(argv=None):
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = explicit_flags(parser, sys.argv[1:] if argv is None else argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other; pass one")
    if args.resume and args.out is None:
        parser.error("--resume needs --out, the run folder to continue")
    if args.loss == "bce" and "fn_weight" in explicit:
        parser.error("--fn-weight weights the Dice term, and --loss bce has none: use --loss dice_bce or dice")
    if args.folds is None and {"fold", "fold_by"} & explicit:
        parser.error("--fold and --fold-by choose a test fold of --folds K, and no --folds was given: "
                     "add --folds 5, or drop them for the seeded 80/10/10 split")
    if args.out is None:
        args.out = os.path.join("runs", f"{args.model}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if args.verbose is None:
        args.verbose = 1 if sys.stdout.isatty() else 2

    import quiet  # Keras loads only now that the arguments are known to be good

    # TensorFlow's noise comes at the first training step too; a user who set its log level sees it all.
    filter_output = contextlib.nullcontext if "TF_CPP_MIN_LOG_LEVEL" in os.environ else quiet.live_filtered_stderr
    keras = quiet.import_keras()
    import distribution
    import training

    if args.distribute in ("auto", "multi-worker") and keras.backend.backend() in ("tensorflow", "jax"):
        is_chief, task_name = distribution.multi_worker_role()
        if not is_chief:  # every worker trains, only the chief's folder is the result
            args.out = f"{args.out}.{task_name}"
    # First: JAX's processes must meet, and TensorFlow's MultiWorkerMirroredStrategy must exist,
    # before the backend computes anything (resolving the settings builds the model once).
    spread = distribution.choose_distribution(args.distribute)
    runtime = dict(use_cache=not args.no_cache, cache_dir=args.cache_dir, distribute=spread,
                   verbose=args.verbose, started=started)
    # Taken before the folder is looked at, so two runs cannot both find it free.
    with runfolder.RunLock(args.out), filter_output():
        if args.resume:
            ignored = sorted(explicit - RESUME_FLAGS)
            if ignored:
                print("note: --resume keeps the run's saved settings (config.json); ignored: "
                      + ", ".join("--" + name.replace("_", "-") for name in ignored), file=sys.stderr)
            folders = None
            if args.data is not None or args.images is not None or args.masks is not None:
                import dataGenerator

                folders = dataGenerator.resolve_folders(args.data, args.images, args.masks)
            return training.resume_training(args.out, folders, args.epochs, args.workers, **runtime)
        training.check_new_run_dir(args.out, args.overwrite)  # the run folder before the data
        return training.run_training(training.resolve_config(args), args.out, args.overwrite, **runtime)


if __name__ == "__main__":
    sys.exit(run_cli(main))
