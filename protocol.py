"""The generalisation protocol: how a model or a training recipe does on images unlike its training images.

    python protocol.py shift --model pretrained/improved_unet.keras --data data/isic2017 --report runs/shipped.json
    python protocol.py cv --out runs/cv_zoom -- --data data/isic2017 --zoom 0.8 1.4
    python protocol.py compare runs/cv_default/protocol.json runs/cv_zoom/protocol.json --labels default zoom
    python protocol.py quality --model pretrained/improved_unet.keras --data data/isic2017 --attach

- `shift`: Dice overall and by lesion size of one model on held-out images (its validation split, or
  the test splits of k-fold runs), as they are and under shifts that mimic other sources (zoomed in,
  darker, dark corners, blurred; dense hair and a colour cast when named).
- `cv`: trains a recipe (the `train.py` flags after `--`) on k folds, then scores every fold's test
  split under the shifts: every image is held out once.
- `compare`: recipes or models side by side, image by image, each against the first with a paired
  bootstrap 95% interval: the table every recipe decision rests on.
- `quality`: fits and measures a model's per-image quality estimate (expected Dice, review flag) on
  its validation images and shifted copies, and with `--attach` writes it into the `.keras` file.

This file parses the command line and calls `lesion_unet.protocol`; see
docs/explanation/generalisation.md for why and how.
"""

import sys

from lesion_unet import cliargs
from lesion_unet.errors import exit_script, run_cli


def build_parser():
    from lesion_unet.protocol import compare, cv, quality_fit, shift

    parser = cliargs.ArgumentParser(description=__doc__.splitlines()[0],
                                    usage="%(prog)s {shift,cv,compare,quality} ...")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{shift,cv,compare,quality}")
    for name, module, summary in (
            ("shift", shift, "one model's Dice on held-out images, as they are and shifted"),
            ("cv", cv, "k-fold training of a recipe (train.py flags after --), then the shifted test splits"),
            ("compare", compare, "protocol reports side by side, with paired bootstrap intervals"),
            ("quality", quality_fit, "fit and measure a model's per-image quality estimate")):
        command = commands.add_parser(name, prog=f"{parser.prog} {name}", help=summary,
                                      description=module.__doc__.split("\n\n")[0].replace("\n", " "))
        module.add_arguments(command)
        command.set_defaults(module=module)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    own, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None)
    parser = build_parser()
    args = parser.parse_args(own)
    if args.command == "cv":
        import train  # the recipe's flags are train.py's own, and each fold runs its main

        return args.module.run(args, train_args or [], train.main, parser)
    if train_args is not None:
        parser.error(f"'--' passes train.py flags to 'cv' only; drop it from '{args.command}'")
    return args.module.run(args, parser)


if __name__ == "__main__":
    exit_script(run_cli(main))
