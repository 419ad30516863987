"""Reports per-image test metrics of a saved model, at each mask's own resolution.

    python evaluate.py runs/my_run                 # that run's test split
    python evaluate.py runs/my_run/best.keras --data DIR   # every pair in DIR (-> runs/my_run/evaluation_data)
    python evaluate.py --data DIR                  # the pre-trained model on every pair in DIR
    python evaluate.py --predictions masks/ --data DIR     # masks already predicted (any tool)

Predictions are made at the model's input size, resized back (bilinear) to each mask's size,
thresholded at 0.5 and scored per image (see `metrics.py` for the metrics and the empty-mask rule).
Writes `metrics.json`, `per_image.csv` and `cases.png` (best, median and worst cases) to `--out`,
replacing an earlier report there but not files of those names that something else wrote. For a model
that carries a quality estimate (`quality.py`), the report also says how well it ranked the failures
(ROC AUC for Dice < 0.7, the share caught by the review flag, expected against actual Dice by bin) and
draws `quality.png`.
The scoring itself is `scoring.py`'s; this file is the command line.
"""

import os
import sys

from lesion_unet import cliargs
from lesion_unet import runfolder
from lesion_unet.errors import InputError, exit_script, make_output_dir, run_cli


def build_parser():
    parser = cliargs.ArgumentParser(
        description="Report per-image Dice, Jaccard, ISIC thresholded Jaccard, sensitivity, "
                    "specificity and accuracy of a saved model.")
    parser.add_argument("target", nargs="?", default=None,
                        help="a run folder (evaluates its test split) or a .keras or .onnx model "
                             "(default: the pre-trained model, pretrained/improved_unet.keras)")
    cliargs.add_data_arguments(parser)
    parser.add_argument("--out", default=None,
                        help="folder for metrics.json, per_image.csv and cases.png "
                             "(default: RUN/evaluation for a run folder's test split, RUN/evaluation_<split> with "
                             "--split val or train, RUN/evaluation_data for a run folder with --data, "
                             "runs/evaluation otherwise)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="with a run folder, or with --data and a model that has a split.json beside it "
                             "(the shipped model has): which of its splits to score; tune settings on val, "
                             "report test (default: %(default)s)")
    parser.add_argument("--predictions", default=None,
                        help="score a folder of predicted masks (<id>_segmentation.png, e.g. from predict.py) "
                             "against --data instead of running a model; writes metrics.json and "
                             "per_image.csv (default: off)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace metrics.json, per_image.csv and cases.png in --out even where they are "
                             "not an earlier report of evaluate.py (default: off; such a folder is refused)")
    cliargs.add_inference_arguments(parser)
    return parser


def evaluate_predictions(args):
    """`--predictions`: scores a folder of masks against the data folders; no model runs."""
    from lesion_unet import lesion_files
    from lesion_unet import scoring

    if args.target is not None:
        raise InputError(f"{args.target}: --predictions scores masks, not a model; drop the model argument")
    if args.data is None and args.images is None and args.masks is None:
        raise InputError("--predictions needs the ground truth: --data DIR (or --images DIR --masks DIR)")
    folders = lesion_files.resolve_folders(args.data, args.images, args.masks)
    pairs = lesion_files.find_pairs(*folders, args.skip_unpaired)
    out_dir = args.out or os.path.join("runs", "evaluation")
    if runfolder.is_run_folder(out_dir):
        raise InputError(f"--out {out_dir}: a run folder of train.py; choose another --out")
    scoring.check_report_folder(out_dir, args.overwrite, (scoring.METRICS_FILE, scoring.PER_IMAGE_FILE))
    rows = scoring.score_mask_folder(args.predictions, pairs)
    summary = scoring.write_report(rows, make_output_dir(out_dir),
                           {"predictions": os.path.abspath(args.predictions), "images": f"every pair in {folders[0]}"})
    print(scoring.format_table(summary))
    print(f"wrote {os.path.join(out_dir, 'metrics.json')} and per_image.csv")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    has_data = args.data is not None or args.images is not None or args.masks is not None
    split_asked = "split" in cliargs.explicit_flags(parser, sys.argv[1:] if argv is None else argv)
    if split_asked and args.predictions is not None:
        parser.error("--split chooses a model's split, and --predictions runs no model: drop --split")
    if args.predictions is not None:  # scores masks: no model, no Keras
        return evaluate_predictions(args)
    if not (args.target or "").lower().endswith(".onnx"):  # ONNX Runtime runs an exported model without Keras
        from lesion_unet import quiet  # Keras loads only now that the arguments are known to be good

        quiet.import_keras()
    from lesion_unet import inference
    from lesion_unet import plots
    from lesion_unet import scoring

    model_path, pairs, description, default_out = scoring.resolve_target(
        args.target, args.data, args.images, args.masks, args.skip_unpaired, args.split)
    if split_asked and has_data:  # that split of the model's own split.json, found in DIR
        pairs, description = scoring.select_model_split(model_path, pairs, args.split, description)
    out_dir = args.out or default_out
    if runfolder.is_run_folder(out_dir):
        raise InputError(f"--out {out_dir}: a run folder of train.py; its own metrics.json and per_image.csv "
                         f"would be replaced; choose another --out (default: {default_out})")
    scoring.check_report_folder(out_dir, args.overwrite)
    model = inference.load_model(model_path)  # before the folder is made: a refused model leaves nothing
    quality_model = inference.load_quality_model(model_path)
    out_dir = make_output_dir(out_dir)
    print(f"Evaluating {model_path} on {description} ({len(pairs)} images, model input "
          f"{'x'.join(map(str, inference.model_image_size(model)))}, tta={'on' if args.tta else 'off'}, "
          f"postprocess={'on' if args.postprocess else 'off'}, remove_hair={'on' if args.remove_hair else 'off'})")
    options = dict(tta=args.tta, postprocess=args.postprocess, threshold=args.threshold, remove_hair=args.remove_hair)
    seen = scoring.seen_in_training(model_path, pairs) if has_data else None
    warning = scoring.seen_in_training_note(seen, len(pairs))
    if warning:
        print(warning, file=sys.stderr)
    rows = scoring.evaluate_pairs(model, pairs, args.batch_size, progress=not args.no_progress,
                                  quality_model=quality_model, **options)
    summary = scoring.write_report(rows, out_dir, {"model": model_path, "images": description, **options,
                                                   **({"seen_in_training": seen} if seen else {})})
    scoring.save_cases(model, pairs, rows, os.path.join(out_dir, runfolder.CASES),
                       title=f"{description}: best, median, worst", **options)
    if "quality" in summary:
        plots.save_quality_figure([row["expected_dice"] for row in rows], [row["dice"] for row in rows],
                                  [row["review"] for row in rows], summary["quality"],
                                  os.path.join(out_dir, scoring.QUALITY_FIGURE), title=description)
    print(scoring.format_table(summary))
    print(f"wrote {os.path.join(out_dir, 'metrics.json')}, per_image.csv, cases.png"
          + (" and quality.png" if "quality" in summary else " (no quality.png: the model carries no quality estimate)"))


if __name__ == "__main__":
    exit_script(run_cli(main))
