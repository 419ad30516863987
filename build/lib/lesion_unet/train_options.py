"""`train.py`'s command line: every setting of a run, with its default, range and help text.

The package's one definition of a run's settings: `train.py` parses with it, `training.make_config`
takes its defaults from it, and `training.check_settings` checks a saved `config.json` against its
types and ranges. Importing it loads no Keras, so `--help` answers at once.
"""

import argparse
import os

from lesion_unet import cliargs, settings
from lesion_unet.cliargs import float_range, int_range

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
                             "names, sizes and dates (default: $XDG_CACHE_HOME/lesion-unet, or "
                             "~/.cache/lesion-unet)")
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
                             "Improved U-Net at 128x128, docs/benchmarks.md) (default: off)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last completed epoch, with its saved settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder --out")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                        help="Keras output: 0 silent, 1 progress bar, 2 one line per epoch (default: 1 on a "
                             "terminal, 2 when the output goes to a file or a pipe, so a log holds no progress-bar "
                             "escape codes)")
    return parser
