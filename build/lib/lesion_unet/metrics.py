"""Per-image metrics of a thresholded mask against its ground truth, and their summaries; NumPy only,
so scoring (`evaluate.py --predictions`, the ONNX path) needs no Keras. The training-time losses and
metrics, on `keras.ops`, are in `losses.py`.

Each metric is computed on one predicted mask at the ground truth's own resolution, with the
empty-mask rule of the official ISIC scorer (`isic-challenge-scoring`): when the ground truth and
the prediction are both empty, Dice and Jaccard are 1; sensitivity is 1 when the ground truth has no
lesion pixel, and specificity is 1 when it has no skin pixel. Scores over a set of images are means
of per-image scores.
"""

import numpy as np

ISIC_JACCARD_THRESHOLD = 0.65
REPORT_METRICS = ("dice", "jaccard", "threshold_jaccard", "sensitivity", "specificity", "accuracy")
# Bands of the true lesion's share of the image, `(name, lower, upper)`, lower bound included. Data
# from other sources differ most in lesion size (larger lesions on the official ISIC 2017 test set),
# so a model's weak band shows where it will fail there.
SIZE_BANDS = (("<10%", 0.0, 0.10), ("10-30%", 0.10, 0.30), (">30%", 0.30, 1.0))
BAND_METRICS = ("dice", "jaccard", "threshold_jaccard", "sensitivity")


def confusion_counts(prediction, truth):
    """Counts `(tp, fp, fn, tn)` pixels of two boolean masks of the same shape.

    Raises:
        ValueError: the shapes differ.
    """
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    tp = int(np.count_nonzero(prediction & truth))
    fp = int(np.count_nonzero(prediction & ~truth))
    fn = int(np.count_nonzero(~prediction & truth))
    return tp, fp, fn, truth.size - tp - fp - fn


def score_masks(prediction, truth):
    """Scores one binary predicted mask against its ground truth.

    Args:
        prediction: boolean (or {0, 1}) array, already thresholded and at the truth's size.
        truth: boolean (or {0, 1}) array.

    Returns:
        A dict with `dice`, `jaccard`, `threshold_jaccard` (Jaccard, or 0 below 0.65: the ISIC 2018
        score), `sensitivity`, `specificity` and `accuracy`, following the module's empty-mask rule.
    """
    tp, fp, fn, tn = confusion_counts(prediction, truth)
    errors = fp + fn
    jaccard = tp / (tp + errors) if tp + errors else 1.0
    return {
        "dice": 2 * tp / (2 * tp + errors) if tp + errors else 1.0,
        "jaccard": jaccard,
        "threshold_jaccard": jaccard if jaccard >= ISIC_JACCARD_THRESHOLD else 0.0,
        "sensitivity": tp / (tp + fn) if tp + fn else 1.0,
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
        "accuracy": (tp + tn) / (tp + tn + errors),
    }


def score_row(image_id, prediction, truth):
    """One report row: `id`, the metrics of `score_masks`, and the true and predicted lesion's shares
    of the image (`lesion_fraction`, `predicted_fraction`), which the size bands and `area_ratio` use."""
    return {"id": image_id, **score_masks(prediction, truth), "lesion_fraction": lesion_fraction(truth),
            "predicted_fraction": lesion_fraction(prediction)}


def lesion_fraction(truth):
    """Returns the share of the image's pixels that a mask's lesion covers, in [0, 1]."""
    truth = np.asarray(truth, dtype=bool)
    return float(np.count_nonzero(truth)) / truth.size if truth.size else 0.0


def size_band(fraction):
    """Returns the name of the `SIZE_BANDS` band that a lesion fraction falls in."""
    for name, lower, upper in SIZE_BANDS:
        if lower <= fraction < upper or fraction == upper == 1.0:
            return name
    raise ValueError(f"lesion fraction must be in [0, 1], got {fraction}")


def area_ratio(rows):
    """Predicted over true lesion area of a set of images: the mean predicted lesion share of the image
    over the mean true one, so that below 1 is under-segmentation (the official ISIC 2017 test set's
    large lesions come out at 0.82-0.87). Pooled rather than a mean of per-image ratios, which an image
    with a tiny or empty true lesion would dominate.

    Args:
        rows: dicts with `lesion_fraction` and `predicted_fraction` (shares of the image, in [0, 1]).

    Returns:
        The ratio, or `None` when a row lacks `predicted_fraction` or no row has a true lesion pixel.
    """
    if not rows or not all("predicted_fraction" in row for row in rows):
        return None
    true_share = sum(row["lesion_fraction"] for row in rows)
    return float(sum(row["predicted_fraction"] for row in rows) / true_share) if true_share > 0 else None


def summarize_by_size(rows):
    """Means of `BAND_METRICS`, and the `area_ratio`, per lesion-size band.

    Args:
        rows: dicts from `score_masks`, each with a `lesion_fraction` key (and `predicted_fraction`
            for the area ratio).

    Returns:
        `{band: {"n_images": n, "dice": ..., ..., "area_ratio": ...}}` for every band of `SIZE_BANDS`,
        in order; a band without images has `n_images` 0 and `None` for each metric.
    """
    bands = {}
    for name, _, _ in SIZE_BANDS:
        members = [row for row in rows if size_band(row["lesion_fraction"]) == name]
        bands[name] = {"n_images": len(members),
                       **{metric: float(np.mean([row[metric] for row in members])) if members else None
                          for metric in BAND_METRICS},
                       "area_ratio": area_ratio(members)}
    return bands


def summarize(rows):
    """Averages per-image scores.

    Args:
        rows: list of dicts from `score_masks`, optionally with `lesion_fraction`.

    Returns:
        A dict: the mean of each metric under its own name, `n_images`, `median` (a dict of the
        medians) and, when every row has `lesion_fraction`, `area_ratio` (see `area_ratio`) and
        `by_size` (see `summarize_by_size`).

    Raises:
        ValueError: `rows` is empty.
    """
    if not rows:
        raise ValueError("no images were scored")
    summary = {name: float(np.mean([row[name] for row in rows])) for name in REPORT_METRICS}
    summary["n_images"] = len(rows)
    summary["median"] = {name: float(np.median([row[name] for row in rows])) for name in REPORT_METRICS}
    if all("lesion_fraction" in row for row in rows):
        summary["area_ratio"] = area_ratio(rows)
        summary["by_size"] = summarize_by_size(rows)
    return summary
