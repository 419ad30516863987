"""A run's settings, typed, each with its default, range and help text; `train.py`'s command line is
built from them.

`RunSettings` is the package's one definition of what a run can be asked for: `build_parser` makes a
flag of each field (`--image-size` of `image_size`), `training.make_config` takes its defaults from it,
and `training.check_settings` checks a saved `config.json` against the same types and ranges. The other
flags (`--out`, `--resume`, `--verbose`, ...) say where and how a run goes, not what it is. Importing
this module loads no Keras, so `--help` answers at once.
"""

import argparse
import dataclasses

from lesion_unet import cliargs, settings
from lesion_unet.cliargs import float_range, int_range

# Flags that --resume honours; every other flag is the saved run's (config.json).
RESUME_FLAGS = {"out", "resume", "epochs", "data", "images", "masks", "skip_unpaired", "workers", "cache_dir",
                "no_cache", "distribute", "verbose"}


def _setting(default, **flag):
    """A `RunSettings` field: its default, and `flag`, the options of its `argparse` flag (`type` with
    the range, `choices`, `nargs`, `metavar`, `action`, `help`)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=flag)
    return dataclasses.field(default=default, metadata=flag)


@dataclasses.dataclass
class RunSettings:
    """What a `train.py` run is asked for: one field per flag, in `--help`'s order; `None` defaults are
    resolved per run (`training.resolve_config`: e.g. 30 epochs and a 90-minute budget on real data).
    The data folders come from `cliargs.add_data_arguments`."""

    model: str = _setting(
        "improved",
        choices=settings.MODELS,
        help="architecture: the Improved U-Net of Isensee et al. or the basic U-Net (default: %(default)s)")
    image_size: list = _setting(
        list(settings.DEFAULT_IMAGE_SIZE),
        type=int_range(16, 4096),
        nargs=2,
        metavar=("H", "W"),
        help="training height and width (default: %(default)s)")
    epochs: int | None = _setting(
        None,
        type=int_range(1, 10_000),
        help=f"epochs (default: {settings.REAL_DATA_EPOCHS} on real data, {settings.DEMO_EPOCHS} for the demo)")
    time_budget: float | None = _setting(
        None,
        type=float_range(0, 10_080),
        metavar="MINUTES",
        help="wall-clock limit from start to test report: after the warm-up, the run "
             "trains only the epochs that fit (the learning-rate schedule follows and "
             "config.json records them); 0: no limit, always --epochs (default: "
             f"{settings.REAL_DATA_TIME_BUDGET_MINUTES} on real data, none for the demo)")
    batch_size: int = _setting(
        16,
        type=int_range(1, 4096),
        help="images per step (default: %(default)s)")
    learning_rate: float = _setting(
        1e-3,
        type=float_range(0, 10, low_open=True),
        help="peak Adam learning rate, reached after the warm-up and then cosine-decayed "
             "to 0 (default: %(default)s)")
    warmup_epochs: float = _setting(
        1.0,
        type=float_range(0, 10_000),
        help="epochs of linear learning-rate warm-up (default: %(default)s)")
    loss: str = _setting(
        "dice_bce",
        choices=settings.LOSSES,
        help="per-image soft Dice + binary cross-entropy, or either alone (default: %(default)s)")
    fn_weight: float = _setting(
        settings.DEFAULT_FN_WEIGHT,
        type=float_range(0, 1, low_open=True, high_open=True),
        help="the Dice term's weight of missed lesion pixels against false ones, below 1: "
             "0.5 is soft Dice, 0.7 the Tversky loss that penalises under-segmenting (default: %(default)s)")
    base_filters: int | None = _setting(
        None,
        type=int_range(1, 1024),
        help="filters at the first level (default: the paper's, 16 for improved, 64 for basic)")
    input_norm: bool = _setting(
        settings.DEFAULT_INPUT_NORM,
        action=argparse.BooleanOptionalAction,
        help="standardize each image per channel inside the model (zero mean, unit variance; "
             f"the paper's preprocessing) (default: {cliargs.on_off(settings.DEFAULT_INPUT_NORM)})")
    augment: bool = _setting(
        True,
        action=argparse.BooleanOptionalAction,
        help="flips, 90-degree turns, random affine and colour changes on training batches (default: on)")
    zoom: list = _setting(
        list(settings.DEFAULT_ZOOM),
        type=float_range(0, 10, low_open=True),
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="scale range of the random affine; above 1 zooms in, making large "
             "lesions common (default: %(default)s)")
    color_augment: str = _setting(
        "light",
        choices=settings.COLOR_AUGMENTATIONS,
        help="light: brightness/contrast/saturation/hue jitter; strong: wider jitter, "
             "gamma, blur and dark corners (default: %(default)s)")
    hair_augment: bool = _setting(
        False,
        action=argparse.BooleanOptionalAction,
        help="draw thin dark hairs on half of the training images (the mask unchanged), "
             "where dense hair costs the most (default: off)")
    ema: bool = _setting(
        False,
        action=argparse.BooleanOptionalAction,
        help="keep an exponential moving average of the weights (momentum 0.99) and "
             "validate, checkpoint and report with it (default: off)")
    tta: bool = _setting(
        settings.DEFAULT_TTA,
        action=argparse.BooleanOptionalAction,
        help="flip test-time augmentation for the final test metrics "
             f"(default: {cliargs.on_off(settings.DEFAULT_TTA)}, as evaluate.py)")
    postprocess: bool = _setting(
        settings.DEFAULT_POSTPROCESS,
        action=argparse.BooleanOptionalAction,
        help="largest-region post-processing for the final test metrics "
             f"(default: {cliargs.on_off(settings.DEFAULT_POSTPROCESS)}, as evaluate.py)")
    init: str | None = _setting(
        None,
        metavar="MODEL",
        help="start from the weights of a saved .keras model of the same architecture (fine-tuning, "
             "e.g. pretrained/improved_unet.keras on your own data; any --image-size) "
             "(default: random initialisation)")
    seed: int = _setting(
        0,
        type=int_range(0, 2**32 - 1),
        help="seed of the split, weights, order and augmentation (default: %(default)s)")
    limit: int | None = _setting(
        None,
        type=int_range(3, 10_000_000),
        help="use only the first N pairs, by id (default: all)")
    folds: int | None = _setting(
        None,
        type=int_range(2, 100),
        help="cross-validation: cut the pairs into K seeded folds, test on fold --fold, "
             "validate on 10%% of the rest (default: no folds, a seeded 80/10/10 split)")
    fold: int = _setting(
        0,
        type=int_range(0, 99),
        help="with --folds: the test fold, 0 to K-1 (default: %(default)s)")
    fold_by: str = _setting(
        "random",
        choices=settings.FOLD_ORDERS,
        help="with --folds: 'random' cuts seeded random folds; 'order' cuts runs of consecutive "
             "ids, so each test fold is a block of the archive (on ISIC data, images collected "
             "together) that the training folds saw little of, a stand-in for another source; "
             "validation stays a random 10%% of the rest (default: %(default)s)")
    workers: int = _setting(
        2,
        type=int_range(1, 64),
        help="threads preparing batches (default: %(default)s)")
    mixed_precision: bool | None = _setting(
        None,
        action=argparse.BooleanOptionalAction,
        help="compute in bfloat16 on a CPU, float16 on a GPU; weights, output layer and "
             "loss stay float32 (default: auto: on where the CPU computes bfloat16 natively, "
             "AMX or AVX512-BF16, 1.5x faster; off elsewhere, GPUs included)")
    run_eagerly: bool = _setting(
        False,
        action="store_true",
        help="run each step as plain Python instead of a traced graph (Keras' run_eagerly): "
             "for stepping through a loss with a debugger, and quicker for runs of a few "
             "tiny steps (no tracing); each step of a real model is slower (1.7x for the "
             "Improved U-Net at 128x128, docs/benchmarks.md) (default: off)")


def build_parser():
    """The command line of `train.py`: the data flags, a flag for each `RunSettings` field, then the
    flags that say where and how the run goes. Importing it loads no Keras, so `--help` answers at once."""
    parser = cliargs.ArgumentParser(
        description="Train a basic or Improved U-Net on lesion images and report test metrics. "
                    "With no data arguments, trains on a synthetic demo data set.")
    cliargs.add_data_arguments(parser)
    defaults = RunSettings()
    for field in dataclasses.fields(RunSettings):
        parser.add_argument("--" + field.name.replace("_", "-"), default=getattr(defaults, field.name),
                            **field.metadata)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<model>_<date>-<time>)")
    parser.add_argument("--cache-dir", default=settings.default_cache_dir(),
                        help="where decoded, resized images are cached between runs, keyed by the files' "
                             "names, sizes and dates (default: $XDG_CACHE_HOME/lesion-unet, or "
                             "~/.cache/lesion-unet)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode every image into memory at each start instead of caching "
                             "(the synthetic demo never caches)")
    parser.add_argument("--distribute", choices=settings.DISTRIBUTION_MODES, default="auto",
                        help="data-parallel training: auto uses every GPU when there are several, and "
                             "several machines when TF_CONFIG (TensorFlow) or KERAS_DISTRIBUTION_NUM_PROCESSES "
                             "(JAX) is set; mirrored uses every visible device; --batch-size is global, "
                             "split between replicas (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last completed epoch, with its saved settings")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder --out")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                        help="Keras output: 0 silent, 1 progress bar, 2 one line per epoch (default: 1 on a "
                             "terminal, 2 when the output goes to a file or a pipe, so a log holds no progress-bar "
                             "escape codes)")
    return parser
