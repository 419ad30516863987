"""Losses and metrics, one definition each.

Keras side (training): differentiable losses and per-image metrics written with `keras.ops` only, so
they run on every backend. Each returns one value per image; Keras averages them over the batch.

NumPy side (reporting): metrics of one thresholded predicted mask against its ground truth, at the
ground truth's own resolution, with the empty-mask rule of the official ISIC scorer
(`isic-challenge-scoring`): when the ground truth and the prediction are both empty, Dice and
Jaccard are 1; sensitivity is 1 when the ground truth has no lesion pixel, and specificity is 1
when it has no skin pixel. Scores over a set of images are means of per-image scores.
"""

import keras
import numpy as np
from keras import ops

import settings

PACKAGE = "lesion_seg"
SMOOTH = 1.0
DICE_FN_WEIGHT = 0.5  # the Tversky loss's weight at which it is soft Dice; losses saved without one are that
THRESHOLD = 0.5
ISIC_JACCARD_THRESHOLD = 0.65
REPORT_METRICS = ("dice", "jaccard", "threshold_jaccard", "sensitivity", "specificity", "accuracy")
# Bands of the true lesion's share of the image, `(name, lower, upper)`, lower bound included. Data
# from other sources differ most in lesion size (larger lesions on the official ISIC 2017 test set),
# so a model's weak band shows where it will fail there.
SIZE_BANDS = (("<10%", 0.0, 0.10), ("10-30%", 0.10, 0.30), (">30%", 0.30, 1.0))
BAND_METRICS = ("dice", "jaccard", "threshold_jaccard", "sensitivity")


def _flatten(y_true, y_pred):
    """Flattens each image to a vector, so reductions over axis 1 are per image."""
    batch = ops.shape(y_pred)[0]
    return (ops.reshape(ops.cast(y_true, y_pred.dtype), (batch, -1)), ops.reshape(y_pred, (batch, -1)))


def soft_tversky_loss(y_true, y_pred, fn_weight=DICE_FN_WEIGHT, smooth=SMOOTH):
    """Per-image soft Tversky loss, `1 - (2TP + s) / (2TP + 2(1-b)FP + 2bFN + s)`, on probabilities.

    Args:
        y_true: ground-truth masks, `(batch, height, width, 1)`.
        y_pred: predicted probabilities, the same shape.
        fn_weight: `b`, the weight of missed lesion pixels (false negatives) against false positives'
            `1 - b`. At 0.5 this is exactly `soft_dice_loss`; above it, under-segmenting costs more.
        smooth: `s`, keeps empty masks finite.

    Returns:
        One loss value per image, `(batch,)`.
    """
    y_true, y_pred = _flatten(y_true, y_pred)
    true_positive = ops.sum(y_true * y_pred, axis=1)
    # 2(TP + (1-b)FP + bFN) with FP = |P| - TP and FN = |T| - TP: the TP terms cancel, and at b = 0.5
    # this is Dice's own |T| + |P|, computed the same way, so the default loss is unchanged to the bit.
    total = 2.0 * (1.0 - fn_weight) * ops.sum(y_pred, axis=1) + 2.0 * fn_weight * ops.sum(y_true, axis=1)
    return 1.0 - (2.0 * true_positive + smooth) / (total + smooth)


def soft_dice_loss(y_true, y_pred, smooth=SMOOTH):
    """Per-image soft Dice loss, `1 - (2|T.P| + s) / (|T| + |P| + s)`, on probabilities."""
    return soft_tversky_loss(y_true, y_pred, fn_weight=DICE_FN_WEIGHT, smooth=smooth)


def bce_loss(y_true, y_pred):
    """Per-image binary cross-entropy, the mean over the image's pixels."""
    y_true, y_pred = _flatten(y_true, y_pred)
    y_pred = ops.clip(y_pred, keras.config.epsilon(), 1.0 - keras.config.epsilon())
    return -ops.mean(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred), axis=1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegmentationLoss(keras.losses.Loss):
    """Per-image soft Dice (or Tversky), binary cross-entropy, or their sum.

    Args:
        kind: `"dice_bce"` (soft Dice + BCE), `"dice"` or `"bce"`.
        fn_weight: the Dice term's weight of missed lesion pixels, in (0, 1): 0.5 is soft Dice, more
            makes it the Tversky loss that penalises under-segmentation (see `soft_tversky_loss`).
        name: loss name in logs.

    Raises:
        ValueError: for an unknown `kind`, a `fn_weight` outside (0, 1), or a `fn_weight` other than
            0.5 with `kind="bce"`, which has no Dice term to weight.
    """

    KINDS = settings.LOSSES

    def __init__(self, kind="dice_bce", fn_weight=DICE_FN_WEIGHT, name=None, **kwargs):
        if kind not in self.KINDS:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(self.KINDS)}")
        check_fn_weight(kind, fn_weight)
        super().__init__(name=name or kind, **kwargs)
        self.kind = kind
        self.fn_weight = float(fn_weight)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if self.kind == "bce":
            return bce_loss(y_true, y_pred)
        overlap = soft_tversky_loss(y_true, y_pred, fn_weight=self.fn_weight)
        if self.kind == "dice":
            return overlap
        return overlap + bce_loss(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, fn_weight=self.fn_weight)
        return config


def check_fn_weight(kind, fn_weight):
    """Raises `ValueError` unless `fn_weight` is in (0, 1) and `kind` has a Dice term to weight."""
    if not 0.0 < fn_weight < 1.0:
        raise ValueError(f"fn_weight must be in (0, 1), got {fn_weight}; 0.5 is plain soft Dice")
    if kind == "bce" and fn_weight != DICE_FN_WEIGHT:
        raise ValueError(f"fn_weight {fn_weight} needs a Dice term: use loss 'dice_bce' or 'dice', "
                         "or leave fn_weight at 0.5 with 'bce'")


def _overlap(y_true, y_pred, threshold):
    y_true, y_pred = _flatten(y_true, ops.cast(y_pred, "float32"))
    y_true = ops.cast(y_true >= 0.5, "float32")
    y_pred = ops.cast(y_pred >= threshold, "float32")
    intersection = ops.sum(y_true * y_pred, axis=1)
    total = ops.sum(y_true, axis=1) + ops.sum(y_pred, axis=1)
    return intersection, total


@keras.saving.register_keras_serializable(package=PACKAGE)
def dice_score(y_true, y_pred, threshold=THRESHOLD):
    """Per-image Dice of the mask thresholded at 0.5; 1 when both masks are empty."""
    intersection, total = _overlap(y_true, y_pred, threshold)
    return ops.where(total > 0, 2.0 * intersection / ops.maximum(total, 1.0), 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
def jaccard_score(y_true, y_pred, threshold=THRESHOLD):
    """Per-image Jaccard of the mask thresholded at 0.5; 1 when both masks are empty."""
    intersection, total = _overlap(y_true, y_pred, threshold)
    union = total - intersection
    return ops.where(union > 0, intersection / ops.maximum(union, 1.0), 1.0)


def training_metrics():
    """Returns the metrics logged during training: per-image `dice` and `jaccard`."""
    return [
        keras.metrics.MeanMetricWrapper(dice_score, name="dice"),
        keras.metrics.MeanMetricWrapper(jaccard_score, name="jaccard"),
    ]


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
