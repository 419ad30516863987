"""Golden values for the Keras-side and NumPy-side metrics, and agreement with the ISIC scorer."""


import keras
import numpy as np
import pytest
from PIL import Image

from lesion_unet import losses
from lesion_unet import metrics

# Hand-made 4x4 masks: truth has 4 lesion pixels, prediction 6, overlapping on 3.
TRUTH = np.zeros((4, 4), bool)
TRUTH[0, :4] = True
PRED = np.zeros((4, 4), bool)
PRED[0, 1:4] = True
PRED[1, 0:3] = True


def test_golden_report_metrics():
    scores = metrics.score_masks(PRED, TRUTH)
    # tp 3, fp 3, fn 1, tn 9
    assert metrics.confusion_counts(PRED, TRUTH) == (3, 3, 1, 9)
    assert scores["dice"] == pytest.approx(6 / 10)
    assert scores["jaccard"] == pytest.approx(3 / 7)
    assert scores["threshold_jaccard"] == 0.0  # 3/7 < 0.65
    assert scores["sensitivity"] == pytest.approx(3 / 4)
    assert scores["specificity"] == pytest.approx(9 / 12)
    assert scores["accuracy"] == pytest.approx(12 / 16)


def test_threshold_jaccard_keeps_values_at_or_above_065():
    truth = np.zeros((1, 20), bool)
    truth[0, :20] = True
    pred = np.zeros((1, 20), bool)
    pred[0, :13] = True  # Jaccard 13/20 = 0.65 exactly
    assert metrics.score_masks(pred, truth)["threshold_jaccard"] == pytest.approx(0.65)
    pred[0, 12] = False  # 12/20 = 0.6
    assert metrics.score_masks(pred, truth)["threshold_jaccard"] == 0.0


def test_empty_mask_rule():
    empty = np.zeros((3, 3), bool)
    both_empty = metrics.score_masks(empty, empty)
    assert both_empty == {"dice": 1.0, "jaccard": 1.0, "threshold_jaccard": 1.0,
                          "sensitivity": 1.0, "specificity": 1.0, "accuracy": 1.0}
    full = np.ones((3, 3), bool)
    missed = metrics.score_masks(empty, full)
    assert missed["dice"] == 0.0 and missed["sensitivity"] == 0.0 and missed["specificity"] == 1.0
    spurious = metrics.score_masks(full, empty)
    assert spurious["dice"] == 0.0 and spurious["sensitivity"] == 1.0 and spurious["specificity"] == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        metrics.score_masks(np.zeros((2, 2)), np.zeros((2, 3)))


def test_summary_means_and_medians():
    rows = [{name: value for name in metrics.REPORT_METRICS} for value in (0.2, 0.5, 0.8, 1.0)]
    summary = metrics.summarize(rows)
    assert summary["dice"] == pytest.approx(0.625) and summary["median"]["dice"] == pytest.approx(0.65)
    assert summary["n_images"] == 4


def _batch(*masks):
    return np.stack(masks)[..., None].astype(np.float32)


def test_keras_metrics_are_per_image_golden():
    y_true = _batch(TRUTH, TRUTH, np.zeros((4, 4)))
    y_pred = _batch(PRED * 0.9, TRUTH * 0.6 + 0.2, np.zeros((4, 4)) + 0.1)
    dice = keras.ops.convert_to_numpy(losses.dice_score(y_true, y_pred))
    jaccard = keras.ops.convert_to_numpy(losses.jaccard_score(y_true, y_pred))
    np.testing.assert_allclose(dice, [0.6, 1.0, 1.0], rtol=1e-6)  # last: both empty after thresholding
    np.testing.assert_allclose(jaccard, [3 / 7, 1.0, 1.0], rtol=1e-6)


def test_losses_golden_values():
    y_true = _batch(TRUTH)
    y_pred = _batch(np.full((4, 4), 0.5))
    # soft Dice: 1 - (2*2 + 1) / (4 + 8 + 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.soft_dice_loss(y_true, y_pred)), [1 - 5 / 13], rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.bce_loss(y_true, y_pred)), [np.log(2)], rtol=1e-5)
    loss = losses.SegmentationLoss("dice_bce")
    assert float(loss(y_true, y_pred)) == pytest.approx(1 - 5 / 13 + np.log(2), rel=1e-5)
    assert losses.SegmentationLoss.from_config(loss.get_config()).kind == "dice_bce"
    with pytest.raises(ValueError, match="unknown loss"):
        losses.SegmentationLoss("focal")


def test_tversky_loss_golden_values_and_its_dice_case():
    y_true = _batch(TRUTH)
    y_pred = _batch(np.full((4, 4), 0.5))
    # TP 2, FP 6, FN 2; weights doubled so that 0.5 is Dice: 1 - (2*2 + 1) / (2 * (2 + 0.3*6 + 0.7*2) + 1)
    tversky = keras.ops.convert_to_numpy(losses.soft_tversky_loss(y_true, y_pred, fn_weight=0.7))
    np.testing.assert_allclose(tversky, [1 - 5 / 11.4], rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.soft_tversky_loss(y_true, y_pred, fn_weight=0.5)),
                               [1 - 5 / 13], rtol=1e-6)
    loss = losses.SegmentationLoss("dice", fn_weight=0.7)
    assert float(loss(y_true, y_pred)) == pytest.approx(1 - 5 / 11.4, rel=1e-5)
    assert losses.SegmentationLoss.from_config(loss.get_config()).fn_weight == 0.7
    # At 0.5 the default loss is the soft Dice it always was, to the bit, so default runs train as before.
    rng = np.random.default_rng(0)
    truth = keras.ops.convert_to_tensor((rng.random((3, 16, 16, 1)) > 0.6).astype("float32"))
    probability = keras.ops.convert_to_tensor(rng.random((3, 16, 16, 1)).astype("float32"))
    flat_truth, flat_probability = keras.ops.reshape(truth, (3, -1)), keras.ops.reshape(probability, (3, -1))
    before = 1.0 - (2.0 * keras.ops.sum(flat_truth * flat_probability, axis=1) + 1.0) / (
        keras.ops.sum(flat_truth, axis=1) + keras.ops.sum(flat_probability, axis=1) + 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(losses.soft_dice_loss(truth, probability)),
                                  keras.ops.convert_to_numpy(before))
    # A loss saved before the option existed has no fn_weight in its config: it stays soft Dice.
    assert losses.SegmentationLoss.from_config({"name": "dice_bce", "kind": "dice_bce"}).fn_weight == 0.5


def test_tversky_loss_penalises_missed_lesion_more_than_false_lesion():
    truth = np.zeros((8, 8)); truth[2:6, 2:6] = 1  # 16 lesion pixels
    under = truth.copy(); under[2, 2:6] = 0  # 4 missed
    over = truth.copy(); over[1, 2:6] = 1  # 4 false
    y_true, y_pred = _batch(truth, truth), _batch(under, over)
    dice = keras.ops.convert_to_numpy(losses.soft_dice_loss(y_true, y_pred))
    tversky = keras.ops.convert_to_numpy(losses.soft_tversky_loss(y_true, y_pred, fn_weight=0.7))
    np.testing.assert_allclose(dice, [1 - 25 / 29, 1 - 33 / 37], rtol=1e-6)  # Dice: nearly the same
    np.testing.assert_allclose(tversky, [1 - 25 / (2 * (12 + 0.7 * 4) + 1), 1 - 33 / (2 * (16 + 0.3 * 4) + 1)],
                               rtol=1e-6)
    assert tversky[0] > 1.5 * tversky[1]


@pytest.mark.parametrize("kind, fn_weight, message", [("dice_bce", 1.0, "in \\(0, 1\\)"),
                                                      ("dice", 0.0, "in \\(0, 1\\)"),
                                                      ("bce", 0.7, "needs a Dice term")])
def test_segmentation_loss_refuses_a_fn_weight_it_cannot_use(kind, fn_weight, message):
    with pytest.raises(ValueError, match=message):
        losses.SegmentationLoss(kind, fn_weight=fn_weight)


def test_loss_averages_per_image_not_per_batch():
    # A batch of a large and a tiny lesion: the per-image loss weighs the tiny one equally.
    big = np.zeros((8, 8)); big[:6, :6] = 1
    tiny = np.zeros((8, 8)); tiny[0, 0] = 1
    y_true = _batch(big, tiny)
    y_pred = _batch(big, np.zeros((8, 8)))
    per_image = keras.ops.convert_to_numpy(losses.soft_dice_loss(y_true, y_pred))
    np.testing.assert_allclose(per_image, [0.0, 1 - 1 / 2], atol=1e-6)


def test_agrees_with_the_official_isic_scorer(tmp_path):
    scoring = pytest.importorskip("isic_challenge_scoring")
    from lesion_unet import synthetic

    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir(), pred_dir.mkdir()
    rng = np.random.default_rng(0)
    ours = []
    for index in range(6):
        _, truth = synthetic.make_sample(100 + index, (48, 64))
        # A shifted, eroded or noisy guess, so the scores spread over bad and good.
        prediction = np.roll(truth, shift=int(rng.integers(-12, 12)), axis=int(rng.integers(0, 2)))
        if index == 5:
            prediction = np.zeros_like(truth)
        image_id = f"ISIC_{index:07d}"
        Image.fromarray(truth).save(truth_dir / f"{image_id}_segmentation.png")
        Image.fromarray(prediction).save(pred_dir / f"{image_id}_segmentation.png")
        ours.append(metrics.score_masks(prediction > 127, truth > 127))
    official = scoring.SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    summary = metrics.summarize(ours)
    for name in metrics.REPORT_METRICS:
        assert summary[name] == pytest.approx(official[name], abs=1e-9), name
