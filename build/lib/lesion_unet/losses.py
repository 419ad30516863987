"""The training side's losses and metrics, written with `keras.ops` only, so they run on every backend.

Each returns one value per image; Keras averages them over the batch. The thresholded Dice and
Jaccard here follow the empty-mask rule of the reported metrics (`metrics.py`): 1 when both masks are
empty.
"""

import keras
from keras import ops

from lesion_unet import settings

PACKAGE = "lesion_seg"  # the names saved models carry (`lesion_seg>SegmentationLoss`): keep it
SMOOTH = 1.0
DICE_FN_WEIGHT = 0.5  # the Tversky loss's weight at which it is soft Dice; losses saved without one are that
THRESHOLD = 0.5


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
