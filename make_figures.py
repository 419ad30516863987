"""Regenerates the figures in resources/ that README shows.

    python make_figures.py --run runs/isic_improved

Writes `architecture_improved.png` and `architecture_basic.png` (block diagrams read from the model
builders), and, from a finished run folder, `training_curves.png` (its history) and
`test_examples.png` (a good, a typical and a hard case of its test split: the 90th, 50th and 10th
percentile of per-image Dice).
"""

import argparse
import os

from lesion_unet import cliargs
from lesion_unet import runfolder
from lesion_unet.errors import InputError, exit_script, run_cli

GOOD_TYPICAL_HARD = (("good (90th percentile)", 0.9), ("typical (median)", 0.5), ("hard (10th percentile)", 0.1))


def build_parser():
    parser = cliargs.ArgumentParser(description="Regenerate the figures in resources/.")
    parser.add_argument("--run", default=None,
                        help="a finished run folder for the curves and test examples (default: none, "
                             "architecture diagrams only)")
    parser.add_argument("--out", default="resources", help="output folder (default: %(default)s)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="flip TTA for the examples (default: the run's setting)")
    parser.add_argument("--postprocess", action=argparse.BooleanOptionalAction, default=None,
                        help="post-processing for the examples (default: the run's setting)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.run is not None and not os.path.isfile(os.path.join(args.run, runfolder.HISTORY)):
        raise InputError(f"{args.run}: no history.csv; pass a finished run folder")
    from lesion_unet import quiet  # Keras loads only now that the arguments are known to be good

    quiet.import_keras()
    from lesion_unet import inference
    from lesion_unet import plots
    from lesion_unet import scoring
    from lesion_unet.basic_unet import build_unet
    from lesion_unet.improved_unet import build_improved_unet

    os.makedirs(args.out, exist_ok=True)
    plots.save_architecture_figure(build_improved_unet(), os.path.join(args.out, "architecture_improved.png"))
    plots.save_architecture_figure(build_unet(), os.path.join(args.out, "architecture_basic.png"))
    print(f"wrote {args.out}/architecture_improved.png and architecture_basic.png")
    if args.run is None:
        return
    config = runfolder.read_config(args.run)
    architecture = "Improved" if config["model"] == "improved" else "Basic"
    height, width = config["image_size"]
    plots.save_curves(plots.read_history(os.path.join(args.run, runfolder.HISTORY)),
                      os.path.join(args.out, "training_curves.png"),
                      f"{architecture} U-Net on ISIC 2017, {height}x{width}, "
                      f"{config['epochs']} epochs (validation split)")
    model_path, pairs, description, _ = scoring.resolve_target(args.run, None, None, None, False, "test")
    model = inference.load_model(model_path)
    options = dict(tta=config["tta"] if args.tta is None else args.tta,
                   postprocess=config["postprocess"] if args.postprocess is None else args.postprocess)
    rows = scoring.evaluate_pairs(model, pairs, **options)
    scoring.save_cases(model, pairs, rows, os.path.join(args.out, "test_examples.png"),
                        title=f"Test split examples (ISIC 2017, {len(pairs)} test images)",
                        quantiles=GOOD_TYPICAL_HARD, **options)
    print(f"wrote {args.out}/training_curves.png and test_examples.png")


if __name__ == "__main__":
    exit_script(run_cli(main))
