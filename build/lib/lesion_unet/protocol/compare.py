"""Ablation table: recipes (or models) compared under the generalisation protocol, image by image.

    python protocol.py compare runs/cv_default/protocol.json runs/cv_zoom/protocol.json
    python protocol.py compare base.json zoom.json strong.json --labels default zoom strong

Each input is a per-image report of the protocol: `protocol.json` of `protocol.py cv` (five folds'
test splits, every image once) or the `--report` JSON of `protocol.py shift`. All inputs must hold the
same images under the same shifts. The first input is the baseline; every other row gives its change
of the mean Dice (and thresholded Jaccard) over all shifts, with a paired bootstrap 95% interval:
images are resampled, so the interval reflects which images happen to be in the data, the noise that
decides whether an effect of 0.003 is real. Training time is the sum of the runs' `history.csv`
clocks, where the report's groups are run folders (or models inside them).
"""

import json
import os

import numpy as np

from lesion_unet import cliargs

BOOTSTRAP_RESAMPLES = 10_000


def load_report(path):
    """Reads a protocol report and pools its groups (folds) image by image.

    Args:
        path: JSON written by `protocol.py cv` or `protocol.py shift --report`: `{group: {shift: rows}}`.

    Returns:
        `(pooled, groups)`: `pooled` is `{shift: {image id: row}}`, `groups` the report's group names.

    Raises:
        ValueError: the file is not such a report, or an image appears twice under one shift.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read this protocol report ({error}); give a protocol.json of "
                         "'protocol.py cv' or a --report of 'protocol.py shift'") from None
    if not isinstance(report, dict) or not report or not all(isinstance(group, dict) for group in report.values()):
        raise ValueError(f"{path}: not a protocol report ({{run: {{shift: rows}}}}); give a protocol.json of "
                         "'protocol.py cv' or a --report of 'protocol.py shift'")
    pooled = {}
    for group, by_shift in report.items():
        for shift, rows in by_shift.items():
            into = pooled.setdefault(shift, {})
            for row in rows:
                if row["id"] in into:
                    raise ValueError(f"{path}: image {row['id']} appears twice under shift {shift!r} "
                                     f"(in {group} and another group); each image must be scored once")
                into[row["id"]] = row
    return pooled, list(report)


def training_seconds(groups):
    """Sums the training clocks of the runs behind a report's groups, or returns `None` when a group
    is not (inside) a run folder with a `history.csv`."""
    from lesion_unet import plots
    from lesion_unet import runfolder

    total = 0.0
    for group in groups:
        run = group if os.path.isdir(group) else os.path.dirname(group)
        try:
            total += plots.read_history(os.path.join(run, runfolder.HISTORY))["elapsed_s"][-1]
        except (OSError, KeyError, IndexError, ValueError):
            return None
    return total


def per_image_matrix(pooled, shifts, ids, metric):
    """Returns an array `(len(shifts), len(ids))` of `metric`."""
    return np.array([[pooled[shift][image_id][metric] for image_id in ids] for shift in shifts])


def paired_bootstrap(differences, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """95% percentile interval of the mean of per-image `differences`, resampling images."""
    differences = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (resamples, len(differences)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare(paths, labels=None, resamples=BOOTSTRAP_RESAMPLES, only_shifts=None):
    """Compares protocol reports against the first one.

    Args:
        paths: report files; the first is the baseline.
        labels: a name for each (default: the file paths).
        resamples: bootstrap resamples.
        only_shifts: compare on these conditions alone (each report must have them), e.g. the five
            of the protocol's mean apart from `hair`; `None`: every condition of the reports.

    Returns:
        A list of dicts, one per report: `label`, `n_images`, `shifts`, `dice` (mean over shifts and
        images), `dice_by_shift`, `dice_by_band` (pooled over shifts, band of the shifted mask, with
        counts), `threshold_jaccard`, `worst_shift`, `worst_dice`, `training_s` (or `None`), and, for
        every report but the first, `delta_dice`, `delta_dice_ci`, `delta_threshold_jaccard`,
        `delta_threshold_jaccard_ci`.

    Raises:
        ValueError: fewer than two reports, labels that do not match, reports of different images
            or shifts, or an `only_shifts` condition that a report lacks.
    """
    from lesion_unet import metrics

    labels = list(labels) if labels else list(paths)
    if len(paths) < 2:
        raise ValueError("give at least two reports: a baseline and one to compare with it")
    if len(labels) != len(paths):
        raise ValueError(f"got {len(labels)} labels for {len(paths)} reports; give one label per report")
    reports = [load_report(path) for path in paths]
    if only_shifts:
        for path, (pooled, _) in zip(paths, reports):
            missing = [shift for shift in only_shifts if shift not in pooled]
            if missing:
                raise ValueError(f"{path}: no {', '.join(missing)} condition (it has {', '.join(pooled)}); "
                                 "score it with those --shifts, or leave them out here")
        reports = [({shift: pooled[shift] for shift in only_shifts}, groups) for pooled, groups in reports]
    base, _ = reports[0]
    shifts = list(base)
    ids = sorted(base[shifts[0]])
    for path, (pooled, _) in zip(paths[1:], reports[1:]):
        if list(pooled) != shifts:
            raise ValueError(f"{path}: shifts {list(pooled)} differ from the baseline's {shifts} "
                             f"({paths[0]}); score both with the same --shifts")
        for shift in shifts:
            if sorted(pooled[shift]) != sorted(base[shift]):
                raise ValueError(f"{path}: its images under {shift!r} differ from the baseline's ({paths[0]}); "
                                 "compare reports of the same folds (same data, --folds and seed)")
    base_dice = per_image_matrix(base, shifts, ids, "dice").mean(axis=0)
    base_jaccard = per_image_matrix(base, shifts, ids, "threshold_jaccard").mean(axis=0)
    results = []
    for index, (label, (pooled, groups)) in enumerate(zip(labels, reports)):
        dice = per_image_matrix(pooled, shifts, ids, "dice")
        jaccard = per_image_matrix(pooled, shifts, ids, "threshold_jaccard")
        by_shift = dict(zip(shifts, dice.mean(axis=1).tolist()))
        bands = metrics.summarize_by_size([pooled[shift][image_id] for shift in shifts for image_id in ids])
        row = {"label": label, "n_images": len(ids), "shifts": shifts,
               "dice": float(dice.mean()), "dice_by_shift": by_shift,
               "dice_by_band": {band: (values["dice"], values["n_images"]) for band, values in bands.items()},
               "threshold_jaccard": float(jaccard.mean()),
               "worst_shift": min(by_shift, key=by_shift.get), "worst_dice": min(by_shift.values()),
               "training_s": training_seconds(groups)}
        if index:
            dice_change, jaccard_change = dice.mean(axis=0) - base_dice, jaccard.mean(axis=0) - base_jaccard
            row.update(delta_dice=float(dice_change.mean()),
                       delta_dice_ci=paired_bootstrap(dice_change, resamples),
                       delta_threshold_jaccard=float(jaccard_change.mean()),
                       delta_threshold_jaccard_ci=paired_bootstrap(jaccard_change, resamples))
        results.append(row)
    return results


def _change(row, key):
    if f"delta_{key}" not in row:
        return "baseline"
    low, high = row[f"delta_{key}_ci"]
    return f"{row[f'delta_{key}']:+.4f} ({low:+.4f} to {high:+.4f})"


def table(results):
    """Markdown ablation table of `compare`'s results."""
    shifts = results[0]["shifts"]
    bands = list(results[0]["dice_by_band"])
    header = (["recipe", "images", "mean Dice", "change (95% CI)"] + [f"Dice {shift}" for shift in shifts]
              + [f"Dice {band}" for band in bands] + ["thr. Jaccard", "change (95% CI)", "training time"])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in results:
        minutes = "-" if row["training_s"] is None else f"{row['training_s'] / 60:.1f} min"
        cells = ([row["label"], str(row["n_images"]), f"{row['dice']:.4f}", _change(row, "dice")]
                 + [f"{row['dice_by_shift'][shift]:.4f}" for shift in shifts]
                 + [f"{dice:.4f} ({count})" if count else "-" for dice, count in row["dice_by_band"].values()]
                 + [f"{row['threshold_jaccard']:.4f}", _change(row, "threshold_jaccard"), minutes])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser):
    """`protocol.py compare`'s flags."""
    parser.add_argument("reports", nargs="+", metavar="REPORT",
                        help="protocol.json of 'protocol.py cv' or the --report JSON of 'protocol.py shift'; the "
                             "first is the baseline")
    parser.add_argument("--labels", nargs="+", default=None, help="a name per report (default: the paths)")
    parser.add_argument("--resamples", type=cliargs.int_range(100), default=BOOTSTRAP_RESAMPLES,
                        help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--shifts", nargs="+", default=None,
                        help="compare on these conditions alone, e.g. none zoom dark vignette blur for the "
                             "protocol's mean of a report that also has hair (default: all the reports')")
    parser.add_argument("--out", default=None, help="also write the table here (default: print only)")


def run(args, parser):
    """`protocol.py compare`: prints (and with `--out` writes) the comparison table. Loads no Keras."""
    try:
        text = table(compare(args.reports, args.labels, args.resamples, args.shifts))
    except ValueError as error:
        parser.error(str(error))
    print(text)
    if args.out:
        from lesion_unet import runfolder

        with runfolder.atomic_write(args.out) as tmp_path, open(tmp_path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0
