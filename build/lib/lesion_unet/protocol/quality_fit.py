"""Fits and measures a model's quality estimate (expected Dice, review flag) on images it did not train on.

    python protocol.py quality --model pretrained/improved_unet.keras --data data/isic2017
    python protocol.py quality --model runs/my_run/best.keras --data data/isic2017 --attach

The images are the validation split of `train.py`'s seeded split (never the test split), each as it is
and under the shifts of `protocol.py shift` (zoom, dark, vignette, blur, hair, colour cast) and, with
`--hard` (the default), under combinations of them, so that the estimate sees the kinds of failure that images from other
sources bring. For each copy it measures `quality.image_features` on the model's probability map and
the actual Dice of the mask (`evaluate.py`'s default settings: threshold 0.5, post-processing on).

Features are chosen by forward selection under 5-fold cross-validation grouped by image (an image's
copies never sit on both sides), the logistic risk and isotonic expected Dice are fitted, and the review
flag's threshold is set to flag `--false-flag-rate` of the good masks. The out-of-fold figures (ROC AUC
for Dice < 0.7, the share of failures caught, the share flagged, calibration by bin) are printed and
saved with `--report` and drawn with `--figure`; `--attach` writes the quality model into the `.keras` file.
"""

import argparse
import os

import numpy as np

from lesion_unet import cliargs
from lesion_unet.protocol.shift import EXTRA_SHIFTS, SHIFTS, shifted_probabilities, split_part

# Combined shifts, with --hard: harder copies. Zoom + vignette fails as often as images from other sources
# do (Dice < 0.7 on 14% of the validation images, against 13% on the official ISIC 2017 test set).
HARD_SHIFTS = (("zoom", "vignette"), ("zoom", "dark"), ("zoom", "hair"), ("zoom", "blur"), ("zoom", "cast"),
               ("vignette", "dark", "blur"))


def measure(model, pairs, conditions, threshold=0.5, postprocess=True, batch_size=32, progress=True):
    """Features and actual Dice of each pair under each condition (a tuple of shifts applied in turn).

    Returns:
        A list of dicts: `id`, `condition`, `dice` and the `quality.FEATURES`.
    """
    from lesion_unet import inference
    from lesion_unet import metrics
    from lesion_unet import quality

    rows = []
    for pair, condition, truth, probability in shifted_probabilities(model, pairs, conditions, batch_size, progress,
                                                                     model_size=True):
        mask = inference.probability_to_mask(probability, truth.shape, threshold, postprocess)
        rows.append({"id": pair.id, "condition": "+".join(condition),
                     "dice": metrics.score_row(pair.id, mask, truth)["dice"],
                     **quality.image_features(probability, threshold)})
    return rows


def by_condition(rows, per_row):
    """Per condition: images, failures, mean actual and expected Dice, the ROC AUC of the risk for
    failures, and the shares of images flagged and of failures caught, out of fold (`per_row`:
    `fit_quality_model`'s out-of-fold values)."""
    from sklearn.metrics import roc_auc_score

    from lesion_unet import quality

    lines = [f"{'condition':<22}{'images':>7}{'failures':>9}{'mean Dice':>10}{'expected':>9}{'AUC':>7}{'flagged':>9}"
             f"{'caught':>8}"]
    conditions = np.array([row["condition"] for row in rows])
    dice = np.array([row["dice"] for row in rows])
    expected, review = np.array(per_row["expected_dice"]), np.array(per_row["review"], dtype=bool)
    risk = np.array(per_row["risk"])
    for condition in dict.fromkeys(conditions):
        chosen = conditions == condition
        failed = chosen & (dice < quality.FAILURE_DICE)
        caught = f"{review[failed].mean():.0%}" if failed.any() else "-"
        auc = (f"{roc_auc_score(failed[chosen], risk[chosen]):.3f}" if 0 < failed.sum() < chosen.sum() else "-")
        lines.append(f"{condition:<22}{chosen.sum():>7d}{failed.sum():>9d}{dice[chosen].mean():>10.4f}"
                     f"{expected[chosen].mean():>9.4f}{auc:>7}{review[chosen].mean():>9.1%}{caught:>8}")
    return "\n".join(lines)


def add_arguments(parser):
    """`protocol.py quality`'s flags."""
    parser.add_argument("--model", required=True, help="the .keras model to fit a quality estimate for")
    parser.add_argument("--data", required=True, help="folder with images/ and masks/ (the model's data)")
    parser.add_argument("--seed", type=cliargs.int_range(0, 2**32 - 1), default=0,
                        help="the split's seed, as train.py's --seed (default: %(default)s)")
    parser.add_argument("--hard", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure combined shifts, harder copies with about the failure rate of images "
                             "from other sources (default: on)")
    parser.add_argument("--false-flag-rate", type=cliargs.float_range(0, 1), default=0.07,
                        help="share of good masks (Dice >= 0.7) that the review flag may flag on these images "
                             "(default: %(default)s)")
    parser.add_argument("--compare-rates", nargs="*", type=cliargs.float_range(0, 1), default=[],
                        help="other --false-flag-rate values to measure out of fold beside it, for choosing "
                             "the operating point (default: none)")
    parser.add_argument("--report", default=None,
                        help="write the per-copy rows, the chosen features and the out-of-fold figures as JSON "
                             "here (default: none)")
    parser.add_argument("--figure", default=None,
                        help="draw the out-of-fold expected against actual Dice here, as evaluate.py's "
                             "quality.png (default: none)")
    parser.add_argument("--attach", action="store_true",
                        help="write the fitted quality model into --model's .keras file (default: off)")


def run(args, parser):
    """`protocol.py quality`: measures the copies, fits and reports the quality model, and attaches it."""
    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet import inference
    from lesion_unet import quality
    from lesion_unet import runfolder
    from lesion_unet import scoring

    model = inference.load_model(args.model)
    conditions = [(shift,) for shift in SHIFTS + EXTRA_SHIFTS] + (list(HARD_SHIFTS) if args.hard else [])
    rows = measure(model, split_part(args.data, args.seed, "val"), conditions)
    groups = [row["id"] for row in rows]
    dice = [row["dice"] for row in rows]
    names, _ = quality.select_features(rows, dice, groups)
    fitted_on = {"model": os.path.basename(args.model), "data": "validation split (seed "
                 f"{args.seed}) of {os.path.basename(os.path.normpath(args.data))}",
                 "conditions": ["+".join(condition) for condition in conditions]}
    quality_model, out_of_fold = quality.fit_quality_model(rows, dice, groups, names, args.false_flag_rate,
                                                           fitted_on=fitted_on)
    for rate in args.compare_rates:
        _, other = quality.fit_quality_model(rows, dice, groups, names, rate)
        print(f"--false-flag-rate {rate}, out of fold: flagged {other['flagged']:.1%}, caught {other['caught']:.1%}; "
              "by condition:")
        print(by_condition(rows, other["per_row"]))
    print(f"features: {', '.join(names)}; flag at risk >= {quality_model.flag_risk:.4f}")
    print("\n".join(scoring.format_quality(out_of_fold)))
    print("out of fold, by condition:")
    print(by_condition(rows, out_of_fold["per_row"]))
    if args.report:
        runfolder.save_json({"features": names, "quality_model": quality_model.to_dict(),
                             "out_of_fold": out_of_fold, "rows": rows}, args.report)
    if args.figure:
        from lesion_unet import plots

        plots.save_quality_figure(out_of_fold["per_row"]["expected_dice"], dice, out_of_fold["per_row"]["review"],
                                  out_of_fold, args.figure, title=f"{os.path.basename(args.model)}: validation "
                                  f"images and {len(conditions) - 1} shifted copies, out of fold")
    if args.attach:
        quality.attach_to_keras(quality_model, args.model)
        print(f"attached the quality model to {args.model}")
    return 0

