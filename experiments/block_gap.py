"""How much worse a model does on a block of the archive than on the images around it.

    python -m experiments.block_gap --model runs/order_fold2/best.keras --data data/isic2017 \\
        --split-file runs/order_fold2/split.json --block isic2017_train_0861 isic2017_train_1290
    python -m experiments.block_gap --model pretrained/improved_unet.keras --data data/isic2017 \\
        --block isic2017_train_0861 isic2017_train_1290     # the seed-0 split's val + test images

A random split holds out images whose neighbours in the archive, photographed by the same clinic with
the same dermoscope, are in the training set; another hospital's images have no such neighbours.
`train.py --folds K --fold-by order` holds out a block of consecutive ids instead. This script scores a
model on the held-out parts of a split (`--parts`, default validation and test), sets the images whose
ids lie in the block (`--block FIRST LAST`, inclusive) against the others, and prints both groups'
mean Dice, ISIC thresholded Jaccard, Dice by lesion-size band and area ratio, with the gap (others minus
block) and an unpaired bootstrap 95% interval (each group resampled on its own, 10,000 times). Blocks
also differ in their lesions' sizes, so it also prints a size-adjusted gap: the band gaps weighted by the
block's share of images in each band, which asks "on lesions of the block's sizes, how much worse?"
(its interval resamples within each band, keeping the counts the weights come from).
Masks are made as `evaluate.py` makes them by default (threshold 0.5, post-processing on).
"""

import sys

import numpy as np

from lesion_unet import cliargs

BOOTSTRAP_RESAMPLES = 10_000
GROUPS = ("others", "block")


def in_block(image_id, block):
    """Whether `image_id` lies in `block`, a `(first, last)` pair of ids compared as strings (the order
    `train.py --fold-by order` cuts its folds in), both ends included."""
    first, last = block
    return first <= image_id <= last


def _band_of(rows):
    from lesion_unet import metrics

    return np.array([metrics.size_band(row["lesion_fraction"]) for row in rows])


def _mean(values):
    return float(np.mean(values)) if len(values) else None


def size_adjusted_gap(others, block):
    """Others' minus the block's mean Dice per lesion-size band, weighted by the block's band shares.

    Args:
        others, block: `(dice, bands)` pairs of equal-length arrays, per image.

    Returns:
        The weighted gap, or `None` when a band that holds block images has none among the others.
    """
    from lesion_unet import metrics

    gap = 0.0
    for name, _, _ in metrics.SIZE_BANDS:
        in_block_band = block[1] == name
        if not in_block_band.any():
            continue
        in_others_band = others[1] == name
        if not in_others_band.any():
            return None
        gap += in_block_band.mean() * (others[0][in_others_band].mean() - block[0][in_block_band].mean())
    return float(gap)


def _resample(rng, group, stratified):
    dice, bands = group
    if not stratified:
        pick = rng.integers(0, len(dice), len(dice))
    else:  # within each band, so the group's band counts stay as they are
        pick = np.concatenate([members[rng.integers(0, len(members), len(members))]
                               for members in (np.flatnonzero(bands == band) for band in np.unique(bands))])
    return dice[pick], bands[pick]


def unpaired_bootstrap(statistic, others, block, resamples=BOOTSTRAP_RESAMPLES, seed=0, stratified=False):
    """95% percentile interval of `statistic(others, block)`, each group's images resampled on its own.

    Args:
        statistic: a function of two `(dice, bands)` pairs returning a float.
        others, block: `(dice, bands)` pairs of arrays, per image.
        resamples: how many times to resample.
        seed: the resampling's seed.
        stratified: resample within each lesion-size band, keeping the bands' counts (for
            `size_adjusted_gap`, whose weights are the block's band shares).

    Returns:
        `(low, high)`.
    """
    rng = np.random.default_rng(seed)
    values = [statistic(_resample(rng, others, stratified), _resample(rng, block, stratified))
              for _ in range(resamples)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def compare_groups(rows, block, resamples=BOOTSTRAP_RESAMPLES):
    """Summaries of the images inside and outside `block`, and the gaps between them.

    Args:
        rows: per-image rows of `scoring.evaluate_pairs` (`id`, the metrics, `lesion_fraction`,
            `predicted_fraction`).
        block: `(first, last)` ids.
        resamples: bootstrap resamples.

    Returns:
        A dict: `others` and `block` (`metrics.summarize` of each group), `gap` and `gap_ci` (mean Dice,
        others minus block), `adjusted_gap` and `adjusted_gap_ci` (see `size_adjusted_gap`).

    Raises:
        ValueError: one of the groups is empty, so there is nothing to compare.
    """
    from lesion_unet import metrics

    groups = {"block": [row for row in rows if in_block(row["id"], block)],
              "others": [row for row in rows if not in_block(row["id"], block)]}
    for name, members in groups.items():
        if not members:
            raise ValueError(f"no scored image is {'inside' if name == 'block' else 'outside'} the block "
                             f"{block[0]} .. {block[1]}; choose a block that splits the scored ids")
    arrays = {name: (np.array([row["dice"] for row in members]), _band_of(members))
              for name, members in groups.items()}

    def gap(others, block_group):
        return float(others[0].mean() - block_group[0].mean())

    adjusted = size_adjusted_gap(arrays["others"], arrays["block"])
    return {"block_ids": list(block),
            **{name: metrics.summarize(members) for name, members in groups.items()},
            "gap": gap(arrays["others"], arrays["block"]),
            "gap_ci": unpaired_bootstrap(gap, arrays["others"], arrays["block"], resamples),
            "adjusted_gap": adjusted,
            "adjusted_gap_ci": None if adjusted is None else unpaired_bootstrap(
                size_adjusted_gap, arrays["others"], arrays["block"], resamples, stratified=True)}


def _format(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(ci):
    return "" if ci is None else f" ({ci[0]:+.4f} to {ci[1]:+.4f})"


def table(result):
    """The comparison as a Markdown table, one row per group, then the gaps."""
    from lesion_unet import metrics

    bands = [name for name, _, _ in metrics.SIZE_BANDS]
    lines = ["| images | n | Dice | thr. Jaccard | " + " | ".join(f"Dice {band} (n)" for band in bands)
             + " | area ratio |",
             "| --- " * (5 + len(bands)) + "|"]
    for name in GROUPS:
        summary = result[name]
        cells = [f"{_format(summary['by_size'][band]['dice'])} ({summary['by_size'][band]['n_images']})"
                 for band in bands]
        lines.append(f"| {name} | {summary['n_images']} | {_format(summary['dice'])} | "
                     f"{_format(summary['threshold_jaccard'])} | " + " | ".join(cells)
                     + f" | {_format(summary['area_ratio'], 3)} |")
    lines.append("")
    lines.append(f"gap (others - block), mean Dice: {result['gap']:+.4f}{_interval(result['gap_ci'])}")
    adjusted = result["adjusted_gap"]
    lines.append("size-adjusted gap (band gaps weighted by the block's bands): "
                 + ("-" if adjusted is None else f"{adjusted:+.4f}{_interval(result['adjusted_gap_ci'])}"))
    return "\n".join(lines)


def main(argv=None):
    parser = cliargs.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the .keras model to score")
    parser.add_argument("--data", required=True, help="folder with images/ and masks/")
    parser.add_argument("--block", nargs=2, required=True, metavar=("FIRST", "LAST"),
                        help="the block's first and last ids, both included (ids are compared as strings)")
    parser.add_argument("--split-file", default=None,
                        help="a run's split.json naming the parts to score (default: train.py's seeded "
                             "80/10/10 split with --seed)")
    parser.add_argument("--seed", type=cliargs.int_range(0, 2**32 - 1), default=0,
                        help="without --split-file: the split's seed (default: %(default)s)")
    parser.add_argument("--parts", nargs="+", choices=("train", "val", "test"), default=["val", "test"],
                        help="the split's parts to score; the model must not have trained on them "
                             "(default: val test)")
    parser.add_argument("--report", default=None, help="also write the per-image rows and summaries to this JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bar (default: shown)")
    args = parser.parse_args(argv)
    if args.block[0] > args.block[1]:
        parser.error(f"--block {args.block[0]} {args.block[1]}: the first id sorts after the last; swap them")

    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet import data as dataGenerator
    from lesion_unet import inference
    from lesion_unet import runfolder
    from lesion_unet import scoring
    from lesion_unet import settings
    from lesion_unet.errors import InputError

    pairs = dataGenerator.find_pairs(*dataGenerator.resolve_folders(args.data))
    if args.split_file:
        split = runfolder.read_json(args.split_file, "the split")
    else:
        split = dataGenerator.split_pairs(pairs, seed=args.seed)
    missing = [part for part in args.parts if part not in split]
    if missing:
        raise InputError(f"{args.split_file}: no {', '.join(missing)} part; pass a train.py split.json")
    ids = sorted(i for part in args.parts for i in split[part])
    rows = scoring.evaluate_pairs(inference.load_model(args.model), dataGenerator.select_pairs(pairs, ids),
                                  postprocess=settings.DEFAULT_POSTPROCESS, threshold=settings.DEFAULT_THRESHOLD,
                                  progress=args.progress)
    try:
        result = compare_groups(rows, tuple(args.block))
    except ValueError as error:
        raise InputError(f"--block: {error}") from None
    print(f"{args.model} on {' + '.join(args.parts)} ({len(rows)} images)")
    print(table(result))
    if args.report:
        runfolder.save_json({"model": args.model, "parts": args.parts, **result, "rows": rows}, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
