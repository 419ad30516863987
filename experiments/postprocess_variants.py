"""Post-processing variants under the shift protocol: one model pass, one report per variant.

    python -m experiments.postprocess_variants --model pretrained/improved_unet.keras \\
        --data data/isic2017 --out runs/pp_shipped
    python protocol.py compare runs/pp_shipped.largest.json runs/pp_shipped.none.json \\
        runs/pp_shipped.prob.json runs/pp_shipped.hull.json runs/pp_shipped.hull_large.json \\
        runs/pp_shipped.close.json

The model's probabilities on the protocol's images (`protocol.py shift`: the validation split, five
conditions) are thresholded and passed through each mask step of `VARIANTS`, at the mask's own size;
each variant's per-image rows go to `OUT.NAME.json`, a report `protocol.py compare` reads. The
official test set's outlines are often loose polygons around large, faint lesions that the model
outlines only in part, so the variants ask whether a smoother or fuller mask step closes some of that.
"""

import sys

import numpy as np

from lesion_unet import cliargs
from lesion_unet.protocol import shift as shift_protocol

CLOSING_RADIUS = 5  # pixels at the masks' 256x192: about 2% of the short side
LARGE_FRACTION = 0.3  # the top lesion-size band: hull_large takes the hull only above it


def _largest(mask, probability):
    from lesion_unet import inference

    return inference.postprocess_mask(mask)


def _most_probable(mask, probability):
    """The component with the largest summed probability (not pixel count), holes filled."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    mass = ndimage.sum(probability, labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == np.argmax(mass) + 1)


def _hull(mask, probability):
    from skimage.morphology import convex_hull_image

    largest = _largest(mask, probability)
    return convex_hull_image(largest) if largest.any() else largest


def _hull_if_large(mask, probability):
    """`_largest`, and its convex hull where it covers more than `LARGE_FRACTION` of the image: where
    the hull helped (large lesions) and not where it cost (small ones)."""
    from skimage.morphology import convex_hull_image

    largest = _largest(mask, probability)  # once: `_hull` would find it again
    return convex_hull_image(largest) if largest.mean() > LARGE_FRACTION else largest


def _closed(mask, probability):
    """Morphological closing (disk), then `_largest`; padded first, since skimage's closing treats the
    outside as lesion and would grow every region within the radius of the border out to it."""
    from skimage.morphology import closing, disk

    pad = CLOSING_RADIUS + 1
    closed = closing(np.pad(mask, pad), disk(CLOSING_RADIUS))[pad:-pad, pad:-pad]
    return _largest(closed, probability)


# name -> mask step `(thresholded mask, probability) -> mask`; "largest" is evaluate.py's default.
VARIANTS = {
    "none": lambda mask, probability: mask,
    "largest": _largest,
    "prob": _most_probable,
    "hull": _hull,
    "hull_large": _hull_if_large,
    "close": _closed,
}


def score_variants(model, pairs, variants=tuple(VARIANTS), threshold=0.5, progress=True):
    """Scores each mask step of `variants` on `pairs` under the protocol's shifts, from one model pass.

    Returns:
        `{variant: {shift: rows}}`, rows as `shift_protocol.score_shifted` gives.
    """
    from lesion_unet import metrics

    results = {name: {shift: [] for shift in shift_protocol.SHIFTS} for name in variants}
    for pair, shift, truth, probability in shift_protocol.shifted_probabilities(model, pairs, progress=progress):
        mask = probability >= threshold
        for name in variants:
            prediction = VARIANTS[name](mask, probability)
            results[name][shift].append(metrics.score_row(pair.id, prediction, truth))
    return results


def main(argv=None):
    parser = cliargs.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the .keras model to score")
    parser.add_argument("--data", required=True, help="folder with images/ and masks/")
    parser.add_argument("--out", required=True, help="prefix of the reports: OUT.NAME.json per variant")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS),
                        help="mask steps to score (default: all)")
    parser.add_argument("--seed", type=cliargs.int_range(0, 2**32 - 1), default=0,
                        help="the split's seed (default: %(default)s)")
    parser.add_argument("--threshold", type=cliargs.float_range(0, 1), default=0.5,
                        help="probability threshold, 0 to 1 (default: %(default)s)")
    args = parser.parse_args(argv)

    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet import inference
    from lesion_unet import runfolder

    results = score_variants(inference.load_model(args.model), shift_protocol.split_part(args.data, args.seed),
                             args.variants, args.threshold)
    for name, rows in results.items():
        path = f"{args.out}.{name}.json"
        runfolder.save_json({f"{args.model} ({name})": rows}, path)
        print(f"{name}: mean Dice over the conditions "
              f"{np.mean([row['dice'] for shift_rows in rows.values() for row in shift_rows]):.4f} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
