"""What holding a block out costs, measured on the same images: two block_gap.py reports, paired.

    python -m experiments.paired_gap runs/gap_order_fold1_best.json runs/gap_shipped_fold1.json

`block_gap.py` compares a model's Dice on a block with its Dice on other images, which are different
images: the gap mixes what the model lacks with how hard the block is. Here two reports are paired on
the images both scored: typically a model trained without the block (an order fold's run, report A)
and one whose random split put the block's neighbours in training (the shipped model, report B). For
the shared images inside the block and outside it, it prints the mean per-image Dice difference
(B minus A, positive where A does worse) with a paired bootstrap 95% interval (images resampled, both
models' scores kept together, 10,000 times), and the difference of the two differences: how much
more A loses inside the block than elsewhere, which the two models' other differences (recipe,
training-set size, precision) do not explain, since those cost A alike on both groups.
"""

import sys

import numpy as np

from lesion_unet import cliargs
from experiments.block_gap import BOOTSTRAP_RESAMPLES, GROUPS, in_block


def paired_differences(rows_a, rows_b, block):
    """Per-image Dice of B minus A on the images both reports scored, split by the block.

    Args:
        rows_a, rows_b: per-image rows (`id`, `dice`) of two `block_gap.py` reports.
        block: `(first, last)` ids.

    Returns:
        A dict `{"others": array, "block": array}` of differences, in sorted-id order.

    Raises:
        ValueError: the reports share no image inside, or none outside, the block.
    """
    dice_a = {row["id"]: row["dice"] for row in rows_a}
    dice_b = {row["id"]: row["dice"] for row in rows_b}
    shared = sorted(dice_a.keys() & dice_b.keys())
    groups = {"block": [i for i in shared if in_block(i, block)],
              "others": [i for i in shared if not in_block(i, block)]}
    for name, ids in groups.items():
        if not ids:
            raise ValueError(f"the reports share no scored image {'inside' if name == 'block' else 'outside'} "
                             f"the block {block[0]} .. {block[1]}; pair reports of overlapping held-out parts")
    return {name: np.array([dice_b[i] - dice_a[i] for i in ids]) for name, ids in groups.items()}


def _interval(rng, statistic, groups, resamples):
    values = [statistic({name: diffs[rng.integers(0, len(diffs), len(diffs))] for name, diffs in groups.items()})
              for _ in range(resamples)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def compare(differences, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Means and paired bootstrap intervals of the differences, and of their block-minus-others contrast.

    Args:
        differences: what `paired_differences` returns.
        resamples: bootstrap resamples.
        seed: the resampling's seed.

    Returns:
        A dict: per group `n`, `mean` and `ci`; `contrast` (block mean minus others mean) and `contrast_ci`.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for name in GROUPS:
        diffs = differences[name]
        result[name] = {"n": len(diffs), "mean": float(diffs.mean()),
                        "ci": _interval(rng, lambda g, name=name: float(g[name].mean()), {name: diffs}, resamples)}

    def contrast(groups):
        return float(groups["block"].mean() - groups["others"].mean())

    result["contrast"] = contrast(differences)
    result["contrast_ci"] = _interval(rng, contrast, differences, resamples)
    return result


def report(result, name_a, name_b):
    """The comparison as text lines."""
    lines = [f"Dice of B ({name_b}) minus A ({name_a}) on the images both scored:"]
    for name in GROUPS:
        group = result[name]
        low, high = group["ci"]
        lines.append(f"  {name}: {group['mean']:+.4f} ({low:+.4f} to {high:+.4f}) on {group['n']} images")
    low, high = result["contrast_ci"]
    lines.append(f"block minus others: {result['contrast']:+.4f} ({low:+.4f} to {high:+.4f})")
    return "\n".join(lines)


def main(argv=None):
    parser = cliargs.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_a", help="block_gap.py --report of the model trained without the block")
    parser.add_argument("report_b", help="block_gap.py --report of the model to set it against (same --block)")
    parser.add_argument("--resamples", type=cliargs.int_range(100, 1_000_000), default=BOOTSTRAP_RESAMPLES,
                        help="bootstrap resamples (default: %(default)s)")
    args = parser.parse_args(argv)

    from lesion_unet import runfolder
    from lesion_unet.errors import InputError

    reports = [runfolder.read_json(path, "a block_gap.py report") for path in (args.report_a, args.report_b)]
    for path, content in zip((args.report_a, args.report_b), reports):
        if not isinstance(content, dict) or "rows" not in content or "block_ids" not in content:
            raise InputError(f"{path}: not a block_gap.py report (no rows or block_ids); "
                             "write one with block_gap.py --report")
    if reports[0]["block_ids"] != reports[1]["block_ids"]:
        raise InputError(f"{args.report_b}: block {' .. '.join(reports[1]['block_ids'])} differs from "
                         f"{args.report_a}'s {' .. '.join(reports[0]['block_ids'])}; score both with one --block")
    try:
        differences = paired_differences(reports[0]["rows"], reports[1]["rows"], tuple(reports[0]["block_ids"]))
    except ValueError as error:
        raise InputError(f"{args.report_a}, {args.report_b}: {error}") from None
    print(report(compare(differences, args.resamples), reports[0].get("model"), reports[1].get("model")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
