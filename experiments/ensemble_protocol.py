"""Small ensembles under the shift protocol: each model alone and the mean of each group's probabilities.

    python -m experiments.ensemble_protocol --models pretrained/improved_unet.keras \\
        runs/bf16_zoom18/best.keras runs/bf16_input_norm/best.keras --data data/isic2017 \\
        --out runs/ens
    python protocol.py compare runs/ens.A.json runs/ens.AB.json runs/ens.ABC.json

Every model sees the protocol's images (`protocol.py shift`: the validation split, five conditions) once;
for each group of models (named by letters in the order given: A, B, AB, ...) the mean of their lesion
probabilities, at the mask's own size, goes through `evaluate.py`'s mask step, and the group's per-image
rows go to `OUT.<letters>.json`, a report `protocol.py compare` reads. An ensemble helps where its
members' errors differ; where they fail on the same images, it does not.
"""

import itertools
import string
import sys

import numpy as np

from lesion_unet import cliargs
from lesion_unet.protocol import shift as shift_protocol

MAX_MODELS = 4  # 15 groups; more would score too many groups to read


def group_names(count):
    """The letters of every group of `count` models, singles first: `2 -> ["A", "B", "AB"]`."""
    letters = string.ascii_uppercase[:count]
    return ["".join(group) for size in range(1, count + 1) for group in itertools.combinations(letters, size)]


def score_ensembles(models, pairs, threshold=0.5, postprocess=True, progress=True):
    """Scores each model and each group's mean probability on `pairs` under the protocol's shifts.

    Args:
        models: loaded Keras models, named A, B, ... in this order.
        pairs: the image/mask pairs to score.

    Returns:
        `{letters: {shift: rows}}`, rows as `shift_protocol.score_shifted` gives.
    """
    from lesion_unet import inference
    from lesion_unet import metrics

    names = group_names(len(models))
    results = {name: {shift: [] for shift in shift_protocol.SHIFTS} for name in names}
    # One generator per model, each a batch ahead at most: they yield the same (pair, shift) in the same order.
    streams = [shift_protocol.shifted_probabilities(model, pairs, progress=progress and index == 0)
               for index, model in enumerate(models)]
    for items in zip(*streams):
        pair, shift, truth, _ = items[0]
        for name in names:
            probability = np.mean([items[ord(letter) - ord("A")][3] for letter in name], axis=0)
            prediction = inference.to_mask(probability, threshold, postprocess)
            results[name][shift].append(metrics.score_row(pair.id, prediction, truth))
    return results


def main(argv=None):
    parser = cliargs.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True,
                        help=f"2 to {MAX_MODELS} .keras models, named A, B, ... in this order")
    parser.add_argument("--data", required=True, help="folder with images/ and masks/")
    parser.add_argument("--out", required=True, help="prefix of the reports: OUT.<letters>.json per group")
    parser.add_argument("--seed", type=cliargs.int_range(0, 2**32 - 1), default=0,
                        help="the split's seed (default: %(default)s)")
    parser.add_argument("--threshold", type=cliargs.float_range(0, 1), default=0.5,
                        help="probability threshold, 0 to 1 (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 2 <= len(args.models) <= MAX_MODELS:
        parser.error(f"--models: give 2 to {MAX_MODELS} models, got {len(args.models)}")

    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet import inference
    from lesion_unet import runfolder

    models = [inference.load_model(path) for path in args.models]
    results = score_ensembles(models, shift_protocol.split_part(args.data, args.seed), args.threshold)
    for name, rows in results.items():
        members = " + ".join(args.models[ord(letter) - ord("A")] for letter in name)
        path = f"{args.out}.{name}.json"
        runfolder.save_json({f"mean of {members}" if len(name) > 1 else members: rows}, path)
        print(f"{name}: mean Dice over the conditions "
              f"{np.mean([row['dice'] for shift_rows in rows.values() for row in shift_rows]):.4f} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
