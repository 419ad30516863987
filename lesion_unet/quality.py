"""Which masks to check: a per-image quality estimate from the model's own probability map.

A segmentation model is right on most images and wrong on a few; this module says which. From the
probability map that the model gives for one image (at the model's input size, before the map is
resized to the image) it measures a few signals of doubt, `image_features`, and a `QualityModel`
turns them into an **expected Dice** (the Dice that images scoring alike had against expert masks)
and a **review flag** (check this mask by eye).

The quality model is fitted for one segmentation model, on images that model did not train on
(`fit_quality_model`, run by `protocol.py quality`, `lesion_unet.protocol.quality_fit`), and travels with it: inside its
`.keras` file (`QUALITY_MEMBER`, written by `attach_to_keras`), in an exported model's `.onnx.json`,
and in the model card. A model without one still segments; its expected Dice and flag are then
unknown (`None`).

Feature rules (threshold `t`, 0.5 by default; `p` the probability map):

- `mean_probability_inside`: mean of `p` where `p >= t`; 0 when nothing is.
- `uncertain_ratio`: pixels with 0.2 < p < 0.8 over pixels with `p >= t` (at least 1).
- `entropy`: mean binary entropy of `p` over the image, in bits.
- `regions`: 8-connected regions of `p >= t`.
- `largest_share`: the largest region's share of the predicted lesion (1 when empty).
- `border_share`: share of the image's outermost pixels with `p >= t`.
- `lesion_share`: share of the image with `p >= t`.

An empty prediction (no pixel reaches `t`) is always flagged, with expected Dice 0: every image these
tools are for shows a lesion, so an empty mask is a miss.
"""

import dataclasses
import json
import os
import zipfile

import numpy as np
from scipy import ndimage

FEATURES = ("mean_probability_inside", "uncertain_ratio", "entropy", "regions", "largest_share", "border_share",
            "lesion_share")
# Where a `.keras` archive carries its quality model: a member Keras itself neither reads nor writes.
QUALITY_MEMBER = "lesion_unet_quality.json"
UNCERTAIN_BAND = (0.2, 0.8)
FAILURE_DICE = 0.7  # below this a mask is a failure: the line the review flag is fitted to catch
_EPSILON = 1e-6


def image_features(probability, threshold=0.5):
    """Measures the signals of doubt in one probability map (the rules are in the module docstring).

    Args:
        probability: array `(h, w)` of lesion probabilities in [0, 1], at the model's size.
        threshold: the mask threshold.

    Returns:
        A dict of the `FEATURES`, each a Python float.

    Example:

    >>> p = np.zeros((8, 8)); p[2:6, 2:6] = 0.9
    >>> features = image_features(p)
    >>> features["lesion_share"], features["regions"], round(features["mean_probability_inside"], 3)
    (0.25, 1.0, 0.9)
    """
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    if p.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {p.shape}")
    lesion = p >= threshold
    area = int(lesion.sum())
    low, high = UNCERTAIN_BAND
    uncertain = int(((p > low) & (p < high)).sum())
    q = np.clip(p, _EPSILON, 1.0 - _EPSILON)
    entropy = float(np.mean(-(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))))
    labels, count = ndimage.label(lesion, structure=np.ones((3, 3), dtype=bool))
    largest = int(np.bincount(labels.ravel())[1:].max()) if count else 0
    border = np.concatenate([lesion[0], lesion[-1], lesion[1:-1, 0], lesion[1:-1, -1]])
    return {
        "mean_probability_inside": float(p[lesion].mean()) if area else 0.0,
        "uncertain_ratio": uncertain / max(area, 1),
        "entropy": entropy,
        "regions": float(count),
        "largest_share": largest / area if area else 1.0,
        "border_share": float(border.mean()),
        "lesion_share": area / p.size,
    }


def _design_row(features, names):
    """The quality model's inputs from a feature dict: ratios and counts on a log scale, where their
    effect is closer to linear (a ratio of 0.1 against 0.2 matters; 3.1 against 3.2 does not)."""
    logged = {"uncertain_ratio", "regions", "entropy"}
    return [float(np.log(features[name] + 0.01)) if name in logged else float(features[name]) for name in names]


@dataclasses.dataclass
class QualityModel:
    """A fitted quality model: a logistic risk of failure over a few features, an isotonic map from that
    risk to expected Dice, and the review flag's risk threshold.

    Args:
        features: names from `FEATURES`, in the order of `coefficients`.
        mean: the fitted inputs' means (standardisation), one per feature.
        scale: their standard deviations.
        coefficients: the logistic model's weights on the standardised inputs.
        intercept: its intercept.
        risk_knots: increasing risks at which `dice_knots` is known (linear in between, constant outside).
        dice_knots: the expected Dice at each knot (non-increasing).
        flag_risk: images at or above this risk are flagged for review.
        threshold: the mask threshold the features assume.
        fitted_on: what the model was fitted on, and the operating point measured there, for the card.
    """

    features: list
    mean: list
    scale: list
    coefficients: list
    intercept: float
    risk_knots: list
    dice_knots: list
    flag_risk: float
    threshold: float = 0.5
    fitted_on: dict = dataclasses.field(default_factory=dict)

    def risk(self, features):
        """The modelled probability that the image's Dice is below `FAILURE_DICE`."""
        return float(self.risks(np.array([_design_row(features, self.features)]))[0])

    def risks(self, design):
        """`risk` of each row of a design matrix (`_design_row`s of `features`)."""
        logits = ((np.asarray(design) - self.mean) / self.scale) @ np.asarray(self.coefficients) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))

    def assess(self, probability):
        """Expected Dice and review flag for one probability map at the model's size.

        Returns:
            A dict: `expected_dice` (float), `review` (bool), `risk` (float in [0, 1]; `None` for an
            empty mask) and `features`.
        """
        features = image_features(probability, self.threshold)
        if features["lesion_share"] == 0.0:
            return {"expected_dice": 0.0, "review": True, "risk": None, "features": features}
        risk = self.risk(features)
        expected = float(np.interp(risk, self.risk_knots, self.dice_knots))
        return {"expected_dice": expected, "review": risk >= self.flag_risk, "risk": risk, "features": features}

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="the quality model"):
        """Builds a `QualityModel` from `to_dict`'s output, checking it.

        Raises:
            ValueError: names a missing or malformed field (with `source` in the message).
        """
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object")
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}")
        try:
            model = cls(**values)
        except TypeError as error:
            raise ValueError(f"{source}: {error}") from None
        count = len(model.features)
        if (not count or any(name not in FEATURES for name in model.features)
                or not all(len(getattr(model, name)) == count for name in ("mean", "scale", "coefficients"))):
            raise ValueError(f"{source}: features must be names from {', '.join(FEATURES)}, with one mean, scale "
                             "and coefficient each")
        knots = np.asarray(model.risk_knots, dtype=float)
        if len(knots) < 2 or len(knots) != len(model.dice_knots) or np.any(np.diff(knots) < 0):
            raise ValueError(f"{source}: risk_knots must be increasing and as many as dice_knots (at least 2)")
        numbers = [*model.mean, *model.scale, *model.coefficients, model.intercept, *model.risk_knots,
                   *model.dice_knots, model.flag_risk, model.threshold]
        if not all(isinstance(value, (int, float)) and np.isfinite(value) for value in numbers):
            raise ValueError(f"{source}: every number must be finite")
        if min(model.scale) <= 0 or not 0 <= model.flag_risk <= 1 or not 0 < model.threshold < 1:
            raise ValueError(f"{source}: scales must be positive, flag_risk in [0, 1], threshold in (0, 1)")
        return model


def assess(quality_model, probability):
    """`QualityModel.assess` without the features, or every value `None` when there is no quality model.

    Returns:
        A dict: `expected_dice`, `review`, `risk`.
    """
    if quality_model is None:
        return {"expected_dice": None, "review": None, "risk": None}
    result = quality_model.assess(probability)
    del result["features"]
    return result


def review_order(results):
    """Indices of `assess` results, worst first: empty masks, then by falling risk; unknown ones last,
    in their order."""
    def key(index):
        risk = results[index]["risk"]
        if results[index]["review"] is None:
            return (2, 0.0, index)
        return (0, 0.0, index) if risk is None else (1, -risk, index)

    return sorted(range(len(results)), key=key)


def read_from_keras(path):
    """The `QualityModel` carried by a `.keras` archive, or `None` when it carries none.

    Raises:
        ValueError: the archive's quality member is not a valid quality model.
    """
    with zipfile.ZipFile(path) as archive:
        if QUALITY_MEMBER not in archive.namelist():
            return None
        try:
            values = json.loads(archive.read(QUALITY_MEMBER))
        except ValueError:
            raise ValueError(f"{path}: its {QUALITY_MEMBER} is not JSON") from None
    return QualityModel.from_dict(values, f"{path}: {QUALITY_MEMBER}")


def attach_to_keras(quality_model, path):
    """Writes `quality_model` into the `.keras` archive at `path` (replacing one it carries), atomically:
    the archive is rewritten beside it and then moved over it. Keras loads the archive as before."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp_path = os.path.join(folder, f".{os.path.basename(path)}.quality.tmp")
    try:
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path, "w") as target:
            for member in source.infolist():
                if member.filename != QUALITY_MEMBER:
                    target.writestr(member, source.read(member.filename))
            target.writestr(QUALITY_MEMBER, json.dumps(quality_model.to_dict(), indent=1))
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def _cross_validated_risks(rows, failed, groups, names, folds):
    """Out-of-fold failure risks of a logistic model over `names`, folds grouped by image (an image's
    shifted copies never sit on both sides)."""
    from sklearn.model_selection import GroupKFold

    design = np.array([_design_row(row, names) for row in rows])
    risks = np.zeros(len(rows))
    for train, held_out in GroupKFold(folds).split(design, failed, groups):
        mean, scale, fitted = _fit_logistic(design[train], failed[train])
        risks[held_out] = fitted.predict_proba((design[held_out] - mean) / scale)[:, 1]
    return risks


def _fit_logistic(design, failed):
    """The logistic failure model on standardised inputs: `(mean, scale, fitted LogisticRegression)`."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = design.mean(0), design.std(0) + _EPSILON
    return mean, scale, LogisticRegression().fit((design - mean) / scale, failed)


def _fit_expected_dice(risks, dice):
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(risks, dice)


def select_features(rows, dice, groups, candidates=FEATURES, folds=5, min_gain=0.005):
    """Forward selection: starting from none, adds the candidate that most raises the cross-validated
    ROC AUC for failures (Dice < `FAILURE_DICE`), while it raises it by at least `min_gain`.

    Returns:
        `(names, auc)`: the chosen features and their out-of-fold AUC.
    """
    from sklearn.metrics import roc_auc_score

    failed = np.asarray(dice) < FAILURE_DICE
    chosen, best = [], 0.5
    while len(chosen) < len(candidates):
        scores = {name: roc_auc_score(failed, _cross_validated_risks(rows, failed, groups, chosen + [name], folds))
                  for name in candidates if name not in chosen}
        name = max(scores, key=scores.get)
        if scores[name] < best + min_gain:
            break
        chosen.append(name)
        best = scores[name]
    return chosen, best


def fit_quality_model(rows, dice, groups, names, false_flag_rate=0.10, folds=5, threshold=0.5, fitted_on=None):
    """Fits a `QualityModel` on held-out images, and measures it out of fold.

    Args:
        rows: one `image_features` dict per image (or shifted copy).
        dice: each one's actual Dice against its expert mask.
        groups: each one's image id; folds keep an image's copies together.
        names: the features to use (`select_features`).
        false_flag_rate: the review flag's operating point: the share of good masks (Dice >=
            `FAILURE_DICE`) that it flags.
        folds: cross-validation folds.
        threshold: the mask threshold the features were measured at.
        fitted_on: a description for the card (the model, the data, the conditions).

    Returns:
        `(quality_model, out_of_fold)`: the model fitted on all rows, and `quality_report` of the
        out-of-fold expected Dice and flags (each fold's model and threshold applied to the images it
        did not see), with those per row under `per_row` (`expected_dice`, `review`, `risk`).
    """
    from sklearn.model_selection import GroupKFold

    dice = np.asarray(dice, dtype=float)
    failed = dice < FAILURE_DICE
    groups = np.asarray(groups)
    design = np.array([_design_row(row, names) for row in rows])

    expected_oof, review_oof, risk_oof = np.zeros(len(dice)), np.zeros(len(dice), dtype=bool), np.zeros(len(dice))
    for train, held_out in GroupKFold(folds).split(design, failed, groups):
        model = _fit(design[train], dice[train], names, false_flag_rate, threshold)
        risk_oof[held_out] = model.risks(design[held_out])
        expected_oof[held_out] = np.interp(risk_oof[held_out], model.risk_knots, model.dice_knots)
        review_oof[held_out] = risk_oof[held_out] >= model.flag_risk
    model = _fit(design, dice, names, false_flag_rate, threshold)
    out_of_fold = quality_report(expected_oof, review_oof, risk_oof, dice)
    model.fitted_on = dict(fitted_on or {}, images=int(len(set(groups))), rows=int(len(dice)),
                           failures=int(failed.sum()), false_flag_rate=false_flag_rate, folds=folds,
                           out_of_fold={key: out_of_fold[key] for key in ("auc", "caught", "flagged", "n_images",
                                                                          "n_failures")})
    out_of_fold["per_row"] = {"expected_dice": expected_oof.tolist(), "review": review_oof.tolist(),
                              "risk": risk_oof.tolist()}
    return model, out_of_fold


def _fit(design, dice, names, false_flag_rate, threshold):
    failed = dice < FAILURE_DICE
    mean, scale, fitted = _fit_logistic(design, failed)
    risks = fitted.predict_proba((design - mean) / scale)[:, 1]
    isotonic = _fit_expected_dice(risks, dice)
    good_risks = np.sort(risks[~failed])
    flag_risk = float(good_risks[min(len(good_risks) - 1, int(np.floor((1 - false_flag_rate) * len(good_risks))))])
    return QualityModel(features=list(names), mean=mean.tolist(), scale=scale.tolist(),
                        coefficients=fitted.coef_[0].tolist(), intercept=float(fitted.intercept_[0]),
                        risk_knots=isotonic.X_thresholds_.tolist(), dice_knots=isotonic.y_thresholds_.tolist(),
                        flag_risk=flag_risk, threshold=threshold)


# Bins of expected Dice for the calibration table and figure: finer where most images are.
CALIBRATION_EDGES = (0.0, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)


def quality_report(expected, review, risk, dice):
    """How well quality estimates match actual Dice on scored images.

    Args:
        expected: expected Dice per image (`None` where unknown).
        review: review flag per image.
        risk: failure risk per image (`None` for an empty mask: ranked as the riskiest).
        dice: actual Dice per image.

    Returns:
        A dict: `n_images`, `n_failures` (Dice < `FAILURE_DICE`), `auc` (ROC AUC of the risk for
        failures; `None` with no failure or no success), `caught` (share of failures flagged), `flagged`
        (share of images flagged), `mean_expected`, `mean_dice`, and `bins`: per bin of expected Dice
        (`CALIBRATION_EDGES`), `low`, `high`, `n_images`, `mean_expected`, `mean_dice`.
    """
    from sklearn.metrics import roc_auc_score

    dice = np.asarray(dice, dtype=float)
    expected = np.asarray(expected, dtype=float)
    review = np.asarray(review, dtype=bool)
    risk = np.array([1.0 if value is None else value for value in risk], dtype=float)
    failed = dice < FAILURE_DICE
    both = 0 < failed.sum() < len(failed)
    bins = []
    for low, high in zip(CALIBRATION_EDGES[:-1], CALIBRATION_EDGES[1:]):
        inside = (expected >= low) & ((expected < high) if high < 1.0 else (expected <= high))
        if inside.any():
            bins.append({"low": low, "high": high, "n_images": int(inside.sum()),
                         "mean_expected": float(expected[inside].mean()), "mean_dice": float(dice[inside].mean())})
    return {
        "n_images": int(len(dice)), "n_failures": int(failed.sum()),
        "auc": float(roc_auc_score(failed, risk)) if both else None,
        "caught": float(review[failed].mean()) if failed.any() else None,
        "flagged": float(review.mean()) if len(review) else None,
        "mean_expected": float(expected.mean()) if len(expected) else None,
        "mean_dice": float(dice.mean()) if len(dice) else None,
        "bins": bins,
    }
