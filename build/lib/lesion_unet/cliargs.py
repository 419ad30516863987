"""The command-line side shared by the scripts: argument types that check a flag's range when it is
parsed, so a bad value stops at once, and the flag groups several scripts take. Imports no Keras.

`ArgumentParser` turns the `ArgumentTypeError` into one line,
`error: argument --epochs: must be an integer >= 1, got 0 (see train.py --help)`, and exit status 2,
before anything is loaded or written.
"""

import argparse
import math
import os

from lesion_unet import settings


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag gives one line (`error: ...`) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _describe(low, high, low_open=False, high_open=False):
    def shown(value):
        return str(value) if isinstance(value, int) else f"{value:g}"

    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {shown(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {shown(high)}")
    return " and ".join(parts)


def int_range(low=None, high=None):
    """Returns an argparse type for integers in `[low, high]` (either bound may be `None`)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {_describe(low, high)}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {_describe(low, high)}, got {value}")
        return value

    parse.__name__ = "integer"
    parse.low, parse.high = low, high  # for the test that every flag has an upper bound
    return parse


def float_range(low=None, high=None, low_open=False, high_open=False):
    """Returns an argparse type for finite floats in `[low, high]`; `low_open` / `high_open` leave a bound out."""

    def parse(text):
        bounds = _describe(low, high, low_open, high_open)
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text}")
        return value

    parse.__name__ = "number"
    parse.low, parse.high = low, high
    return parse


_UNSET = object()


def explicit_flags(parser, argv):
    """Returns the destinations of the flags that `argv` sets explicitly (not left at a default)."""
    # argparse fills in a default only where the namespace has no value yet.
    blank = argparse.Namespace(**{action.dest: _UNSET for action in parser._actions if action.dest != "help"})
    parsed, _ = parser.parse_known_args(argv, namespace=blank)
    return {dest for dest, value in vars(parsed).items() if value is not _UNSET}


def on_off(value):
    """`"on"` or `"off"`, for the defaults that help texts name."""
    return "on" if value else "off"


def add_data_arguments(parser, required=False):
    """Adds `--data`, `--images`, `--masks` and `--skip-unpaired` to an argparse parser."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", default=None,
                       help="folder holding images/ and masks/ (ISIC naming: <id>.jpg with "
                            "<id>_segmentation.png)" + ("" if required else "; default: %(default)s"))
    group.add_argument("--images", default=None,
                       help="images folder, e.g. ISIC2018_Task1-2_Training_Input (with --masks)")
    group.add_argument("--masks", default=None,
                       help="masks folder, e.g. ISIC2018_Task1_Training_GroundTruth (with --images)")
    group.add_argument("--skip-unpaired", action="store_true",
                       help="skip images without masks and masks without images, with a warning, "
                            "instead of stopping (default: stop)")


def model_summary_parser(model_title, base_filters, depth, depth_help):
    """The parser of `python model_*.py`, which prints a model's summary: `--image-size`,
    `--base-filters` and `--depth`, with the model's own defaults."""
    parser = ArgumentParser(description=f"Print the {model_title}'s summary and size.")
    parser.add_argument("--image-size", type=int_range(1, 4096), nargs=2, default=list(settings.DEFAULT_IMAGE_SIZE),
                        metavar=("H", "W"), help="input height and width (default: %(default)s)")
    parser.add_argument("--base-filters", type=int_range(1, 1024), default=base_filters,
                        help="filters at level 1 (default: %(default)s)")
    parser.add_argument("--depth", type=int_range(1, 10), default=depth, help=f"{depth_help} (default: %(default)s)")
    return parser


def model_summary_main(argv, model_title, builder, base_filters, depth, depth_help):
    """`python model_*.py`: parses `--image-size`, `--base-filters` and `--depth` (before Keras loads,
    so `--help` answers at once), builds the model and prints its layer table and parameter count.

    Args:
        argv: the arguments, or `None` for the command line's.
        model_title: the model's name in the help text.
        builder: `"module:function"` in the package, e.g. `"improved_unet:build_improved_unet"`.
        base_filters, depth, depth_help: the model's defaults, and what its depth counts.
    """
    args = model_summary_parser(model_title, base_filters, depth, depth_help).parse_args(argv)
    import importlib

    from lesion_unet import quiet

    quiet.import_keras()
    module, function = builder.split(":")
    build = getattr(importlib.import_module(f"lesion_unet.{module}"), function)
    model = build(tuple(args.image_size), base_filters=args.base_filters, depth=args.depth)
    # rich, which Keras draws the table with, assumes 80 columns when the output is not a terminal
    # (`| cat`, a file) and would cut the table there.
    os.environ.setdefault("COLUMNS", "112")
    model.summary(line_length=110)
    print(f"{model.name}: {model.count_params():,} parameters")


def add_inference_arguments(parser):
    """Adds `--batch-size`, `--threshold`, `--tta`, `--postprocess`, `--remove-hair` and `--no-progress`."""
    parser.add_argument("--batch-size", type=int_range(1, 4096), default=16,
                        help="images per model call (default: %(default)s)")
    parser.add_argument("--threshold", type=float_range(0, 1), default=settings.DEFAULT_THRESHOLD,
                        help="probability threshold, 0 to 1 (default: %(default)s)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=settings.DEFAULT_TTA,
                        help=f"average predictions over flips (default: {on_off(settings.DEFAULT_TTA)})")
    parser.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=settings.DEFAULT_POSTPROCESS,
                        help="keep the largest lesion region and fill its holes "
                             f"(default: {on_off(settings.DEFAULT_POSTPROCESS)})")
    parser.add_argument("--remove-hair", action=argparse.BooleanOptionalAction, default=settings.DEFAULT_REMOVE_HAIR,
                        help="paint thin dark hairs over before segmenting (DullRazor-style): for images with "
                             "dense hair; on others it changes little (README, 'Hair removal') "
                             f"(default: {on_off(settings.DEFAULT_REMOVE_HAIR)})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
